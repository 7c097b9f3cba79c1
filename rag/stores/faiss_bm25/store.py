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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import xxhash
from pydantic import BaseModel, Field, TypeAdapter

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
from rag.stores.faiss_bm25.dense import (
    build_dense_index,
    live_selector,
    load_dense_index,
    save_dense_index,
    search_dense,
)
from rag.stores.faiss_bm25.lexical import (
    LexicalSegment,
    bm25_scores,
    build_lexical_index,
    lexical_size,
    load_lexical_index,
    merge_lexical_segments,
    save_lexical_index,
)

# 2: file checksums in the manifest; every chunk in FAISS and BM25 (near-duplicates collapse in results).
# 3: segments, deleted documents and annotation overrides (incremental updates).
FORMAT_VERSION = 3
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


@dataclass(eq=False)
class Segment:
    """Rows written by one update (or one merge), in (doc_id, start) order: chunk i is row i
    of vectors, FAISS and BM25."""

    name: str
    documents: dict[str, Document]
    chunks: list[Chunk]
    vectors: np.ndarray
    embedding_keys: list[str]
    dense: faiss.Index
    lexical: LexicalSegment


class IndexData:
    """One generation loaded: its segments, and the live view over them (deleted documents'
    rows skipped, later near-copy annotations applied). Global row = segment offset + row."""

    def __init__(self, manifest: GenerationManifest, segments: list[Segment], annotations: dict[str, Chunk]):
        self.manifest = manifest
        self.segments = segments
        self.annotations = annotations
        self.offsets: list[int] = []
        self.live: list[np.ndarray] = []
        self.row_chunks: list[Chunk] = []
        self.documents: dict[str, Document] = {}
        self.doc_rows: dict[str, list[int]] = {}
        for segment in segments:
            dead = set(manifest.deleted.get(segment.name, ()))
            self.offsets.append(len(self.row_chunks))
            self.live.append(np.array([c.doc_id not in dead for c in segment.chunks], dtype=bool))
            self.documents.update((d, doc) for d, doc in segment.documents.items() if d not in dead)
            for chunk in segment.chunks:
                if chunk.doc_id not in dead:
                    self.doc_rows.setdefault(chunk.doc_id, []).append(len(self.row_chunks))
                self.row_chunks.append(annotations.get(chunk.chunk_id, chunk))
        self.total_rows = len(self.row_chunks)

    @property
    def live_rows(self) -> list[int]:
        return [row for rows in self.doc_rows.values() for row in rows]

    @property
    def embedding_keys(self) -> list[str]:
        """Embedding keys of the live rows."""
        return [self.embedding_key(row) for row in self.live_rows]

    @property
    def chunks(self) -> list[Chunk]:
        """Live chunks, in (doc_id, start) order."""
        return [self.row_chunks[row] for doc_id in sorted(self.doc_rows) for row in self.doc_rows[doc_id]]

    def locate(self, row: int) -> tuple[Segment, int]:
        """The segment of a global row, and the row within it."""
        index = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.segments[index], row - self.offsets[index]

    def vector(self, row: int) -> np.ndarray:
        segment, local = self.locate(row)
        return segment.vectors[local]

    def embedding_key(self, row: int) -> str:
        segment, local = self.locate(row)
        return segment.embedding_keys[local]


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


def read_generation(generation: Path, mmap: bool = False) -> IndexData:
    """Load one generation, verified: checksums first (a damaged file is never parsed), then
    the counts and offsets the files must agree on. `mmap`: large arrays stay on disk."""
    manifest = _read_manifest(generation)
    problems = file_problems(generation, manifest)
    if problems:
        raise IndexDamagedError(str(generation), problems)
    try:
        segments = [_read_segment(generation / name, mmap) for name in manifest.segments]
        annotations = {c.chunk_id: c for c in _parse_lines(CHUNK_LIST, generation / ANNOTATIONS)}
    except (OSError, ValueError, RuntimeError) as exc:
        raise IndexDamagedError(str(generation), [f"{exc.__class__.__name__}: {exc}"]) from None
    data = IndexData(manifest, segments, annotations)
    problems = content_problems(data)
    if problems:
        raise IndexDamagedError(str(generation), problems)
    return data


def _read_segment(folder: Path, mmap: bool) -> Segment:
    return Segment(
        name=folder.name,
        documents={d.doc_id: d for d in _parse_lines(DOCUMENT_LIST, folder / "documents.jsonl")},
        chunks=_parse_lines(CHUNK_LIST, folder / "chunks.jsonl"),
        vectors=np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None),
        embedding_keys=json.loads((folder / "embedding_keys.json").read_text()),
        dense=load_dense_index(folder / "dense.faiss", mmap),
        lexical=load_lexical_index(folder / "bm25", mmap),
    )


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


def row_counts(segment: Segment) -> dict[str, int]:
    """What must all equal the number of a segment's chunks: one row per chunk in every search structure."""
    return {
        "chunks": len(segment.chunks),
        "vectors": int(segment.vectors.shape[0]),
        "embedding keys": len(segment.embedding_keys),
        "FAISS": int(segment.dense.ntotal),
        "BM25": lexical_size(segment.lexical),
    }


def content_problems(data: IndexData) -> list[str]:
    """Counts, dimensions and offsets that disagree, one line each."""
    problems = []
    for segment in data.segments:
        counts = row_counts(segment)
        if len(set(counts.values())) > 1:
            problems.append(
                f"row counts differ in {segment.name}: " + ", ".join(f"{name} {n}" for name, n in counts.items())
            )
        dimensions = {data.manifest.dimension, int(segment.dense.d), int(segment.vectors.shape[-1])}
        if len(dimensions) > 1:
            problems.append(
                f"vector dimensions differ in {segment.name}: manifest {data.manifest.dimension}, "
                f"FAISS {segment.dense.d}, vectors {segment.vectors.shape[-1]}"
            )
    chunks = [data.row_chunks[row] for row in data.live_rows]
    if len(chunks) != data.manifest.chunks:
        problems.append(f"row counts differ: {len(chunks)} live chunks, the manifest says {data.manifest.chunks}")
    if len(data.documents) != data.manifest.documents:
        problems.append(f"{len(data.documents)} documents, the manifest says {data.manifest.documents}")
    ids = {c.chunk_id for c in chunks}
    shifted = [
        c.chunk_id
        for c in chunks
        if c.doc_id not in data.documents or data.documents[c.doc_id].text[c.start : c.end] != c.text
    ]
    if shifted:
        problems.append(f"{len(shifted)} chunk(s) whose offsets do not reproduce their text (first: {shifted[0]})")
    dangling = [c.chunk_id for c in chunks if c.duplicate_of is not None and c.duplicate_of not in ids]
    if dangling:
        problems.append(f"{len(dangling)} chunk(s) copying a chunk that is not in the index (first: {dangling[0]})")
    return problems


# One validation call per file, not per line: a third of the time of loading a segment.
CHUNK_LIST = TypeAdapter(list[Chunk])
DOCUMENT_LIST = TypeAdapter(list[Document])


def _parse_lines(adapter: TypeAdapter, path: Path) -> list:
    """The records of a JSON-lines file."""
    return adapter.validate_json("[" + ",".join(line.rstrip("\n") for line in _read_lines(path)) + "]")


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
        for segment in new:
            _write_segment(staging / segment.name, segment)
        _write_text(staging / ANNOTATIONS, "".join(c.model_dump_json() + "\n" for c in annotations))
        written = [
            staging / ANNOTATIONS,
            *(p for segment in new for p in (staging / segment.name).rglob("*") if p.is_file()),
        ]
        records.update((path.relative_to(staging).as_posix(), file_record(path)) for path in written)
        manifest = manifest.model_copy(update={"files": dict(sorted(records.items()))})
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


def _write_segment(folder: Path, segment: Segment) -> None:
    folder.mkdir(parents=True)
    _write_text(folder / "documents.jsonl", "".join(d.model_dump_json() + "\n" for d in segment.documents.values()))
    _write_text(folder / "chunks.jsonl", "".join(c.model_dump_json() + "\n" for c in segment.chunks))
    _write_text(folder / "embedding_keys.json", json.dumps(segment.embedding_keys))
    with (folder / "vectors.npy").open("wb") as handle:
        np.save(handle, segment.vectors)
    save_dense_index(segment.dense, folder / "dense.faiss")
    save_lexical_index(segment.lexical, folder / "bm25")


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
        # The generation `data` was read from: kept segments are linked from it.
        self._generation: Path | None = None
        self.data = self._open()
        self._row_of_key = {
            key: offset + row
            for segment, live, offset in (
                zip(self.data.segments, self.data.live, self.data.offsets) if self.data else ()
            )
            for row, key in enumerate(segment.embedding_keys)
            if live[row]
        }

    def _open(self) -> IndexData | None:
        try:
            self._generation = current_generation(self.index_dir)
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
            self._generation = generation
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
        return [self.data.row_chunks[row] for row in self.data.doc_rows.get(doc_id, [])] if self.data else []

    def vectors_for(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        return {key: self.data.vector(self._row_of_key[key]) for key in keys if key in self._row_of_key}

    def apply(self, changes: Changes) -> None:
        if changes.manifest is None:
            raise ValueError("an update must carry the manifest of the index after it")
        previous = None if changes.replace_all else self.data
        gone = set(changes.removed) | {rows.document.doc_id for rows in changes.upserted}
        segments = list(previous.segments) if previous else []
        deleted = {name: set(ids) for name, ids in previous.manifest.deleted.items()} if previous else {}
        for segment in segments:
            deleted.setdefault(segment.name, set()).update(gone & set(segment.documents))
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
        return Segment(
            name=new_segment_name(),
            documents={u.document.doc_id: u.document for u in upserted},
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
        rows = sum(len(s.chunks) for s in segments)
        dead = sum(sum(c.doc_id in deleted.get(s.name, ()) for c in s.chunks) for s in segments)
        if rows and dead > MAX_DELETED_SHARE * rows:
            chosen = segments
        elif len(segments) > MAX_SEGMENTS:
            chosen = segments[1:]
        else:
            return segments, []
        # Rows in segment order: each document's rows stay together and in start order.
        live = [
            (
                s,
                np.array(
                    [i for i, c in enumerate(s.chunks) if c.doc_id not in deleted.get(s.name, ())], dtype=np.int64
                ),
            )
            for s in chosen
        ]
        picked = [(s, i) for s, keep in live for i in keep.tolist()]
        dimension = chosen[0].vectors.shape[1]
        vectors = (
            np.concatenate([np.asarray(s.vectors)[keep] for s, keep in live])
            if picked
            else np.zeros((0, dimension), np.float32)
        )
        merged = Segment(
            name=new_segment_name(),
            documents={d: doc for s in chosen for d, doc in s.documents.items() if d not in deleted.get(s.name, ())},
            chunks=[annotations.pop(s.chunks[i].chunk_id, s.chunks[i]) for s, i in picked],
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
def open_writer(index_dir: Path, index_settings: IndexSettings) -> Iterator[FaissBm25Writer]:
    """The index in `index_dir` opened for one update, under the writer lock."""
    with writer_lock(index_dir):
        yield FaissBm25Writer(index_dir, index_settings)


class FaissBm25Store:
    """The embedded `Store`: one loaded generation, searched with FAISS and BM25 over its
    segments, hybrid results fused by reciprocal rank fusion. Equal scores rank in (doc_id,
    start) order, so results do not depend on how updates split the rows into segments."""

    def __init__(self, data: IndexData, settings: RetrievalSettings, index_settings: IndexSettings):
        self.data = data
        self.settings = settings
        self.index_settings = index_settings
        self._row_of = {data.row_chunks[row].chunk_id: row for row in data.live_rows}
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
    def documents(self) -> dict[str, Document]:
        return self.data.documents

    @property
    def chunk_total(self) -> int:
        return len(self._row_of)

    @property
    def distinct_chunks(self) -> int:
        return self.data.manifest.canonical_chunks

    def chunk(self, chunk_id: str) -> Chunk:
        return self.data.row_chunks[self._row_of[chunk_id]]

    def chunk_counts(self) -> dict[str, ChunkCounts]:
        chunks = self.data.row_chunks
        return {
            doc_id: ChunkCounts(len(rows), sum(chunks[r].duplicate_of is not None for r in rows))
            for doc_id, rows in ((d, self.data.doc_rows.get(d, [])) for d in self.data.documents)
        }

    def _order(self, row: int) -> tuple[str, int]:
        chunk = self.data.row_chunks[row]
        return chunk.doc_id, chunk.start

    def _dense(self, vector: np.ndarray, depth: int, allowed: np.ndarray | None) -> tuple[list[int], dict[int, float]]:
        found: dict[int, float] = {}
        for segment, offset, selector in zip(self.data.segments, self.data.offsets, self._selectors):
            local = None
            if allowed is not None:
                local = allowed[(allowed >= offset) & (allowed < offset + len(segment.chunks))] - offset
                if len(local) == 0:
                    continue
            scores, rows = search_dense(
                segment.dense, vector, depth, self.index_settings, local, selector, segment.vectors
            )
            found.update(zip((rows + offset).tolist(), map(float, scores)))
        ordered = sorted(found, key=lambda r: (-found[r], self._order(r)))[:depth]
        return ordered, found

    def search(
        self, query: str, vector: np.ndarray | None, mode: SearchMode, depth: int, doc_ids: list[str] | None
    ) -> list[Candidate]:
        allowed = (
            np.array(sorted({r for d in doc_ids for r in self.data.doc_rows.get(d, [])}), dtype=np.int64)
            if doc_ids
            else None
        )
        size = self.data.total_rows
        if not self._row_of or (allowed is not None and len(allowed) == 0):
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
            rankings.append((top_rows(bm25, depth, self._order), self.settings.bm25_weight))
        if mode == "hybrid":
            fused = rrf_fuse(rankings, self.settings.rrf_k)
            ordered = sorted(fused, key=lambda r: (-fused[r], self._order(r)))
            scores = fused
        elif mode == "dense":
            ordered = rankings[0][0]
            scores = dense_scores
        else:
            ordered = rankings[0][0]
            scores = {r: float(bm25[r]) for r in ordered}
        return [
            Candidate(
                chunk=self.data.row_chunks[row],
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
