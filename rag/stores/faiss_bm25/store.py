"""The on-disk index: segments of documents, chunks, vectors, FAISS and BM25, plus a manifest.

An update writes one new segment (the documents it adds or changes, with all their chunks)
and marks the documents it replaces or removes as deleted in the older segments; older
segments are never rewritten, only hard-linked into the new generation, so an update costs
what it changed. Segments are merged when there are more than `MAX_SEGMENTS` or too many
deleted rows. Each update is written into a fresh generation folder beside the live one and
published by atomically replacing the `CURRENT` pointer file, so a crash or an exception at
any point leaves the previous index loadable. Writers take a lock so two builds never
interleave. Generations share the files of common segments (hard links): damage to such a
file reaches both, and `rag index` then rebuilds from the documents.

The manifest records the size and checksum of every other file of its generation and the
counts they must agree on. Loading verifies the checksums and counts (xxh3: a few percent of
loading an index, where blake2b took a third; bench/RESULTS.md) and reads chunks lazily
(rag.stores.faiss_bm25.segments), each checked when first read, so a truncated or overwritten
file, a FAISS file copied from another index or shifted chunk offsets stop a search with a
one-line error instead of returning wrong passages."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

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
)
from rag.stores.faiss_bm25.dense import build_dense_index, live_selector, search_dense
from rag.stores.faiss_bm25.lexical import bm25_scores, build_lexical_index, merge_lexical_segments
from rag.stores.faiss_bm25.segments import IndexData, Segment

# 2: file checksums in the manifest; every chunk in FAISS and BM25 (near-duplicates collapse in results).
# 3: segments, deleted documents and annotation overrides (incremental updates).
# 4: row columns and doc ids beside the JSON lines, which are read lazily.
FORMAT_VERSION = 4
POINTER = "CURRENT"
GENERATIONS_KEPT = 2
MANIFEST = "manifest.json"
ANNOTATIONS = "annotations.jsonl"
# Merge the segments after the first (base) one when there are more than this many, and all of
# them when over this share of the rows are deleted: search time grows with segments.
MAX_SEGMENTS = 8
MAX_DELETED_SHARE = 0.25


class FileRecord(BaseModel):
    size: int
    xxh3_128: str


class GenerationManifest(Manifest):
    """The manifest of one generation: the build's `Manifest`, this store's format, its
    segments with the documents deleted from each, and the size and checksum of every other
    file of the generation."""

    format_version: int
    segments: list[str] = Field(default_factory=list)
    deleted: dict[str, list[str]] = Field(default_factory=dict)
    # Every file of the generation but the manifest, by path relative to the generation folder.
    files: dict[str, FileRecord] = Field(default_factory=dict)


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


# The generation this process opened last in each index folder (a few folders at most).
# Generations never change once published, so opening the same one again, once its files pass
# the checks, returns it; a newer one takes the segments they share (linked files) from it.
_OPENED: dict[Path, IndexData] = {}
_OPENED_MAX = 8


def read_generation(generation: Path) -> IndexData:
    """Open one generation, verified: checksums first (a damaged file is never parsed), then
    the counts the files must agree on; arrays are memory-mapped, chunks read lazily."""
    manifest = _read_manifest(generation)
    problems = file_problems(generation, manifest)
    if problems:
        raise IndexDamagedError(str(generation), problems)
    last = _OPENED.pop(generation.parent, None)
    if last is not None and last.where == str(generation):
        _OPENED[generation.parent] = last
        return last
    opened = {segment.name: segment for segment in last.segments} if last else {}
    try:
        segments = [opened.get(name) or Segment.read(generation / name) for name in manifest.segments]
        annotations = {c.chunk_id: c for c in _read_chunks(generation / ANNOTATIONS)}
    except (OSError, ValueError, RuntimeError) as exc:
        raise IndexDamagedError(str(generation), [f"{exc.__class__.__name__}: {exc}"]) from None
    data = IndexData(manifest, segments, annotations, manifest.deleted, where=str(generation))
    problems = data.content_problems()
    if problems:
        raise IndexDamagedError(str(generation), problems)
    if len(_OPENED) >= _OPENED_MAX:
        del _OPENED[next(iter(_OPENED))]
    _OPENED[generation.parent] = data
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


# Checksums this process has taken, by (device, inode): (size, mtime_ns, checksum). A segment's
# files are linked, never rewritten, into later generations, so opening the index again after an
# update hashes only the new segment. A file written in place gets a new mtime and is hashed
# again; damage that keeps size and mtime (bit rot) shows at the next process's first load.
_HASHED: dict[tuple[int, int], tuple[int, int, str]] = {}
_HASHED_MAX = 100_000


def file_checksum(path: Path) -> str:
    stat = path.stat()
    key, seen = (stat.st_dev, stat.st_ino), (stat.st_size, stat.st_mtime_ns)
    known = _HASHED.get(key)
    if known is not None and known[:2] == seen:
        return known[2]
    with path.open("rb") as handle:
        checksum = hashlib.file_digest(handle, xxhash.xxh3_128).hexdigest()
    if len(_HASHED) >= _HASHED_MAX:
        _HASHED.clear()
    _HASHED[key] = (*seen, checksum)
    return checksum


def file_record(path: Path) -> FileRecord:
    return FileRecord(size=path.stat().st_size, xxh3_128=file_checksum(path))


def file_records(generation: Path) -> dict[str, FileRecord]:
    return {
        path.relative_to(generation).as_posix(): file_record(path)
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


def _read_chunks(path: Path) -> list[Chunk]:
    """The chunks of a (small) JSON-lines file."""
    with path.open("rb") as handle:
        return [Chunk.model_validate_json(line) for line in handle if line.strip()]


@contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    index_dir.mkdir(parents=True, exist_ok=True)
    with (index_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_generation(
    index_dir: Path,
    manifest: GenerationManifest,
    kept: list[str],
    previous: Path | None,
    new: list[Segment],
    annotations: list[Chunk],
    discard: Path | None = None,
) -> Path:
    """Publish a generation made of the segments `kept` of the generation `previous` (hard
    links, checksums carried over) and the segments `new` (written here), then delete `discard`
    (a damaged generation, so that the sound one before it is the one kept beside the new); the
    caller holds `writer_lock`."""
    # Microseconds: two builds within one second must still sort newest first (generations()).
    name = f"gen-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
    staging = index_dir / f".tmp-{name}"
    staging.mkdir(parents=True)
    try:
        records: dict[str, FileRecord] = {}
        old_records = _read_manifest(previous).files if kept else {}
        for path, record in old_records.items():
            if path.split("/", 1)[0] in kept:
                (staging / path).parent.mkdir(parents=True, exist_ok=True)
                os.link(previous / path, staging / path)
                records[path] = record
        written = [path for segment in new for path in segment.write(staging / segment.name)]
        _write_text(staging / ANNOTATIONS, "".join(c.model_dump_json() + "\n" for c in annotations))
        written.append(staging / ANNOTATIONS)
        records.update((path.relative_to(staging).as_posix(), file_record(path)) for path in written)
        manifest = manifest.model_copy(update={"files": dict(sorted(records.items()))})
        _write_text(staging / MANIFEST, manifest.model_dump_json(indent=2))
        _fsync_tree(staging)
        staging.rename(index_dir / name)
        _write_text(index_dir / f".{POINTER}.tmp", name)
        os.replace(index_dir / f".{POINTER}.tmp", index_dir / POINTER)
        fsync_path(index_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if discard is not None:
        shutil.rmtree(discard, ignore_errors=True)
    _collect_garbage(index_dir, keep=name)
    return index_dir / name


def new_segment_name() -> str:
    return f"seg-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def _write_text(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(root: Path) -> None:
    """Flush what this build wrote; files hard-linked from an older generation (more than one
    link) were flushed when that generation was published."""
    for path in [root, *root.rglob("*")]:
        if path.is_dir() or path.stat().st_nlink == 1:
            fsync_path(path)


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename into it), to disk."""
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
    sound one before it) opened for one update; `apply` publishes the next generation.
    `verify`: check every chunk on opening (a whole-corpus sync costs that anyway), so that
    damage the checksums cannot see is recovered from too; otherwise chunks are checked as
    the update reads them."""

    def __init__(self, index_dir: Path, index_settings: IndexSettings, verify: bool = False):
        self.index_dir = index_dir
        self.index_settings = index_settings
        self.verify = verify
        self.problems: list[str] = []
        # A damaged current generation, deleted once its successor is published.
        self._damaged: Path | None = None
        # The generation `data` was read from: kept segments are linked from it.
        self._generation: Path | None = None
        self.data = self._open()

    def _read(self, generation: Path) -> IndexData:
        data = read_generation(generation)
        if self.verify:
            data.verify_all()
        return data

    def _open(self) -> IndexData | None:
        try:
            self._generation = current_generation(self.index_dir)
            if self._generation is None:
                read_index(self.index_dir)  # raises: missing, or a pointer to nothing
            return self._read(self._generation)
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
                data = self._read(generation)
            except (IndexDamagedError, IncompatibleIndexError):
                continue
            self.problems.append(f"{damage.summary}; rebuilt from the previous generation {generation.name}")
            self._generation = generation
            return data
        self.problems.append(f"{damage.summary}; no sound generation left, rebuilt from the documents given")
        return None

    @property
    def manifest(self) -> Manifest | None:
        return self.data.manifest if self.data else None

    @property
    def documents(self) -> Mapping[str, Document]:
        return self.data.documents if self.data else {}

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        return [self.data.row_chunk(row) for row in self.data.rows_of(doc_id)] if self.data else []

    def vectors_for(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        wanted, found = set(keys), {}
        for segment, live, offset in zip(self.data.segments, self.data.live, self.data.offsets) if self.data else ():
            for row, key in enumerate(segment.embedding_keys):
                if key in wanted and key not in found and live[row]:
                    found[key] = self.data.vector(int(offset) + row)
        return found

    def apply(self, changes: Changes) -> None:
        if changes.manifest is None:
            raise ValueError("an update must carry the manifest of the index after it")
        previous = None if changes.replace_all else self.data
        gone = set(changes.removed) | {rows.document.doc_id for rows in changes.upserted}
        segments = list(previous.segments) if previous else []
        deleted = {name: set(ids) for name, ids in previous.deleted.items()} if previous else {}
        for doc_id in gone:
            segment = previous.segment_of(doc_id) if previous else None
            if segment is not None:
                deleted.setdefault(segment.name, set()).add(doc_id)
        annotations = (
            {c: chunk for c, chunk in previous.annotations.items() if chunk.doc_id not in gone} if previous else {}
        )
        annotations.update((c.chunk_id, c) for c in changes.annotated)
        new: list[Segment] = []
        if changes.upserted:
            new.append(self._segment_of(changes))
        segments, merged = self._merged(segments + new, deleted, annotations)
        new = [s for s in new if s in segments] + merged
        names = [s.name for s in segments]
        manifest = GenerationManifest(
            **changes.manifest.model_dump(),
            format_version=FORMAT_VERSION,
            segments=names,
            deleted={name: sorted(deleted[name]) for name in names if deleted.get(name)},
        )
        kept = [s.name for s in segments if s not in new]
        write_generation(
            self.index_dir, manifest, kept, self._generation, new, list(annotations.values()), discard=self._damaged
        )
        self._damaged = None

    def _segment_of(self, changes: Changes) -> Segment:
        """One segment of the upserted documents, rows in (doc_id, start) order."""
        upserted = sorted(changes.upserted, key=lambda rows: rows.document.doc_id)
        rows = sorted(
            ((c, t, v, k) for u in upserted for c, t, v, k in zip(u.chunks, u.texts, u.vectors, u.embedding_keys)),
            key=lambda r: (r[0].doc_id, r[0].start),
        )
        vectors = np.array([r[2] for r in rows], dtype=np.float32).reshape(len(rows), changes.manifest.dimension)
        return Segment.build(
            name=new_segment_name(),
            documents=[u.document for u in upserted],
            chunks=[r[0] for r in rows],
            vectors=vectors,
            embedding_keys=[r[3] for r in rows],
            dense=build_dense_index(vectors, self.index_settings),
            lexical=build_lexical_index([r[1] for r in rows]),
        )

    def _merged(
        self, segments: list[Segment], deleted: dict[str, set[str]], annotations: dict[str, Chunk]
    ) -> tuple[list[Segment], list[Segment]]:
        """The segments after merging, if due, and the merged ones; merged rows take their
        annotations, so those leave `annotations`."""
        dead_rows = {s.name: s.rows_of(deleted.get(s.name, ())) for s in segments}
        rows = sum(len(s) for s in segments)
        if rows and sum(len(dead) for dead in dead_rows.values()) > MAX_DELETED_SHARE * rows:
            chosen = segments
        elif len(segments) > MAX_SEGMENTS:
            chosen = segments[1:]
        else:
            return segments, []
        # Rows in segment order: each document's rows stay together and in start order.
        live = [(s, np.setdiff1d(np.arange(len(s)), dead_rows[s.name])) for s in chosen]
        picked = [(s, i) for s, keep in live for i in keep.tolist()]
        dimension = chosen[0].vectors.shape[1]
        vectors = (
            np.concatenate([np.asarray(s.vectors)[keep] for s, keep in live])
            if picked
            else np.zeros((0, dimension), np.float32)
        )
        chunks = [s.chunk(i) for s, i in picked]
        merged = Segment.build(
            name=new_segment_name(),
            documents=[
                s.document(j) for s in chosen for j, d in enumerate(s.doc_ids) if d not in deleted.get(s.name, ())
            ],
            chunks=[annotations.pop(c.chunk_id, c) for c in chunks],
            vectors=vectors,
            embedding_keys=[s.embedding_keys[i] for s, i in picked],
            dense=build_dense_index(vectors, self.index_settings),
            lexical=merge_lexical_segments([(s.lexical, keep) for s, keep in live]),
        )
        for s in chosen:
            deleted.pop(s.name, None)
        first = segments.index(chosen[0])
        return [*segments[:first], merged], [merged]


@contextmanager
def open_writer(index_dir: Path, index_settings: IndexSettings, verify: bool = False) -> Iterator[FaissBm25Writer]:
    """The index in `index_dir` opened for one update, under the writer lock."""
    with writer_lock(index_dir):
        yield FaissBm25Writer(index_dir, index_settings, verify)


class FaissBm25Store:
    """The embedded `Store`: one loaded generation, searched with FAISS and BM25 over its
    segments, hybrid results fused by reciprocal rank fusion. Equal scores rank in (doc_id,
    start) order, so results do not depend on how updates split the rows into segments."""

    def __init__(self, data: IndexData, settings: RetrievalSettings, index_settings: IndexSettings):
        self.data = data
        self.settings = settings
        self.index_settings = index_settings
        # Deleted rows are skipped by FAISS through a bitmap, by BM25 through the mask.
        self._selectors = [None if live.all() else live_selector(live) for live in data.live]
        self._lexical_parts = [
            (s.lexical, None if live.all() else live, offset)
            for s, live, offset in zip(data.segments, data.live, data.offsets)
        ]

    @property
    def manifest(self) -> Manifest:
        return self.data.manifest

    @property
    def documents(self) -> Mapping[str, Document]:
        return self.data.documents

    def documents_for(self, doc_ids: Iterable[str]) -> dict[str, Document]:
        documents = self.data.documents
        return {doc_id: documents[doc_id] for doc_id in dict.fromkeys(doc_ids) if doc_id in documents}

    @property
    def chunk_total(self) -> int:
        return self.data.live_count

    @property
    def distinct_chunks(self) -> int:
        return self.data.manifest.canonical_chunks

    def chunk(self, chunk_id: str) -> Chunk:
        row = self.data.row_of(chunk_id)
        if row is None:
            raise KeyError(chunk_id)
        return self.data.row_chunk(row)

    def chunk_counts(self) -> dict[str, ChunkCounts]:
        data = self.data
        return {
            doc_id: ChunkCounts(len(data.rows_of(doc_id)), data.duplicate_count(doc_id)) for doc_id in data.documents
        }

    def _dense(self, vector: np.ndarray, depth: int, allowed: np.ndarray | None) -> tuple[list[int], dict[int, float]]:
        found: dict[int, float] = {}
        for segment, offset, selector in zip(self.data.segments, self.data.offsets, self._selectors):
            local = None
            if allowed is not None:
                local = allowed[(allowed >= offset) & (allowed < offset + len(segment))] - offset
                if len(local) == 0:
                    continue
            scores, rows = search_dense(
                segment.dense, vector, depth, self.index_settings, local, selector, segment.vectors
            )
            found.update(zip((rows + offset).tolist(), map(float, scores)))
        ordered = sorted(found, key=lambda r: (-found[r], self.data.order(r)))[:depth]
        return ordered, found

    def search(
        self, query: str, vector: np.ndarray | None, mode: SearchMode, depth: int, doc_ids: list[str] | None
    ) -> list[Candidate]:
        allowed = (
            np.array(sorted({r for d in doc_ids for r in self.data.rows_of(d)}), dtype=np.int64) if doc_ids else None
        )
        size = self.data.total_rows
        if not self.data.live_count or (allowed is not None and len(allowed) == 0):
            return []
        bm25 = bm25_scores(query, self._lexical_parts, size) if mode != "dense" else None
        if bm25 is not None and allowed is not None:
            mask = np.zeros(size, dtype=np.float32)
            mask[allowed] = 1.0
            bm25 = bm25 * mask
        rankings: list[tuple[list[int], float]] = []
        if mode != "bm25":
            dense_rows, dense_scores = self._dense(vector, depth, allowed)
            rankings.append((dense_rows, self.settings.dense_weight))
        if bm25 is not None:
            rankings.append((top_rows(bm25, depth, self.data.order), self.settings.bm25_weight))
        if mode == "hybrid":
            fused = rrf_fuse(rankings, self.settings.rrf_k)
            ordered = sorted(fused, key=lambda r: (-fused[r], self.data.order(r)))
            scores = fused
        elif mode == "dense":
            ordered = rankings[0][0]
            scores = dense_scores
        else:
            ordered = rankings[0][0]
            scores = {r: float(bm25[r]) for r in ordered}
        return [
            Candidate(
                chunk=self.data.row_chunk(row),
                score=float(scores[row]),
                dense_score=float(self.data.vector(row) @ vector) if vector is not None else None,
                bm25_score=float(bm25[row]) if bm25 is not None else None,
            )
            for row in ordered
        ]


def rrf_fuse(rankings: list[tuple[list[int], float]], rrf_k: int) -> dict[int, float]:
    """Reciprocal rank fusion: each ranking (rows best first, weight) adds weight / (rrf_k + rank)."""
    fused: dict[int, float] = {}
    for rows, weight in rankings:
        for rank, row in enumerate(list(rows), start=1):
            fused[row] = fused.get(row, 0.0) + weight / (rrf_k + rank)
    return fused


def top_rows(scores: np.ndarray, k: int, order: Callable[[int], object] | None = None) -> list[int]:
    """Rows of the k highest positive scores, best first; equal scores by `order` (row order
    when None), ties at the cut included before cutting, so the choice among them is `order`'s too."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > k:
        kth = np.partition(-scores[positive], k - 1)[k - 1]
        positive = positive[-scores[positive] <= kth]
    rows = positive.tolist()
    rows.sort(key=(lambda r: (-scores[r], order(r))) if order else (lambda r: (-scores[r], r)))
    return rows[:k]
