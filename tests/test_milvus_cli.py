"""`rag` against Milvus through the real CLI: one-line errors with their exit codes, and a
Milvus server killed in the middle of an index run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SEEDS, free_port, start_milvus
from pymilvus import MilvusClient

from rag.stores.faiss_bm25.store import read_index

pytestmark = pytest.mark.slow


def rag(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rag.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


def milvus_env(uri: str, collection: str) -> dict[str, str]:
    return {"RAG_STORE__BACKEND": "milvus", "RAG_STORE__URI": uri, "RAG_STORE__COLLECTION": collection}


@pytest.mark.parametrize(
    ("env", "code", "message"),
    [
        (milvus_env("http://127.0.0.1:9", "c"), 1, "error: cannot reach Milvus at http://127.0.0.1:9 (store.uri): "),
        (
            milvus_env("SERVER", "never_built"),
            2,
            "error: no index in Milvus collection never_built at SERVER yet: run `rag index` first",
        ),
        (
            {**milvus_env("SERVER", "c"), "RAG_STORE__BACKEND": "mongo"},
            2,
            "error: setting store.backend (from RAG_STORE__BACKEND): ",
        ),
        (milvus_env("SERVER", "bad-name"), 2, "error: setting store.collection (from RAG_STORE__COLLECTION): "),
        (milvus_env("", "c"), 2, "error: setting store.uri is empty"),
        (milvus_env("foo://x", "c"), 2, "error: setting store.uri 'foo://x' is not usable: "),
    ],
)
def test_store_problems_are_one_line_with_their_exit_code(milvus_server, tmp_path, env, code, message) -> None:
    env = {name: value.replace("SERVER", milvus_server.uri) for name, value in env.items()}
    message = message.replace("SERVER", milvus_server.uri)
    done = rag(["search", "party cells"], env, tmp_path)
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


# `rag index` whose update stops, once its first batch of documents is written, until the
# file named by its first argument is removed: the test kills the server at that point, not
# at whatever point a poll happens to catch (a small corpus is written in a few milliseconds).
PAUSED_INDEX = """
import sys, time
from pathlib import Path
from rag.cli import main
from rag.stores.milvus import store

pause = Path(sys.argv.pop(1))
mark, calls = store.MilvusWriter._mark, []

def paused_mark(self, started_at):
    calls.append(started_at)
    if len(calls) == 2:  # the first mark precedes the rows, the second follows their first batch
        pause.touch()
        deadline = time.monotonic() + 300
        while pause.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    mark(self, started_at)

store.MilvusWriter._mark = paused_mark
main()
"""


def test_a_server_killed_mid_index_fails_the_run_and_the_next_run_restores_the_corpus(tmp_path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(SEEDS, corpus)
    port = free_port()
    server = start_milvus(tmp_path / "data", port)
    env = milvus_env(server.uri, "killed")
    pause = tmp_path / "paused"
    run = subprocess.Popen(
        [sys.executable, "-c", PAUSED_INDEX, str(pause), "index", str(corpus)],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None and not pause.exists():
            time.sleep(0.02)
        assert pause.exists(), run.communicate(timeout=60)[1]
        watcher = MilvusClient(uri=server.uri)
        assert watcher.get("killed_meta", ids=["update"]) and not watcher.get("killed_meta", ids=["manifest"])
        assert watcher.query("killed_documents", filter="", output_fields=["count(*)"])[0]["count(*)"] > 0
        watcher.close()
    finally:
        server.process.kill()  # SIGKILL, in the middle of the update
        server.process.wait(timeout=30)
        pause.unlink(missing_ok=True)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: Milvus at {server.uri} failed: ")
    assert "Traceback" not in stderr

    server = start_milvus(tmp_path / "data", port)
    try:
        damaged = rag(["search", "party cells"], env, tmp_path)
        assert damaged.returncode == 1
        assert damaged.stderr.startswith(
            f"error: index in Milvus collection killed at {server.uri} is damaged (an update of "
        )
        again = rag(["index", str(corpus), "--json"], env, tmp_path)
        assert again.returncode == 0, again.stderr
        assert "was interrupted" in " ".join(json.loads(again.stdout)["rebuilt_because"])

        files = rag(["index", str(corpus)], {"RAG_INDEX__DIR": str(tmp_path / "files")}, tmp_path)
        assert files.returncode == 0, files.stderr
        client = MilvusClient(uri=server.uri)
        chunk_ids = [
            r["chunk_id"]
            for r in client.query("killed_chunks", filter='chunk_id != ""', output_fields=["chunk_id"], limit=16_384)
        ]
        doc_ids = [
            r["doc_id"]
            for r in client.query("killed_documents", filter="part == 0", output_fields=["doc_id"], limit=16_384)
        ]
        client.close()
        assert len(chunk_ids) == len(set(chunk_ids))  # no duplicates
        assert sorted(doc_ids) == sorted(p.name for p in corpus.iterdir())
        assert set(chunk_ids) == {c.chunk_id for c in read_index(tmp_path / "files").chunks}
    finally:
        server.stop()


def test_migrate_copies_an_index_both_ways_without_embedding(milvus_server, tmp_path) -> None:
    files = tmp_path / "files"
    assert rag(["index", str(SEEDS), "--index-dir", str(files)], {}, tmp_path).returncode == 0
    env = milvus_env(milvus_server.uri, "migrated")
    # No model to embed with: the copy must not need one.
    no_model = {**env, "RAG_EMBEDDING__MODEL": str(tmp_path / "no-model")}
    there = rag(["migrate", "--to", "milvus", "--index-dir", str(files)], no_model, tmp_path)
    assert there.returncode == 0, there.stderr
    assert "Copied 5 documents, " in there.stdout and "to Milvus collection migrated at" in " ".join(
        there.stdout.split()
    )
    back = rag(
        ["migrate", "--to", "faiss", "--index-dir", str(tmp_path / "back")],
        {**no_model, "RAG_STORE__BACKEND": "milvus"},
        tmp_path,
    )
    assert back.returncode == 0, back.stderr

    def search(env: dict[str, str], index_dir: Path, mode: str) -> list:
        done = rag(
            [
                "search",
                "How many commune-level military party cells were established?",
                "--mode",
                mode,
                "--json",
                "--index-dir",
                str(index_dir),
            ],
            env,
            tmp_path,
        )
        assert done.returncode == 0, done.stderr
        return [(h["chunk_id"], h["start"], h["end"]) for h in json.loads(done.stdout)["results"]]

    # Hybrid only: each mode's agreement between the backends is test_milvus_store's.
    expected = search({}, files, "hybrid")
    assert search({**env, "RAG_STORE__BACKEND": "milvus"}, files, "hybrid") == expected
    assert search({}, tmp_path / "back", "hybrid") == expected

    missing = rag(["migrate", "--to", "milvus", "--index-dir", str(tmp_path / "none")], env, tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no index in ")
    assert not (tmp_path / "none").exists()
