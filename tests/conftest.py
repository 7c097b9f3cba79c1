from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests see the default settings, whatever rag.toml or RAG_* variables the machine has; a test
# that needs a setting passes it (and subprocesses inherit this clean environment).
for _name in [name for name in os.environ if name.startswith("RAG_")]:
    del os.environ[_name]
os.environ["RAG_CONFIG"] = os.devnull

from rag.config import Settings  # noqa: E402
from rag.embed.encoder import Embedder  # noqa: E402
from rag.service import RagService  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"

# Strings of the scraped pages' clutter that must never reach the index.
BOILERPLATE = [
    "You have 500/500 characters left",
    "Please enter 5 or more characters!!!",
    "Recent news",
    "UNITED24 - Make a charitable donation in support of Ukraine!",
    "NEWSLETTER",
    "Join the GlobalSecurity.org mailing list",
    ".jpg)",
    "Comment (0)",
    "Early Tết shopping on online markets",
]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A private copy of the seed corpus that a test may change."""
    target = tmp_path / "corpus"
    shutil.copytree(SEEDS, target)
    return target


def make_settings(index_dir: Path, corpus_dir: Path = SEEDS, **sections: dict) -> Settings:
    """Settings for a test: defaults (the user's rag.toml and RAG_* do not apply, see above),
    this index and corpus, and `sections` as `Settings.replace` takes them."""
    return Settings().replace(
        index={"dir": index_dir, "corpus_dir": corpus_dir, **sections.pop("index", {})}, **sections
    )


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(Settings().embedding)


def make_service(settings: Settings, embedder: Embedder) -> RagService:
    service = RagService(settings)
    service.embedder = embedder  # share the loaded model across tests
    return service


@pytest.fixture(scope="session")
def seed_service(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> RagService:
    """The bundled corpus, indexed once per test session."""
    service = make_service(make_settings(tmp_path_factory.mktemp("seed-index") / "index"), embedder)
    service.update(paths=[SEEDS])
    return service


@dataclass
class LiveServer:
    url: str
    corpus: Path
    log: Path


# Uploads over this many bytes get 413 from the test server (kept small to test the limit),
# and so do request bodies over TEST_BODY_LIMIT.
TEST_UPLOAD_LIMIT = 200_000
TEST_BODY_LIMIT = 400_000


def serve(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[LiveServer]:
    """`rag serve` as a user starts it, on a free loopback port, over a private corpus copy,
    with these environment variables; stopped (with its embedded LLM server) afterwards."""
    work = tmp_path_factory.mktemp("server")
    corpus = work / "corpus"
    shutil.copytree(SEEDS, corpus)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = work / "server.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rag.cli",
                "serve",
                "--port",
                str(port),
                "--corpus",
                str(corpus),
                "--index-dir",
                str(work / "index"),
            ],
            cwd=work,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            pytest.fail(f"rag serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"rag serve did not come up within 300 s:\n{log.read_text()}")
        time.sleep(0.5)
    try:
        yield LiveServer(url=url, corpus=corpus, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The server as `make run` starts it: no keys, on loopback."""
    yield from serve(
        tmp_path_factory,
        {
            "RAG_SERVER__MAX_UPLOAD_BYTES": str(TEST_UPLOAD_LIMIT),
            "RAG_SERVER__MAX_BODY_BYTES": str(TEST_BODY_LIMIT),
        },
    )


# Keys of `keyed_server`.
READ_KEY = "read-key-" + "r" * 24
ADMIN_KEY = "admin-key-" + "a" * 24


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The server with a read-only and an admin key."""
    yield from serve(tmp_path_factory, {"RAG_SERVER__API_KEYS": READ_KEY, "RAG_SERVER__ADMIN_KEYS": ADMIN_KEY})


# Fixtures that load a real model: a test using one is slow, whatever its marks say.
REAL_MODEL_FIXTURES = {"embedder", "int8_embedder", "seed_service", "variant_service", "live_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@dataclass
class MilvusServer:
    uri: str
    data_dir: Path
    port: int
    process: subprocess.Popen

    def stop(self) -> None:
        """Stop the server (by its pid) and wait for it to exit."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_milvus(data_dir: Path, port: int | None = None) -> MilvusServer:
    """`milvus-lite server` as a separate process on a loopback port (its default binds every
    interface), ready for clients: the store talks gRPC to it as to Milvus Standalone."""
    port = port or free_port()
    log = (data_dir.parent / f"{data_dir.name}-milvus.log").open("a")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("milvus-lite")),
            "server",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"milvus-lite server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("milvus-lite server did not listen within 60 s")
            time.sleep(0.2)
    return MilvusServer(uri=f"http://127.0.0.1:{port}", data_dir=data_dir, port=port, process=process)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """One Milvus Lite gRPC server for the session's Milvus tests; each uses its own collections."""
    server = start_milvus(tmp_path_factory.mktemp("milvus") / "data")
    try:
        yield server
    finally:
        server.stop()
