"""`rag index --cluster`: the index built on a Dask cluster equals the local one (seeds and a
generated corpus), incremental runs reuse vectors, every address is loopback, a worker killed
mid-run costs nothing but time, and a missing extra is one line. Real model, real CLI, real
Dask processes; nothing listens beyond 127.0.0.1."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SEEDS, make_service, make_settings

from rag.stores.faiss_bm25.store import read_index

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# One thread per process, as the tests share a small machine with other work.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
WORDS = (
    "river delta harbour engineers provincial council rice export drought reservoir storm fishermen "
    "coastline ferry schedule bridge district hospital school teachers students vaccine clinic farmers "
    "cooperative market prices festival temple museum archive library railway station tunnel highway"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    """Prose-like: content words between the stop words jusText looks for in main text."""
    glue = ["the", "of the", "and the", "was", "in the", "that the", "for the", "with its", "to the", "is"]
    words = [f"{rng.choice(glue)} {rng.choice(WORDS)}" for _ in range(n)]
    return " ".join(words).capitalize() + "."


def generate_corpus(root: Path, files: int = 240, seed: int = 16) -> Path:
    """Small pages with what the global steps must see: a footer and a share bar repeated
    across many pages (cleaning drops them), paragraphs copied between pages (near-copy
    groups), headings (titles), and a few pages scraped twice."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    shared = [" ".join(_sentence(rng, 12) for _ in range(3)) for _ in range(12)]
    for i in range(files):
        parts = [f"Report {i} on the {rng.choice(WORDS)} {rng.choice(WORDS)}"]
        parts += [
            " ".join(_sentence(rng, rng.randint(9, 16)) for _ in range(rng.randint(2, 4)))
            for _ in range(rng.randint(1, 2))
        ]
        if i % 5 == 0:
            parts.append(rng.choice(shared))
        parts += ["Share this article", "Copyright Delta News Agency"]
        text = "\n\n".join(parts) + "\n"
        (root / f"page_{i:04d}.txt").write_text(text, encoding="utf-8")
        if i % 40 == 0:
            (root / f"page_{i:04d}_copy.txt").write_text(text.replace("Report", "Repost", 1), encoding="utf-8")
    return root


def rag(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "rag"), *args], cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=timeout
    )


def live_rows(data) -> tuple[list[str], np.ndarray]:
    """Embedding keys and vectors of the live rows, in chunk order."""
    rows = [row for doc_id in data.doc_ids for row in data.rows_of(doc_id)]
    return [data.embedding_key(row) for row in rows], np.stack([data.vector(row) for row in rows])


def assert_same_index(local: Path, cluster: Path) -> None:
    """Same documents, chunks (offsets, text, near-copy groups) and keys; vectors within float tolerance."""
    a, b = read_index(local), read_index(cluster)
    where = {"path", "root"}  # a copy of the corpus elsewhere is the same corpus
    assert {k: d.model_dump(exclude=where) for k, d in a.documents.items()} == {
        k: d.model_dump(exclude=where) for k, d in b.documents.items()
    }
    assert a.chunks == b.chunks
    keys_a, vectors_a = live_rows(a)
    keys_b, vectors_b = live_rows(b)
    assert keys_a == keys_b
    np.testing.assert_allclose(vectors_a, vectors_b, atol=2e-5)
    skip = {"created_at", "files", "segments", "deleted"}  # how the rows are laid out in segments
    assert a.manifest.model_dump(exclude=skip) == b.manifest.model_dump(exclude=skip)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("generated") / "pages")


@pytest.fixture(scope="module")
def local_generated(tmp_path_factory: pytest.TempPathFactory, generated: Path, embedder) -> Path:
    """The generated corpus indexed locally, in process, once for this module."""
    index = tmp_path_factory.mktemp("local") / "index"
    report = make_service(make_settings(index, generated), embedder).update(paths=[generated])
    # The corpus exercises the global steps: boilerplate removed, near-copies grouped.
    assert report.written and report.canonical_chunks < report.chunks
    assert not any("Share this article" in c.text for c in read_index(index).chunks)
    return index


def test_cluster_index_equals_local_on_the_seeds(tmp_path: Path, seed_service) -> None:
    cluster = rag("index", str(SEEDS), "--index-dir", str(tmp_path / "cluster"), "--cluster", "--json")
    assert cluster.returncode == 0, cluster.stderr
    assert json.loads(cluster.stdout)["written"]
    assert_same_index(seed_service.settings.index.dir, tmp_path / "cluster")


def test_cluster_index_equals_local_on_a_generated_corpus_and_updates_incrementally(
    tmp_path: Path, generated: Path, local_generated: Path, embedder
) -> None:
    # A copy of the corpus, so that it can change; indexed from scratch on the cluster.
    corpus = tmp_path / "pages"
    shutil.copytree(generated, corpus)
    index = tmp_path / "cluster"
    run = rag("index", str(corpus), "--index-dir", str(index), "--cluster", "--json")
    assert run.returncode == 0, run.stderr
    first = json.loads(run.stdout)
    assert first["chunks"] > 300 and first["documents"] > 240
    assert_same_index(local_generated, index)

    # One change, applied to the same index on the cluster (the engine set in the environment
    # this time) and locally: same reports, same indexes, only the new passages embedded.
    local = tmp_path / "local"
    shutil.copytree(index, local)
    page = corpus / "page_0007.txt"
    page.write_text(
        page.read_text(encoding="utf-8") + "\nThe ferry schedule changed after the storm in the delta.\n",
        encoding="utf-8",
    )
    (corpus / "page_0008.txt").unlink()
    (corpus / "new.txt").write_text(
        "The railway tunnel under the river opened to freight trains in May.\n", encoding="utf-8"
    )
    env = {**ENV, "RAG_INGEST__ENGINE": "dask"}
    run = rag("index", str(corpus), "--index-dir", str(index), "--json", env=env)
    assert run.returncode == 0, run.stderr
    on_cluster = json.loads(run.stdout)
    here = make_service(make_settings(local, corpus), embedder).update(paths=[corpus])
    assert on_cluster["added"] == here.added == ["new.txt"]
    assert on_cluster["updated"] == here.updated == ["page_0007.txt"]
    assert on_cluster["removed"] == here.removed == ["page_0008.txt"]
    assert on_cluster["embedded"] == here.embedded and 0 < here.embedded <= 3
    assert on_cluster["reused_vectors"] == here.reused_vectors == here.chunks - here.embedded
    assert_same_index(local, index)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(pid: int) -> list[str]:
    return [c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


@pytest.fixture
def loopback_cluster():
    """`dask scheduler` and two `dask worker` processes (no nanny, so a killed worker stays
    dead) on 127.0.0.1; stopped by process id."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # Their HTTP servers (health, metrics) would listen on every interface by default.
    common = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    processes = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), *common],
            env=ENV,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        *common,
                    ],
                    env=ENV,
                    stderr=subprocess.DEVNULL,
                )
            )
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            yield address, client, processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_scheduler_and_workers_on_loopback_and_a_worker_killed_mid_run(
    tmp_path: Path, generated: Path, local_generated: Path, loopback_cluster
) -> None:
    address, client, processes = loopback_cluster
    info = client.scheduler_info()
    addresses = [info["address"], *info["workers"]]
    assert len(addresses) == 3
    for each in addresses:
        host = each.removeprefix("tcp://").rsplit(":", 1)[0]
        assert ipaddress.ip_address(host).is_loopback, each
    for process in processes:
        listening = _listening(process.pid)
        assert listening and all(ipaddress.ip_address(ip).is_loopback for ip in listening), listening

    # Small tasks, so that the run is still embedding when one of the workers dies.
    env = {**ENV, "RAG_INGEST__TASK_SIZE": "16"}
    index = tmp_path / "index"
    run = subprocess.Popen(
        [str(BIN / "rag"), "index", str(generated), "--index-dir", str(index), "--cluster", address, "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids = client.run(os.getpid)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and run.poll() is None and time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            if any(str(key).startswith("_embed_task") for key in keys):
                os.kill(pids[worker], signal.SIGKILL)
                killed = worker
                break
        time.sleep(0.05)
    stdout, stderr = run.communicate(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed while embedding"
    assert run.returncode == 0, stderr
    assert killed not in client.scheduler_info()["workers"]
    assert json.loads(stdout)["written"]
    assert_same_index(local_generated, index)


def test_the_local_cluster_listens_on_loopback_only(tmp_path: Path) -> None:
    from rag.ingest.cluster import cluster_client

    settings = make_settings(tmp_path / "index", ingest={"engine": "dask"})
    with cluster_client(settings) as client:
        info = client.scheduler_info()
        assert len(info["workers"]) == settings.ingest.local_workers
        pids = [os.getpid(), *client.run(os.getpid).values()]
        for each in [info["address"], *info["workers"]]:
            assert ipaddress.ip_address(each.removeprefix("tcp://").rsplit(":", 1)[0]).is_loopback, each
        for pid in pids:
            listening = _listening(pid)
            assert all(ipaddress.ip_address(ip).is_loopback for ip in listening), listening
        assert _listening(os.getpid())  # the scheduler, in this process


def test_without_the_extra_the_flag_is_one_line(tmp_path: Path) -> None:
    # As if `distributed` were not installed: importing it fails.
    script = "import sys; sys.modules['distributed'] = None; from rag.cli import main; main()"
    run = subprocess.run(
        [sys.executable, "-c", script, "index", str(SEEDS), "--index-dir", str(tmp_path / "index"), "--cluster"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == ["error: rag index --cluster needs Dask: pip install cited-rag[cluster]"]
    assert not (tmp_path / "index").exists()
