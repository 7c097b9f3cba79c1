"""The on-disk index: documents, chunks, vectors, FAISS and BM25, plus a manifest.

Each build is written into a fresh generation folder beside the live one and published by
atomically replacing the `CURRENT` pointer file, so a crash or an exception at any point
leaves the previous index loadable. Writers take a lock so two builds never interleave."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import bm25s
import faiss
import numpy as np
from pydantic import BaseModel

from rag.config import ChunkingSettings, CleaningSettings, Settings
from rag.dense import load_dense_index, save_dense_index
from rag.errors import IncompatibleIndexError, IndexMissingError, RagError
from rag.lexical import load_lexical_index, save_lexical_index
from rag.schema import Chunk, Document

FORMAT_VERSION = 1
POINTER = "CURRENT"
GENERATIONS_KEPT = 2


class Manifest(BaseModel):
    format_version: int
    created_at: str
    embedding_model: str
    embedding_fingerprint: str
    # Indexes from before backends existed were all built by torch.
    embedding_backend: str = "torch"
    dimension: int
    include_title: bool
    chunking: ChunkingSettings
    cleaning: CleaningSettings
    faiss_type: str
    dedup_threshold: float
    corpus_fingerprint: str
    documents: int
    chunks: int
    canonical_chunks: int
    versions: dict[str, str]


@dataclass
class IndexData:
    manifest: Manifest
    documents: dict[str, Document]
    chunks: list[Chunk]  # every chunk, copies included, in (doc_id, start) order
    canonical: list[Chunk]  # the indexed ones; row i of vectors / FAISS / BM25
    vectors: np.ndarray
    embedding_keys: list[str]
    dense: faiss.Index
    lexical: bm25s.BM25


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("cited-rag", "sentence-transformers", "faiss-cpu", "bm25s", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def new_manifest_time() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def compatibility_problems(manifest: Manifest, settings: Settings, fingerprint: str) -> list[str]:
    """How the index differs from what the current settings would build."""
    problems = []
    if manifest.embedding_backend != settings.embedding.backend:
        problems.append(f"embedding backend ({manifest.embedding_backend} -> {settings.embedding.backend})")
    elif manifest.embedding_fingerprint != fingerprint:
        problems.append(f"embedding model ({manifest.embedding_model} -> {settings.embedding.model})")
    if manifest.include_title != settings.embedding.include_title:
        problems.append("embedding.include_title")
    if manifest.chunking != settings.chunking:
        problems.append("chunking settings")
    if manifest.cleaning != settings.cleaning:
        problems.append("cleaning settings")
    if manifest.faiss_type != settings.index.faiss_type:
        problems.append(f"FAISS index type ({manifest.faiss_type} -> {settings.index.faiss_type})")
    if manifest.dedup_threshold != settings.index.dedup_threshold:
        problems.append("dedup threshold")
    return problems


def current_generation(index_dir: Path) -> Path | None:
    pointer = index_dir / POINTER
    if not pointer.is_file():
        return None
    generation = index_dir / pointer.read_text().strip()
    return generation if generation.is_dir() else None


def read_index(index_dir: Path) -> IndexData:
    generation = current_generation(index_dir)
    if generation is None:
        raise IndexMissingError(f"no index in {index_dir}/ yet: run `rag index` first")
    try:
        manifest = Manifest.model_validate_json((generation / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise IncompatibleIndexError(f"index in {index_dir}/ is unreadable ({exc.__class__.__name__}): run `rag index --rebuild`") from None
    if manifest.format_version != FORMAT_VERSION:
        raise IncompatibleIndexError(
            f"index in {index_dir}/ has format {manifest.format_version}, this version reads {FORMAT_VERSION}: "
            "run `rag index --rebuild`"
        )
    try:
        documents = {d.doc_id: d for d in map(Document.model_validate_json, _read_lines(generation / "documents.jsonl"))}
        chunks = [Chunk.model_validate_json(line) for line in _read_lines(generation / "chunks.jsonl")]
        vectors = np.load(generation / "vectors.npy")
        keys = json.loads((generation / "embedding_keys.json").read_text())
        dense = load_dense_index(generation / "dense.faiss")
        lexical = load_lexical_index(generation / "bm25")
    except (OSError, ValueError, RuntimeError) as exc:
        raise RagError(f"index in {generation} is damaged ({exc.__class__.__name__}: {exc}); run `rag index --rebuild`") from None
    canonical = [c for c in chunks if c.duplicate_of is None]
    return IndexData(manifest, documents, chunks, canonical, vectors, keys, dense, lexical)


def _read_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line


@contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    index_dir.mkdir(parents=True, exist_ok=True)
    with (index_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_index(index_dir: Path, data: IndexData) -> Path:
    """Write a new generation and publish it; the caller holds `writer_lock`."""
    name = f"gen-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    staging = index_dir / f".tmp-{name}"
    staging.mkdir(parents=True)
    try:
        _write_text(staging / "manifest.json", data.manifest.model_dump_json(indent=2))
        _write_text(staging / "documents.jsonl", "".join(d.model_dump_json() + "\n" for d in data.documents.values()))
        _write_text(staging / "chunks.jsonl", "".join(c.model_dump_json() + "\n" for c in data.chunks))
        _write_text(staging / "embedding_keys.json", json.dumps(data.embedding_keys))
        with (staging / "vectors.npy").open("wb") as handle:
            np.save(handle, data.vectors)
        save_dense_index(data.dense, staging / "dense.faiss")
        save_lexical_index(data.lexical, staging / "bm25")
        _fsync_tree(staging)
        staging.rename(index_dir / name)
        _write_text(index_dir / f".{POINTER}.tmp", name)
        os.replace(index_dir / f".{POINTER}.tmp", index_dir / POINTER)
        _fsync_path(index_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _collect_garbage(index_dir, keep=name)
    return index_dir / name


def _write_text(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        _fsync_path(path)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _collect_garbage(index_dir: Path, keep: str) -> None:
    """Drop staging leftovers of crashed builds and all but the newest generations."""
    for leftover in index_dir.glob(".tmp-gen-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    generations = sorted((p for p in index_dir.glob("gen-*") if p.name != keep), key=lambda p: p.name)
    for old in generations[: max(0, len(generations) - (GENERATIONS_KEPT - 1))]:
        shutil.rmtree(old, ignore_errors=True)
