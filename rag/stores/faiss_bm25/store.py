"""The on-disk index: documents, chunks, vectors, FAISS and BM25, plus a manifest.

Each build is written into a fresh generation folder beside the live one and published by
atomically replacing the `CURRENT` pointer file, so a crash or an exception at any point
leaves the previous index loadable. Writers take a lock so two builds never interleave.

The manifest records the size and checksum of every other file of its generation and the
counts they must agree on. Loading verifies all of it, checksums included (xxh3: a few percent
of loading a SciFact index, where blake2b took a third; bench/RESULTS.md), so a truncated or
overwritten file, a FAISS file copied from another index or shifted chunk offsets stop a search
with a one-line error instead of returning wrong passages."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bm25s
import faiss
import numpy as np
import xxhash
from pydantic import BaseModel, Field

from rag.config import IndexSettings, RetrievalSettings, SearchMode, Settings
from rag.errors import IncompatibleIndexError, IndexDamagedError, IndexMissingError
from rag.schema import Chunk, Document
from rag.stores.base import (
    Candidate,
    Changes,
    ChunkCounts,
    Manifest,
    compatibility_problems,
    embedding_text,
)
from rag.stores.faiss_bm25.dense import (
    build_dense_index,
    load_dense_index,
    save_dense_index,
    search_dense,
)
from rag.stores.faiss_bm25.lexical import (
    build_lexical_index,
    lexical_scores,
    lexical_size,
    load_lexical_index,
    save_lexical_index,
)

# 2: file checksums in the manifest; every chunk in FAISS and BM25 (near-duplicates collapse in results).
FORMAT_VERSION = 2
POINTER = "CURRENT"
GENERATIONS_KEPT = 2
MANIFEST = "manifest.json"


class FileRecord(BaseModel):
    size: int
    xxh3_128: str


class GenerationManifest(Manifest):
    """The manifest of one generation: the build's `Manifest`, this store's format, and the
    size and checksum of every other file of the generation."""

    format_version: int
    # Every file of the generation but the manifest, by path relative to the generation folder.
    files: dict[str, FileRecord] = Field(default_factory=dict)


@dataclass
class IndexData:
    manifest: GenerationManifest
    documents: dict[str, Document]
    chunks: list[Chunk]  # in (doc_id, start) order; chunk i is row i of vectors / FAISS / BM25
    vectors: np.ndarray
    embedding_keys: list[str]
    dense: faiss.Index
    lexical: bm25s.BM25


def current_generation(index_dir: Path) -> Path | None:
    pointer = index_dir / POINTER
    if not pointer.is_file():
        return None
    generation = index_dir / pointer.read_text().strip()
    return generation if generation.is_dir() else None


def generations(index_dir: Path) -> list[Path]:
    """Published generations, newest first."""
    return sorted(index_dir.glob("gen-*"), key=lambda p: p.name, reverse=True)


def read_index(index_dir: Path) -> IndexData:
    generation = current_generation(index_dir)
    if generation is None and (index_dir / POINTER).is_file():
        raise IndexDamagedError(f"{index_dir}/", [f"the generation {POINTER} names is missing"])
    if generation is None:
        raise IndexMissingError(f"no index in {index_dir}/ yet: run `rag index` first")
    return read_generation(generation)


def open_store(settings: Settings, fingerprint: str) -> FaissBm25Store:
    """The current generation of `settings.index.dir`, refused when the settings would build
    it otherwise (`fingerprint`: the embedding model's)."""
    data = read_index(settings.index.dir)
    problems = compatibility_problems(data.manifest, settings, fingerprint)
    if problems:
        raise IncompatibleIndexError(
            f"the index in {settings.index.dir}/ was built with other {', '.join(problems)}: run `rag index` to rebuild it"
        )
    return FaissBm25Store(data, settings.retrieval, settings.index)


def read_generation(generation: Path) -> IndexData:
    """Load one generation, verified: checksums first (a damaged file is never parsed), then
    the counts and offsets the files must agree on."""
    manifest = _read_manifest(generation)
    problems = file_problems(generation, manifest)
    if problems:
        raise IndexDamagedError(str(generation), problems)
    try:
        documents = {d.doc_id: d for d in map(Document.model_validate_json, _read_lines(generation / "documents.jsonl"))}
        chunks = [Chunk.model_validate_json(line) for line in _read_lines(generation / "chunks.jsonl")]
        vectors = np.load(generation / "vectors.npy")
        keys = json.loads((generation / "embedding_keys.json").read_text())
        dense = load_dense_index(generation / "dense.faiss")
        lexical = load_lexical_index(generation / "bm25")
    except (OSError, ValueError, RuntimeError) as exc:
        raise IndexDamagedError(str(generation), [f"{exc.__class__.__name__}: {exc}"]) from None
    data = IndexData(manifest, documents, chunks, vectors, keys, dense, lexical)
    problems = content_problems(data)
    if problems:
        raise IndexDamagedError(str(generation), problems)
    return data


def _read_manifest(generation: Path) -> GenerationManifest:
    try:
        raw = json.loads((generation / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise IndexDamagedError(str(generation), [f"{MANIFEST} is unreadable ({exc.__class__.__name__})"]) from None
    found = raw.get("format_version") if isinstance(raw, dict) else None
    if found != FORMAT_VERSION:
        # An older build, not a damaged one: `rag index` rebuilds it without a warning.
        raise IncompatibleIndexError(
            f"index in {generation.parent}/ has format {found}, this version reads {FORMAT_VERSION}: run `rag index`"
        )
    try:
        return GenerationManifest.model_validate(raw)
    except ValueError:
        raise IndexDamagedError(str(generation), [f"{MANIFEST} does not fit the format"]) from None


def file_checksum(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, xxhash.xxh3_128).hexdigest()


def file_records(generation: Path) -> dict[str, FileRecord]:
    return {
        path.relative_to(generation).as_posix(): FileRecord(size=path.stat().st_size, xxh3_128=file_checksum(path))
        for path in sorted(generation.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def file_problems(generation: Path, manifest: GenerationManifest) -> list[str]:
    """Files that are missing or differ from what the build wrote, one line each."""
    if not manifest.files:
        return [f"{MANIFEST} lists no files"]
    problems = []
    for name, record in manifest.files.items():
        path = generation / name
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if size != record.size:
            problems.append(f"{name} is {size} bytes, the build wrote {record.size}")
        elif file_checksum(path) != record.xxh3_128:
            problems.append(f"{name} does not match its checksum")
    return problems


def row_counts(data: IndexData) -> dict[str, int]:
    """What must all equal the number of chunks: one row per chunk in every search structure."""
    return {
        "chunks": len(data.chunks),
        "manifest chunks": data.manifest.chunks,
        "vectors": int(data.vectors.shape[0]),
        "embedding keys": len(data.embedding_keys),
        "FAISS": int(data.dense.ntotal),
        "BM25": lexical_size(data.lexical),
    }


def content_problems(data: IndexData) -> list[str]:
    """Counts, dimensions and offsets that disagree, one line each."""
    problems = []
    counts = row_counts(data)
    if len(set(counts.values())) > 1:
        problems.append("row counts differ: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    if len(data.documents) != data.manifest.documents:
        problems.append(f"{len(data.documents)} documents, the manifest says {data.manifest.documents}")
    dimensions = {data.manifest.dimension, int(data.dense.d), int(data.vectors.shape[-1])}
    if len(dimensions) > 1:
        problems.append(f"vector dimensions differ: manifest {data.manifest.dimension}, FAISS {data.dense.d}, vectors {data.vectors.shape[-1]}")
    ids = {c.chunk_id for c in data.chunks}
    shifted = [
        c.chunk_id
        for c in data.chunks
        if c.doc_id not in data.documents or data.documents[c.doc_id].text[c.start : c.end] != c.text
    ]
    if shifted:
        problems.append(f"{len(shifted)} chunk(s) whose offsets do not reproduce their text (first: {shifted[0]})")
    dangling = [c.chunk_id for c in data.chunks if c.duplicate_of is not None and c.duplicate_of not in ids]
    if dangling:
        problems.append(f"{len(dangling)} chunk(s) copying a chunk that is not in the index (first: {dangling[0]})")
    return problems


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


def write_index(index_dir: Path, data: IndexData, discard: Path | None = None) -> Path:
    """Write a new generation and publish it, then delete `discard` (a damaged generation, so
    that the sound one before it is the one kept beside the new); the caller holds `writer_lock`."""
    # Microseconds: two builds within one second must still sort newest first (generations()).
    name = f"gen-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
    staging = index_dir / f".tmp-{name}"
    staging.mkdir(parents=True)
    try:
        _write_text(staging / "documents.jsonl", "".join(d.model_dump_json() + "\n" for d in data.documents.values()))
        _write_text(staging / "chunks.jsonl", "".join(c.model_dump_json() + "\n" for c in data.chunks))
        _write_text(staging / "embedding_keys.json", json.dumps(data.embedding_keys))
        with (staging / "vectors.npy").open("wb") as handle:
            np.save(handle, data.vectors)
        save_dense_index(data.dense, staging / "dense.faiss")
        save_lexical_index(data.lexical, staging / "bm25")
        manifest = data.manifest.model_copy(update={"files": file_records(staging)})
        _write_text(staging / MANIFEST, manifest.model_dump_json(indent=2))
        _fsync_tree(staging)
        staging.rename(index_dir / name)
        _write_text(index_dir / f".{POINTER}.tmp", name)
        os.replace(index_dir / f".{POINTER}.tmp", index_dir / POINTER)
        _fsync_path(index_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if discard is not None:
        shutil.rmtree(discard, ignore_errors=True)
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
    for old in [p for p in generations(index_dir) if p.name != keep][GENERATIONS_KEPT - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


class FaissBm25Writer:
    """The embedded `StoreWriter`: the current generation (or, when it is damaged, the newest
    sound one before it) opened for one update; `apply` publishes the next generation."""

    def __init__(self, index_dir: Path, index_settings: IndexSettings):
        self.index_dir = index_dir
        self.index_settings = index_settings
        self.problems: list[str] = []
        # A damaged current generation, deleted once its successor is published.
        self._damaged: Path | None = None
        self.data = self._open()
        self._row_of_key = {key: row for row, key in enumerate(self.data.embedding_keys)} if self.data else {}

    def _open(self) -> IndexData | None:
        try:
            return read_index(self.index_dir)
        except IndexMissingError:
            return None
        except IncompatibleIndexError as exc:
            self.problems.append(str(exc))
            return None
        except IndexDamagedError as exc:
            self._damaged = current_generation(self.index_dir)
            return self._last_sound_generation(exc)

    def _last_sound_generation(self, damage: IndexDamagedError) -> IndexData | None:
        """The newest older generation that passes every check, so its documents and vectors
        are reused; None when there is none and the corpus must be indexed afresh."""
        for generation in generations(self.index_dir):
            if generation == self._damaged:
                continue
            try:
                data = read_generation(generation)
            except (IndexDamagedError, IncompatibleIndexError):
                continue
            self.problems.append(f"{damage.summary}; rebuilt from the previous generation {generation.name}")
            return data
        self.problems.append(f"{damage.summary}; no sound generation left, rebuilt from the documents given")
        return None

    @property
    def manifest(self) -> Manifest | None:
        return self.data.manifest if self.data else None

    @property
    def documents(self) -> dict[str, Document]:
        return self.data.documents if self.data else {}

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        return [c for c in self.data.chunks if c.doc_id == doc_id] if self.data else []

    def vectors_for(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        return {key: self.data.vectors[self._row_of_key[key]] for key in keys if key in self._row_of_key}

    def apply(self, changes: Changes) -> None:
        if changes.manifest is None:
            raise ValueError("an update must carry the manifest of the index after it")
        keep = None if changes.replace_all or self.data is None else self.data
        gone = set(changes.removed) | {rows.document.doc_id for rows in changes.upserted}
        documents = {d: doc for d, doc in (keep.documents if keep else {}).items() if d not in gone}
        annotated = {c.chunk_id: c for c in changes.annotated}
        # (sort key, chunk, lexical text, vector, embedding key) per row.
        rows = []
        if keep is not None:
            include_title = keep.manifest.include_title
            for row, chunk in enumerate(keep.chunks):
                if chunk.doc_id not in gone:
                    chunk = annotated.get(chunk.chunk_id, chunk)
                    text = embedding_text(chunk, documents[chunk.doc_id], include_title)
                    rows.append((chunk, text, keep.vectors[row], keep.embedding_keys[row]))
        for upsert in changes.upserted:
            documents[upsert.document.doc_id] = upsert.document
            rows.extend(zip(upsert.chunks, upsert.texts, upsert.vectors, upsert.embedding_keys))
        rows.sort(key=lambda r: (r[0].doc_id, r[0].start))
        dimension = changes.manifest.dimension
        vectors = np.array([r[2] for r in rows], dtype=np.float32).reshape(len(rows), dimension)
        texts = [r[1] for r in rows]
        data = IndexData(
            manifest=GenerationManifest(**changes.manifest.model_dump(), format_version=FORMAT_VERSION),
            documents=dict(sorted(documents.items())),
            chunks=[r[0] for r in rows],
            vectors=vectors,
            embedding_keys=[r[3] for r in rows],
            dense=build_dense_index(vectors, self.index_settings),
            lexical=build_lexical_index(texts),
        )
        write_index(self.index_dir, data, discard=self._damaged)
        self._damaged = None


@contextmanager
def open_writer(index_dir: Path, index_settings: IndexSettings) -> Iterator[FaissBm25Writer]:
    """The index in `index_dir` opened for one update, under the writer lock."""
    with writer_lock(index_dir):
        yield FaissBm25Writer(index_dir, index_settings)


class FaissBm25Store:
    """The embedded `Store`: one loaded generation, searched with FAISS and bm25s, hybrid
    results fused by reciprocal rank fusion."""

    def __init__(self, data: IndexData, settings: RetrievalSettings, index_settings: IndexSettings):
        self.data = data
        self.settings = settings
        self.index_settings = index_settings
        self._row_of = {chunk.chunk_id: row for row, chunk in enumerate(data.chunks)}
        self._doc_rows: dict[str, list[int]] = {}
        for row, chunk in enumerate(data.chunks):
            self._doc_rows.setdefault(chunk.doc_id, []).append(row)

    @property
    def manifest(self) -> Manifest:
        return self.data.manifest

    @property
    def documents(self) -> dict[str, Document]:
        return self.data.documents

    @property
    def chunk_total(self) -> int:
        return len(self.data.chunks)

    @property
    def distinct_chunks(self) -> int:
        return self.data.manifest.canonical_chunks

    def chunk(self, chunk_id: str) -> Chunk:
        return self.data.chunks[self._row_of[chunk_id]]

    def chunk_counts(self) -> dict[str, ChunkCounts]:
        return {
            doc_id: ChunkCounts(len(rows), sum(self.data.chunks[r].duplicate_of is not None for r in rows))
            for doc_id, rows in ((d, self._doc_rows.get(d, [])) for d in self.data.documents)
        }

    def search(
        self, query: str, vector: np.ndarray | None, mode: SearchMode, depth: int, doc_ids: list[str] | None
    ) -> list[Candidate]:
        allowed = (
            np.array(sorted({r for d in doc_ids for r in self._doc_rows.get(d, [])}), dtype=np.int64)
            if doc_ids else None
        )
        size = len(self.data.chunks)
        if size == 0 or (allowed is not None and len(allowed) == 0):
            return []
        bm25 = lexical_scores(self.data.lexical, query, size) if mode != "dense" else None
        if bm25 is not None and allowed is not None:
            mask = np.zeros(size, dtype=np.float32)
            mask[allowed] = 1.0
            bm25 = bm25 * mask
        rankings: list[tuple[np.ndarray, float]] = []
        if mode != "bm25":
            dense_scores, dense_rows = search_dense(self.data.dense, vector, depth, self.index_settings, allowed)
            rankings.append((dense_rows, self.settings.dense_weight))
        if bm25 is not None:
            rankings.append((top_rows(bm25, depth), self.settings.bm25_weight))
        if mode == "hybrid":
            fused = rrf_fuse(rankings, self.settings.rrf_k)
            ordered = sorted(fused, key=lambda r: (-fused[r], r))
            scores = fused
        elif mode == "dense":
            ordered = rankings[0][0].tolist()
            scores = dict(zip(ordered, map(float, dense_scores)))
        else:
            ordered = rankings[0][0].tolist()
            scores = {r: float(bm25[r]) for r in ordered}
        return [
            Candidate(
                chunk=self.data.chunks[row],
                score=float(scores[row]),
                dense_score=float(self.data.vectors[row] @ vector) if vector is not None else None,
                bm25_score=float(bm25[row]) if bm25 is not None else None,
            )
            for row in ordered
        ]


def rrf_fuse(rankings: list[tuple[np.ndarray, float]], rrf_k: int) -> dict[int, float]:
    """Reciprocal rank fusion: each ranking (rows best first, weight) adds weight / (rrf_k + rank)."""
    fused: dict[int, float] = {}
    for rows, weight in rankings:
        for rank, row in enumerate(rows.tolist(), start=1):
            fused[row] = fused.get(row, 0.0) + weight / (rrf_k + rank)
    return fused


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k highest positive scores, best first."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > k:
        positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
    return positive[np.argsort(-scores[positive], kind="stable")]
