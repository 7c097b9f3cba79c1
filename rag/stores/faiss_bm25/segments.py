"""Segments of the embedded index, and one generation's live view over them, read lazily.

A segment holds the rows one update (or one merge) wrote: its documents and chunks as JSON
lines, their vectors, FAISS and BM25. Opening a generation reads only what search needs for
every row: per-row columns (document, offsets, near-copy flag) in a numpy array and the doc
ids. Chunks and documents stay in their memory-mapped JSON-lines files and are parsed when a
search, a citation check or an update asks for them, so a restart costs what the ids and
arrays cost, not a parse of every passage.

A chunk is checked when it is parsed: its record must agree with the row columns, its offsets
must reproduce its text in its document, and the chunk it copies must exist. Damage that the
file checksums cannot see (files rewritten with matching checksums) then stops the search
that would have shown the passage, with a one-line error; `IndexData.verify_all` checks every
chunk at once (`rag doctor`)."""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import NoReturn

import faiss
import numpy as np
from pydantic import BaseModel

from rag.errors import IndexDamagedError
from rag.schema import Chunk, Document
from rag.stores.base import Manifest
from rag.stores.faiss_bm25.dense import load_dense_index, save_dense_index
from rag.stores.faiss_bm25.lexical import LexicalSegment, lexical_size, load_lexical_index, save_lexical_index

DOCUMENTS = "documents.jsonl"
CHUNKS = "chunks.jsonl"
ROWS = "rows.npy"
DOC_IDS = "doc_ids.json"
DOC_LINES = "documents.lines.npy"
EMBEDDING_KEYS = "embedding_keys.json"
VECTORS = "vectors.npy"
DENSE = "dense.faiss"
LEXICAL = "bm25"
# One row per chunk: its document (index into the segment's doc ids), offsets, where its JSON
# line starts in chunks.jsonl, and whether it is a near-copy (duplicate_of set when written).
ROW_DTYPE = np.dtype([("doc", "<i4"), ("start", "<i8"), ("end", "<i8"), ("line", "<i8"), ("duplicate", "?")])


class JsonLines:
    """Records of a JSON-lines buffer (bytes, or a file mapped into memory), one parsed at a
    time: record i spans buffer[starts[i]:starts[i + 1]], the last one up to the end."""

    def __init__(self, buffer: bytes | mmap.mmap, starts: np.ndarray):
        self.buffer = buffer
        self.starts = starts

    @classmethod
    def of(cls, records: Iterable[BaseModel]) -> JsonLines:
        lines = [record.model_dump_json().encode() + b"\n" for record in records]
        starts = np.zeros(len(lines), dtype=np.int64)
        if lines:
            np.cumsum([len(line) for line in lines[:-1]], out=starts[1:])
        return cls(b"".join(lines), starts)

    @classmethod
    def read(cls, path: Path, starts: np.ndarray) -> JsonLines:
        with path.open("rb") as handle:
            size = path.stat().st_size
            return cls(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b"", starts)

    def __len__(self) -> int:
        return len(self.starts)

    def record(self, i: int) -> bytes:
        end = int(self.starts[i + 1]) if i + 1 < len(self.starts) else len(self.buffer)
        return self.buffer[int(self.starts[i]) : end]


@dataclass(eq=False)
class Segment:
    """Rows written by one update (or one merge), in (doc_id, start) order within each
    document, documents in `doc_ids` order: chunk i is row i of rows, vectors, FAISS and BM25."""

    name: str
    doc_ids: list[str]
    rows: np.ndarray
    documents_json: JsonLines
    chunks_json: JsonLines
    vectors: np.ndarray
    embedding_keys: list[str]
    dense: faiss.Index
    lexical: LexicalSegment

    @classmethod
    def build(
        cls,
        name: str,
        documents: list[Document],
        chunks: list[Chunk],
        vectors: np.ndarray,
        embedding_keys: list[str],
        dense: faiss.Index,
        lexical: LexicalSegment,
    ) -> Segment:
        """A segment in memory, ready to write; `chunks` grouped by document in `documents` order."""
        position = {doc.doc_id: i for i, doc in enumerate(documents)}
        chunks_json = JsonLines.of(chunks)
        rows = np.zeros(len(chunks), dtype=ROW_DTYPE)
        rows["doc"] = [position[c.doc_id] for c in chunks]
        rows["start"] = [c.start for c in chunks]
        rows["end"] = [c.end for c in chunks]
        rows["line"] = chunks_json.starts
        rows["duplicate"] = [c.duplicate_of is not None for c in chunks]
        chunks_json.starts = rows["line"]
        return cls(
            name=name,
            doc_ids=list(position),
            rows=rows,
            documents_json=JsonLines.of(documents),
            chunks_json=chunks_json,
            vectors=vectors,
            embedding_keys=embedding_keys,
            dense=dense,
            lexical=lexical,
        )

    @classmethod
    def read(cls, folder: Path) -> Segment:
        """A written segment: its arrays memory-mapped (paged in as searches touch them)."""
        rows = np.load(folder / ROWS, mmap_mode="r")
        if rows.dtype != ROW_DTYPE:
            raise ValueError(f"{ROWS} holds {rows.dtype}, not rows")
        return cls(
            name=folder.name,
            doc_ids=json.loads((folder / DOC_IDS).read_text(encoding="utf-8")),
            rows=rows,
            documents_json=JsonLines.read(folder / DOCUMENTS, np.load(folder / DOC_LINES)),
            chunks_json=JsonLines.read(folder / CHUNKS, rows["line"]),
            vectors=np.load(folder / VECTORS, mmap_mode="r"),
            embedding_keys=json.loads((folder / EMBEDDING_KEYS).read_text(encoding="utf-8")),
            dense=load_dense_index(folder / DENSE),
            lexical=load_lexical_index(folder / LEXICAL),
        )

    def write(self, folder: Path) -> list[Path]:
        """Write every file into `folder` (new); the files written."""
        folder.mkdir(parents=True)
        (folder / DOCUMENTS).write_bytes(bytes(self.documents_json.buffer))
        (folder / CHUNKS).write_bytes(bytes(self.chunks_json.buffer))
        np.save(folder / ROWS, np.asarray(self.rows))
        np.save(folder / DOC_LINES, np.asarray(self.documents_json.starts))
        (folder / DOC_IDS).write_text(json.dumps(self.doc_ids), encoding="utf-8")
        (folder / EMBEDDING_KEYS).write_text(json.dumps(self.embedding_keys), encoding="utf-8")
        with (folder / VECTORS).open("wb") as handle:
            np.save(handle, np.asarray(self.vectors))
        save_dense_index(self.dense, folder / DENSE)
        save_lexical_index(self.lexical, folder / LEXICAL)
        return [path for path in folder.rglob("*") if path.is_file()]

    def __len__(self) -> int:
        return len(self.rows)

    def chunk(self, row: int) -> Chunk:
        return Chunk.model_validate_json(self.chunks_json.record(row))

    def document(self, position: int) -> Document:
        return Document.model_validate_json(self.documents_json.record(position))

    @cached_property
    def doc_first(self) -> np.ndarray:
        """Row ranges by document: the rows of document j are doc_first[j]:doc_first[j + 1]."""
        return np.searchsorted(np.asarray(self.rows["doc"]), np.arange(len(self.doc_ids) + 1)).astype(np.int64)

    @cached_property
    def doc_position(self) -> dict[str, int]:
        return dict(zip(self.doc_ids, range(len(self.doc_ids))))

    def rows_of(self, doc_ids: Iterable[str]) -> np.ndarray:
        """The rows of these documents (those in this segment)."""
        first = self.doc_first
        positions = [self.doc_position[d] for d in doc_ids if d in self.doc_position]
        ranges = [np.arange(first[j], first[j + 1]) for j in positions]
        return np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)

    def row_counts(self) -> dict[str, int]:
        """What must all equal the number of the segment's chunks: one row per chunk in every search structure."""
        return {
            "chunks": len(self.rows),
            "vectors": int(self.vectors.shape[0]),
            "embedding keys": len(self.embedding_keys),
            "FAISS": int(self.dense.ntotal),
            "BM25": lexical_size(self.lexical),
        }


class IndexData:
    """One generation loaded: its segments, and the live view over them (deleted documents'
    rows skipped, later near-copy annotations applied). Global row = segment offset + row."""

    def __init__(
        self,
        manifest: Manifest,
        segments: list[Segment],
        annotations: dict[str, Chunk],
        deleted: Mapping[str, Iterable[str]],
        where: str = "index",
    ):
        self.manifest = manifest
        self.segments = segments
        self.annotations = annotations
        self.deleted = {name: set(ids) for name, ids in deleted.items()}
        self.where = where
        self.offsets = np.cumsum([0] + [len(s) for s in segments[:-1]]).astype(np.int64) if segments else np.zeros(0)
        self.total_rows = sum(len(s) for s in segments)
        # Per segment: which of its documents, and so which of its rows, are live.
        self.live_docs: list[np.ndarray] = []
        self.live: list[np.ndarray] = []
        for segment in segments:
            dead = self.deleted.get(segment.name, set())
            doc_live = np.ones(len(segment.doc_ids), dtype=bool)
            if dead:
                doc_live[[segment.doc_position[d] for d in dead if d in segment.doc_position]] = False
            self.live_docs.append(doc_live)
            self.live.append(doc_live[np.asarray(segment.rows["doc"])] if len(segment) else np.zeros(0, dtype=bool))
        self.live_count = int(sum(int(live.sum()) for live in self.live))
        self.live_doc_count = int(sum(int(doc_live.sum()) for doc_live in self.live_docs))
        self.documents = _Documents(self)
        self._document = lru_cache(maxsize=256)(self._read_document)
        self._chunk = lru_cache(maxsize=4096)(self._read_chunk)
        # Near-copy counts that annotations changed, by document.
        self._duplicate_changes: dict[str, int] = {}
        for chunk in annotations.values():
            row = self.row_of(chunk.chunk_id)
            if row is not None:
                segment, local = self.locate(row)
                change = int(chunk.duplicate_of is not None) - int(segment.rows["duplicate"][local])
                self._duplicate_changes[chunk.doc_id] = self._duplicate_changes.get(chunk.doc_id, 0) + change

    def _locate(self, doc_id: str) -> tuple[int, int] | None:
        """(segment, position in it) of a live document, newest segment first. Each segment
        keeps its own doc id index, so a new generation, which shares its unchanged segments
        with the one before, indexes only its new segment."""
        for index in reversed(range(len(self.segments))):
            position = self.segments[index].doc_position.get(doc_id)
            if position is not None and self.live_docs[index][position]:
                return index, position
        return None

    def _live_doc_ids(self) -> Iterator[str]:
        for segment, doc_live in zip(self.segments, self.live_docs):
            for position in np.flatnonzero(doc_live).tolist():
                yield segment.doc_ids[position]

    def segment_of(self, doc_id: str) -> Segment | None:
        """The segment holding a live document."""
        located = self._locate(doc_id)
        return self.segments[located[0]] if located else None

    def rows_of(self, doc_id: str) -> range:
        """Global rows of a live document's chunks, in start order (empty when it has none)."""
        located = self._locate(doc_id)
        if located is None:
            return range(0)
        index, position = located
        first, offset = self.segments[index].doc_first, int(self.offsets[index])
        return range(offset + int(first[position]), offset + int(first[position + 1]))

    def duplicate_count(self, doc_id: str) -> int:
        """How many of a document's chunks are near-copies of another."""
        rows = self.rows_of(doc_id)
        if not rows:
            return 0
        segment, local = self.locate(rows.start)
        return int(segment.rows["duplicate"][local : local + len(rows)].sum()) + self._duplicate_changes.get(doc_id, 0)

    def locate(self, row: int) -> tuple[Segment, int]:
        """The segment of a global row, and the row within it."""
        index, local = self._split(row)
        return self.segments[index], local

    def _split(self, row: int) -> tuple[int, int]:
        """The index of a global row's segment, and the row within it."""
        index = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return index, row - int(self.offsets[index])

    def order(self, row: int) -> tuple[str, int]:
        """(doc_id, start) of a row: how equal scores are ranked."""
        segment, local = self.locate(row)
        return segment.doc_ids[int(segment.rows["doc"][local])], int(segment.rows["start"][local])

    def vector(self, row: int) -> np.ndarray:
        segment, local = self.locate(row)
        return np.asarray(segment.vectors[local])

    def embedding_key(self, row: int) -> str:
        segment, local = self.locate(row)
        return segment.embedding_keys[local]

    def row_of(self, chunk_id: str) -> int | None:
        """The global row of a live chunk, found from its id ("doc_id:start-end")."""
        doc_id, _, span = chunk_id.rpartition(":")
        start, _, end = span.partition("-")
        rows = self.rows_of(doc_id)
        if not rows or not (start.isdigit() and end.isdigit()):
            return None
        segment, local = self.locate(rows.start)
        columns = segment.rows[local : local + len(rows)]
        found = int(np.searchsorted(columns["start"], int(start)))
        if found < len(columns) and columns["start"][found] == int(start) and columns["end"][found] == int(end):
            return rows.start + found
        return None

    def row_chunk(self, row: int) -> Chunk:
        """The chunk of a global row, checked (module docstring)."""
        return self._chunk(*self._split(row))

    def _read_chunk(self, index: int, local: int) -> Chunk:
        segment = self.segments[index]
        where = f"{segment.name}/{CHUNKS}"
        try:
            chunk = segment.chunk(local)
        except ValueError:
            self._damaged(f"{where}: the record of row {local} is unreadable")
        chunk = self.annotations.get(chunk.chunk_id, chunk)
        columns = segment.rows[local]
        position = int(columns["doc"])
        doc_id = segment.doc_ids[position]
        if (chunk.doc_id, chunk.start, chunk.end) != (doc_id, int(columns["start"]), int(columns["end"])):
            self._damaged(
                f"{where}: offsets of chunk {chunk.chunk_id} do not reproduce their text (nor agree with {ROWS})"
            )
        if self._document(index, position).text[chunk.start : chunk.end] != chunk.text:
            self._damaged(f"{where}: chunk {chunk.chunk_id}: offsets do not reproduce their text")
        if chunk.duplicate_of is not None and self.row_of(chunk.duplicate_of) is None:
            self._damaged(f"{where}: chunk {chunk.chunk_id} copies a chunk that is not in the index")
        return chunk

    def _read_document(self, index: int, position: int) -> Document:
        segment = self.segments[index]
        try:
            document = segment.document(position)
        except ValueError:
            self._damaged(f"{segment.name}/{DOCUMENTS}: the record of document {position} is unreadable")
        if document.doc_id != segment.doc_ids[position]:
            self._damaged(f"{segment.name}/{DOCUMENTS}: document {position} is not {segment.doc_ids[position]}")
        return document

    def _damaged(self, problem: str) -> NoReturn:
        raise IndexDamagedError(self.where, [problem])

    @property
    def doc_ids(self) -> list[str]:
        """Live documents, sorted."""
        return sorted(self._live_doc_ids())

    @property
    def chunks(self) -> list[Chunk]:
        """Live chunks, in (doc_id, start) order (every one parsed: for tests and tools)."""
        return [self.row_chunk(row) for doc_id in self.doc_ids for row in self.rows_of(doc_id)]

    def verify_all(self) -> None:
        """Check every live chunk and document now, instead of when they are first read."""
        for doc_id in self.doc_ids:
            self.documents[doc_id]
            for row in self.rows_of(doc_id):
                self.row_chunk(row)

    def content_problems(self) -> list[str]:
        """Counts, dimensions and row columns that disagree, one line each (what can be checked
        without parsing the chunks)."""
        problems = []
        for segment in self.segments:
            counts = segment.row_counts()
            if len(set(counts.values())) > 1:
                problems.append(
                    f"row counts differ in {segment.name}: " + ", ".join(f"{name} {n}" for name, n in counts.items())
                )
            if len(segment.documents_json) != len(segment.doc_ids):
                problems.append(
                    f"{segment.name}: {len(segment.doc_ids)} doc ids for {len(segment.documents_json)} documents"
                )
            docs = np.asarray(segment.rows["doc"])
            if len(docs) and (docs.min() < 0 or docs.max() >= len(segment.doc_ids) or (np.diff(docs) < 0).any()):
                problems.append(f"{segment.name}/{ROWS}: rows point outside their documents or out of order")
            dimensions = {self.manifest.dimension, int(segment.dense.d), int(segment.vectors.shape[-1])}
            if len(dimensions) > 1:
                problems.append(
                    f"vector dimensions differ in {segment.name}: manifest {self.manifest.dimension}, "
                    f"FAISS {segment.dense.d}, vectors {segment.vectors.shape[-1]}"
                )
        if self.live_count != self.manifest.chunks:
            problems.append(
                f"row counts differ: {self.live_count} live chunks, the manifest says {self.manifest.chunks}"
            )
        if self.live_doc_count != self.manifest.documents:
            problems.append(f"{self.live_doc_count} documents, the manifest says {self.manifest.documents}")
        return problems


class _Documents(Mapping[str, Document]):
    """The live documents by doc id, each parsed when first asked for."""

    def __init__(self, data: IndexData):
        self._data = data

    def __getitem__(self, doc_id: str) -> Document:
        located = self._data._locate(doc_id) if isinstance(doc_id, str) else None
        if located is None:
            raise KeyError(doc_id)
        return self._data._document(*located)

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and self._data._locate(doc_id) is not None

    def __iter__(self) -> Iterator[str]:
        return self._data._live_doc_ids()

    def __len__(self) -> int:
        return self._data.live_doc_count
