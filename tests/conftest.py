from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rag.config import Settings  # noqa: E402
from rag.embedding import Embedder  # noqa: E402
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


def make_settings(index_dir: Path, corpus_dir: Path = SEEDS, **overrides) -> Settings:
    settings = Settings(corpus_dir=corpus_dir, **overrides)
    settings.index.dir = index_dir
    return settings


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
