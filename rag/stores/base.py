"""What the rest of the library needs of an index, whatever holds it: the `Store` protocol.

Retrieval, answering, checking and the front ends read through it; the ingest pipeline
writes through the store's own module. `rag.stores.faiss_bm25` (FAISS + bm25s files on
one disk, atomic generations) is the embedded implementation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rag.config import SearchMode
from rag.schema import Chunk, Document


@dataclass(frozen=True)
class Candidate:
    """A chunk a search found: `score` ranks it in the mode searched (fused RRF, cosine or
    BM25); the other two say how each half of the search saw it (None: not searched)."""

    chunk: Chunk
    score: float
    dense_score: float | None
    bm25_score: float | None


@dataclass(frozen=True)
class ChunkCounts:
    """A document's passages, and how many of them are near-copies of another passage."""

    chunks: int
    duplicates: int


class Store(Protocol):
    """An index of documents and their chunks, searchable densely, lexically and both."""

    @property
    def documents(self) -> Mapping[str, Document]:
        """Every indexed document by doc id, with its full text (citations are checked against it)."""
        ...

    @property
    def chunk_total(self) -> int:
        """Chunks in the index, near-copies included."""
        ...

    @property
    def distinct_chunks(self) -> int:
        """Chunks that are no near-copy of an earlier one."""
        ...

    def chunk(self, chunk_id: str) -> Chunk:
        """One chunk by id (KeyError when absent)."""
        ...

    def chunk_counts(self) -> dict[str, ChunkCounts]:
        """Per doc id: its chunks and near-copies."""
        ...

    def search(
        self, query: str, vector: np.ndarray | None, mode: SearchMode, depth: int, doc_ids: list[str] | None
    ) -> list[Candidate]:
        """Up to `depth` candidates, best first, from the documents `doc_ids` (None: all).
        `vector` is the query's embedding (None only in bm25 mode)."""
        ...
