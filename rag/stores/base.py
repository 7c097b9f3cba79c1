"""What the library needs of an index, whatever holds it.

Read side, the `Store` protocol: retrieval, answering, checking and the front ends search
through it. Write side, the `StoreWriter` protocol: the ingest pipeline computes what an
update changes, per document, as a `Changes` value and hands it to `StoreWriter.apply`, which
applies it all or nothing; a store never cleans, chunks, deduplicates or embeds. Both sides
share the `Manifest`: how the index was built, so that an index the present settings would
build otherwise is refused. `rag.stores.faiss_bm25` (FAISS + bm25s files on one disk, atomic
generations) is the embedded implementation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

import numpy as np
from pydantic import BaseModel

from rag.config import ChunkingSettings, CleaningSettings, SearchMode, Settings
from rag.schema import Chunk, Document
from rag.text.words import search_text


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

    def documents_for(self, doc_ids: Iterable[str]) -> dict[str, Document]:
        """The documents among `doc_ids` that are indexed, read at once (a search's hits)."""
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


# --------------------------------------------------------------------------- the write side


class Manifest(BaseModel):
    """How an index was built; the pipeline makes it, a store keeps it with the data."""

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
    canonical_chunks: int  # distinct passages: chunks that are no near-duplicate of an earlier one
    versions: dict[str, str]


def package_versions() -> dict[str, str]:
    """Versions of the packages whose output an index holds."""
    out = {}
    for name in ("cited-rag", "sentence-transformers", "faiss-cpu", "bm25s", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def new_manifest_time() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


def embedding_text(chunk: Chunk, doc: Document, include_title: bool) -> str:
    """What gets embedded and BM25-indexed for a chunk: its text, headed by the document
    title when the chunk does not already contain it."""
    title = doc.title
    text = search_text(chunk.text) if doc.format == "pdf" else chunk.text
    if include_title and title and title not in chunk.text:
        return f"{title}\n{text}"
    return text


@dataclass(frozen=True)
class DocumentRows:
    """A document as it must be stored, with every one of its chunks (in start order).

    `texts[i]` is what is indexed lexically for `chunks[i]` (`rag.ingest.pipeline.embedding_text`), `vectors[i]` its unit-length embedding and
    `embedding_keys[i]` the key of that vector (`rag.embed.encoder.embedding_key`)."""

    document: Document
    chunks: list[Chunk]
    texts: list[str]
    vectors: np.ndarray  # float32, shape (len(chunks), dimension)
    embedding_keys: list[str]


@dataclass(frozen=True)
class Changes:
    """One update, per document: only these rows change.

    - `upserted`: documents added or changed, each replacing every stored row of its doc id
      (a document whose text is unchanged is here too when its chunks or record changed, e.g.
      cleaning kept other spans of it because of another document);
    - `removed`: doc ids whose document and rows go;
    - `annotated`: chunks of documents in neither list whose near-copy annotations
      (`duplicate_of`, `copies`) changed; id, offsets and text are those stored;
    - `manifest`: the index as it is after the update;
    - `replace_all`: the store drops everything it holds first (settings changed, damage,
      `rag index --rebuild`); then `upserted` holds every document."""

    upserted: list[DocumentRows] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    annotated: list[Chunk] = field(default_factory=list)
    manifest: Manifest | None = None
    replace_all: bool = False


class StoreWriter(Protocol):
    """A store opened for one update; whoever opens it holds the store's writer lock until it
    is closed, so two updates never interleave."""

    @property
    def manifest(self) -> Manifest | None:
        """The stored index's manifest; None when there is nothing to update (no index yet,
        or one that cannot be reused: `problems` says why)."""
        ...

    @property
    def problems(self) -> list[str]:
        """Why the stored index was not (entirely) reusable, one line each (damage recovered
        from, an older format): the update must then rebuild (`replace_all`)."""
        ...

    @property
    def documents(self) -> Mapping[str, Document]:
        """Every stored document by doc id (empty when `manifest` is None)."""
        ...

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        """The stored chunks of one document, in start order (empty when it has none)."""
        ...

    def vectors_for(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Stored vectors by embedding key, for the keys the store holds (reuse instead of
        embedding a chunk text again)."""
        ...

    def apply(self, changes: Changes) -> None:
        """Apply one update atomically: afterwards a reader sees either all of it or, after a
        failure or a kill at any moment, the index exactly as before; never a mixture."""
        ...
