"""Load on `rag serve`: N clients searching and asking (extractive answers: the embedded LLM
answers one question at a time, seconds each, so it would only measure its queue) against the
server started here on a free 127.0.0.1 port over a copy of the seeds. Bounded in requests and
seconds per round; several rounds show whether the server's memory grows with use.

Records per round: clients, requests, errors, p50/p95 latency of searches and answers, the
server's RSS after the round, and the 1-minute load average of the (shared) machine."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from run_all import BENCH_DIR, SEEDS_DIR, markdown_table, write_section

QUESTIONS = BENCH_DIR / "questions" / "seeds_qa.jsonl"
START_TIMEOUT_S = 300


@dataclass
class Round:
    clients: int
    requests: int = 0
    errors: int = 0
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "ask": []})
    seconds: float = 0.0
    rss_mib: float = 0.0
    load_1min: float = 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of the server process (its own, from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(work: Path, port: int) -> subprocess.Popen:
    corpus = work / "corpus"
    shutil.copytree(SEEDS_DIR, corpus)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_ANSWER__MODEL": "extractive"}
    log = (work / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rag.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--corpus",
            str(corpus),
            "--index-dir",
            str(work / "index"),
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rag serve exited with {process.returncode}:\n{(work / 'server.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"rag serve did not come up within {START_TIMEOUT_S} s")


def run_round(url: str, questions: list[str], clients: int, max_requests: int, max_seconds: float) -> Round:
    """`clients` threads take turns at searches and extractive answers until `max_requests` are
    sent or `max_seconds` pass."""
    result = Round(clients=clients)
    tickets = itertools.count()
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline and (ticket := next(tickets)) < max_requests:
                kind = "search" if ticket % 2 == 0 else "ask"
                question = questions[ticket % len(questions)]
                body = (
                    {"query": question, "k": 5} if kind == "search" else {"question": question, "model": "extractive"}
                )
                clock = time.perf_counter()
                try:
                    ok = http.post(f"/{kind}", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = (time.perf_counter() - clock) * 1000
                with lock:
                    result.requests += 1
                    result.errors += not ok
                    result.latency_ms[kind].append(elapsed)

    clock = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - clock
    result.load_1min = os.getloadavg()[0]
    return result


def percentile(values: list[float], q: int) -> str:
    if len(values) < 2:
        return "–"
    return f"{statistics.quantiles(values, n=100)[q - 1]:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300, help="Requests per round at most.")
    parser.add_argument("--seconds", type=float, default=30, help="Seconds per round at most.")
    args = parser.parse_args(argv)
    questions = [
        json.loads(line)["question"] for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()
    ]

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        port = free_port()
        server = start_server(Path(tmp), port)
        try:
            url = f"http://127.0.0.1:{port}"
            rss_start = rss_mib(server.pid)
            rounds = []
            for number in range(1, args.rounds + 1):
                rounds.append(run_round(url, questions, args.clients, args.requests, args.seconds))
                rounds[-1].rss_mib = rss_mib(server.pid)
                done = rounds[-1]
                print(
                    f"round {number}: {done.requests} requests, {done.errors} errors, {done.seconds:.0f} s, "
                    f"RSS {done.rss_mib:.0f} MiB, load {done.load_1min:.1f}",
                    flush=True,
                )
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    rows = [
        [
            number,
            r.clients,
            r.requests,
            r.errors,
            f"{r.requests / r.seconds:.1f}",
            percentile(r.latency_ms["search"], 50),
            percentile(r.latency_ms["search"], 95),
            percentile(r.latency_ms["ask"], 50),
            percentile(r.latency_ms["ask"], 95),
            f"{r.rss_mib:.0f}",
            f"{r.load_1min:.1f}",
        ]
        for number, r in enumerate(rounds, start=1)
    ]
    table = markdown_table(
        [
            "round",
            "clients",
            "requests",
            "errors",
            "req/s",
            "search p50 ms",
            "search p95 ms",
            "ask p50 ms",
            "ask p95 ms",
            "server RSS after, MiB",
            "load avg 1 min",
        ],
        rows,
    )
    growth = rounds[-1].rss_mib - rounds[0].rss_mib
    body = (
        f"`rag serve` on the seeds, answers `extractive`; {args.clients} clients alternating `POST /search` "
        f"and `POST /ask`, each round at most {args.requests} requests or {args.seconds:.0f} s. "
        f"Server RSS {rss_start:.0f} MiB when ready; {growth:+.0f} MiB from the end of round 1 to the end "
        f"of round {len(rounds)} (round 1 includes first-use allocations).\n\n{table}\n\n"
        "Caches that live across requests are bounded: sentence embeddings of the evidence stage "
        "(`evidence.cache_sentences`), the decision model (`lru_cache(maxsize=4)`), and one-value "
        "caches (stoplist, stemmer); the web sessions are the configured keys."
    )
    write_section("bench_load", "Load: concurrent searches and answers", body)
    print(body)


if __name__ == "__main__":
    main()
