"""Build and update the index: load -> clean -> chunk -> group near-copies -> embed -> store.

The pipeline decides what an update changes, document by document, and hands the store a
`Changes` value (rag.stores.base): the documents added or changed with all their chunks,
vectors and embedding keys, the doc ids removed, and the chunks of untouched documents whose
near-copy annotations changed. A chunk is embedded only if the store holds no vector for its
exact text and model. The store applies the changes atomically. A damaged index is rebuilt
from the newest generation that is still sound, or else from the corpus alone."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from rag.config import Settings
from rag.embed.encoder import Embedder, embedding_fingerprint, embedding_key
from rag.errors import BadInputError
from rag.ingest.chunking import chunk_document
from rag.ingest.cleaning import clean_document, heading_title
from rag.ingest.dedup import group_duplicates
from rag.ingest.incremental import HeldState, IngestState, load_state, new_state, save_state, state_key
from rag.ingest.loading import load_paths
from rag.schema import Block, Chunk, Document, short_title
from rag.stores import open_writer
from rag.stores.base import (
    Changes,
    DocumentRows,
    Manifest,
    StoreWriter,
    compatibility_problems,
    embedding_text,
    new_manifest_time,
    package_versions,
)

log = logging.getLogger(__name__)

# (done, total) while embedding.
EmbedProgress = Callable[[int, int], None]


@dataclass
class IndexReport:
    index_dir: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Documents (re)chunked by this update without a single passage: cleaning dropped all of their text.
    without_passages: list[str] = field(default_factory=list)
    rebuilt_because: list[str] = field(default_factory=list)
    documents: int = 0
    chunks: int = 0
    canonical_chunks: int = 0
    embedded: int = 0
    reused_vectors: int = 0
    written: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


FINGERPRINT_PREFIX = "sum256:"


def _fingerprint_term(doc_id: str, sha256: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{doc_id}\0{sha256}".encode()).digest(), "big")


def corpus_fingerprint(documents: Mapping[str, Document]) -> str:
    """Which documents the index holds, in which versions: a sum of one hash per document, so
    that an update changes it by its own documents alone (`updated_fingerprint`)."""
    total = sum(_fingerprint_term(doc_id, doc.sha256) for doc_id, doc in documents.items())
    return f"{FINGERPRINT_PREFIX}{total % 2**256:064x}"


def updated_fingerprint(
    before: str, removed: Iterable[tuple[str, str]], added: Iterable[tuple[str, str]]
) -> str | None:
    """`before` less the (doc_id, sha256) `removed`, plus those `added`; None when `before`
    is not a sum (an index from before sums, fingerprinted again from all its documents)."""
    if not before.startswith(FINGERPRINT_PREFIX):
        return None
    total = int(before.removeprefix(FINGERPRINT_PREFIX), 16)
    total -= sum(_fingerprint_term(*pair) for pair in removed)
    total += sum(_fingerprint_term(*pair) for pair in added)
    return f"{FINGERPRINT_PREFIX}{total % 2**256:064x}"


class CorpusView(MutableMapping[str, Document]):
    """The documents after an update: the stored ones (read only when asked for) with this
    update's additions, replacements and removals on top. Only the `touched` doc ids can
    differ from the store, so an update of one document never reads every document."""

    def __init__(self, stored: Mapping[str, Document]):
        self.stored = stored
        self.changed: dict[str, Document] = {}
        self.removed: set[str] = set()

    def __getitem__(self, doc_id: str) -> Document:
        if doc_id in self.changed:
            return self.changed[doc_id]
        if doc_id in self.removed:
            raise KeyError(doc_id)
        return self.stored[doc_id]

    def __setitem__(self, doc_id: str, doc: Document) -> None:
        self.changed[doc_id] = doc
        self.removed.discard(doc_id)

    def __delitem__(self, doc_id: str) -> None:
        if doc_id not in self:
            raise KeyError(doc_id)
        self.changed.pop(doc_id, None)
        if doc_id in self.stored:
            self.removed.add(doc_id)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.changed or (doc_id in self.stored and doc_id not in self.removed)

    def __iter__(self) -> Iterator[str]:
        yield from (d for d in self.stored if d not in self.removed)
        yield from (d for d in self.changed if d not in self.stored)

    def __len__(self) -> int:
        return len(self.stored) - len(self.removed) + sum(d not in self.stored for d in self.changed)

    @property
    def touched(self) -> list[str]:
        """Every doc id this update added, replaced or removed, sorted."""
        return sorted({*self.changed, *self.removed})


class IngestEngine(Protocol):
    """Where the cleaning, chunking and near-copy stages run (rag.ingest.cluster: on Dask)."""

    def chunks(self, docs: MutableMapping[str, Document], settings: Settings) -> list[Chunk]:
        """Every document's chunks in doc id order; an untitled document takes its heading's
        title (`docs` is updated in place)."""

    def group(self, chunks: list[Chunk], settings: Settings) -> list[Chunk]:
        """`group_duplicates` over all the chunks."""


def document_chunks(doc: Document, blocks: list[Block], settings: Settings) -> tuple[Document, list[Chunk]]:
    """One cleaned document's chunks, and the document titled by its heading if it had no title."""
    if doc.title is None and (title := heading_title(doc, blocks)):
        doc = doc.model_copy(update={"title": short_title(title)})
    return doc, paged_chunks(doc, blocks, settings)


def paged_chunks(doc: Document, blocks: list[Block], settings: Settings) -> list[Chunk]:
    """The chunks of a cleaned document, with their pages when it has pages (PDF)."""
    chunks = chunk_document(doc.doc_id, doc.text, blocks, settings.chunking)
    if doc.pages:
        chunks = [chunk.model_copy(update=doc.page_fields(chunk.start, chunk.end)) for chunk in chunks]
    return chunks


def update_index(
    settings: Settings,
    paths: list[Path] | None = None,
    remove: list[str] | None = None,
    rebuild: bool = False,
    embedder_factory: Callable[[], Embedder] | None = None,
    progress: EmbedProgress | None = None,
    documents: list[Document] | None = None,
    engine: IngestEngine | None = None,
    held_state: HeldState | None = None,
) -> IndexReport:
    """Sync the index with `paths` (folders are mirrored, deletions included; files are added
    or updated), drop the `remove` doc ids, and add ready-made `documents` (benchmarks).
    `held_state`: keep the incremental ingest state in memory between updates instead of in
    its file (a server)."""
    index_dir = settings.index.dir
    report = IndexReport(index_dir=str(index_dir))
    clock = time.perf_counter()
    # A whole-corpus sync reads every document anyway: it checks every stored chunk too.
    with open_writer(settings, verify=any(path.is_dir() for path in paths or [])) as store:
        fingerprint = embedding_fingerprint(settings.embedding)
        if rebuild:
            report.rebuilt_because.append("--rebuild")
        report.rebuilt_because.extend(store.problems)
        reusable = store.manifest is not None and not rebuild
        old_docs = store.documents if reusable else {}
        docs = CorpusView(old_docs)

        loaded: list[Document] = list(documents or [])
        if paths:
            load_report, synced_roots = load_paths(paths, settings.index.max_file_bytes)
            loaded.extend(load_report.documents)
            report.skipped = load_report.skipped
            seen = {d.doc_id for d in loaded}
            for root in map(str, synced_roots):
                for doc_id, doc in old_docs.items():
                    if doc.root == root and doc_id not in seen:
                        docs.pop(doc_id, None)
        for doc in loaded:
            old = old_docs.get(doc.doc_id)
            if old is not None and old.root != doc.root:
                log.warning("%s was indexed from %s; replacing it with the copy in %s", doc.doc_id, old.root, doc.root)
            if old is None:
                report.added.append(doc.doc_id)
            elif old.sha256 != doc.sha256 or old.root != doc.root:
                report.updated.append(doc.doc_id)
            docs[doc.doc_id] = (
                doc
                if old is None or old.sha256 != doc.sha256
                else old.model_copy(update={"size": doc.size, "mtime_ns": doc.mtime_ns, "path": doc.path})
            )
        for doc_id in remove or []:
            if doc_id not in docs:
                raise BadInputError(f"no document '{doc_id}' in the index (see `rag docs`)")
            del docs[doc_id]
        if paths and not docs:
            raise BadInputError("no readable documents in " + ", ".join(map(str, paths)))
        report.removed = sorted(docs.removed)
        report.unchanged = len(docs) - len(report.added) - len(report.updated)
        report.seconds["load"] = time.perf_counter() - clock

        if reusable:
            report.rebuilt_because.extend(compatibility_problems(store.manifest, settings, fingerprint))
        # rebuilt_because also holds damage recovered from: the damaged generation must be replaced.
        changed = report.added or report.updated or report.removed or report.rebuilt_because or store.manifest is None
        report.documents = len(docs)
        if not changed:
            report.chunks = store.manifest.chunks
            report.canonical_chunks = store.manifest.canonical_chunks
            return report

        replace_all = bool(report.rebuilt_because) or store.manifest is None
        changes, state = _changes(
            settings,
            docs,
            store,
            replace_all,
            rebuild,
            fingerprint,
            embedder_factory,
            progress,
            report,
            engine,
            held_state,
        )
        clock = time.perf_counter()
        store.apply(changes)
        if state is not None and held_state is not None:
            held_state.keep(index_dir, state)
        elif state is not None:
            save_state(index_dir, state)
        report.seconds["write"] = time.perf_counter() - clock
        report.written = True
        return report


@dataclass
class _Rows:
    """What the chunk stages decided: each document to write with all its chunks, the chunks of
    other documents whose near-copy annotations changed, the counts after the update, and the
    incremental ingest state after it (None when an engine recomputed everything)."""

    rows_of: dict[str, list[Chunk]]
    annotated: list[Chunk]
    chunks: int
    canonical_chunks: int
    state: IngestState | None


def _changes(
    settings: Settings,
    docs: CorpusView,
    store: StoreWriter,
    replace_all: bool,
    rebuild: bool,
    fingerprint: str,
    embedder_factory: Callable[[], Embedder] | None,
    progress: EmbedProgress | None,
    report: IndexReport,
    engine: IngestEngine | None,
    held_state: HeldState | None,
) -> tuple[Changes, IngestState | None]:
    """What the update changes, per document, with the vectors of every new chunk; and the
    ingest state after it."""
    rows = (
        _engine_rows(settings, docs, store, replace_all, report, engine)
        if engine is not None
        else _incremental_rows(settings, docs, store, replace_all, report, held_state)
    )
    upserted, rows_of, annotated = sorted(rows.rows_of), rows.rows_of, rows.annotated
    texts = {
        doc_id: [embedding_text(c, docs[doc_id], settings.embedding.include_title) for c in rows_of[doc_id]]
        for doc_id in upserted
    }
    keys = {doc_id: [embedding_key(fingerprint, t) for t in texts[doc_id]] for doc_id in upserted}
    vectors = _vectors_for(texts, keys, store, rebuild, embedder_factory, progress, report)

    report.chunks, report.canonical_chunks = rows.chunks, rows.canonical_chunks
    # Chunks of documents this update leaves alone keep their stored vectors.
    report.reused_vectors += report.chunks - len(vectors)
    manifest = Manifest(
        created_at=new_manifest_time(),
        embedding_model=settings.embedding.model,
        embedding_fingerprint=fingerprint,
        embedding_backend=settings.embedding.backend,
        dimension=int(vectors.shape[1]),
        include_title=settings.embedding.include_title,
        chunking=settings.chunking,
        cleaning=settings.cleaning,
        faiss_type=settings.index.faiss_type,
        dedup_threshold=settings.index.dedup_threshold,
        corpus_fingerprint=_corpus_fingerprint(docs, store, replace_all),
        documents=len(docs),
        chunks=report.chunks,
        canonical_chunks=report.canonical_chunks,
        versions=package_versions(),
    )
    if rows.state is not None:
        rows.state.key = state_key(settings, manifest.corpus_fingerprint)
    written, offset = [], 0
    for doc_id in upserted:
        n = len(rows_of[doc_id])
        written.append(
            DocumentRows(docs[doc_id], rows_of[doc_id], texts[doc_id], vectors[offset : offset + n], keys[doc_id])
        )
        offset += n
    removed = [] if replace_all else sorted(docs.removed)
    changes = Changes(
        upserted=written, removed=removed, annotated=annotated, manifest=manifest, replace_all=replace_all
    )
    return changes, rows.state


def _incremental_rows(
    settings: Settings,
    docs: CorpusView,
    store: StoreWriter,
    replace_all: bool,
    report: IndexReport,
    held_state: HeldState | None,
) -> _Rows:
    """Only documents whose text changed, and those whose cleaning a change of boilerplate
    lines reaches, are cleaned and chunked again; only the near-copy groups touching a changed
    chunk are recomputed (rag.ingest.incremental)."""
    clock = time.perf_counter()
    stored = {} if replace_all else store.documents
    if replace_all:
        state = new_state(settings, key="")
    else:
        key = state_key(settings, store.manifest.corpus_fingerprint)
        state = held_state.take(settings.index.dir, key) if held_state else load_state(settings.index.dir, key)
        state = state or _state_from_store(settings, store)
    candidates = list(docs) if replace_all else docs.touched
    text_changed = [d for d in candidates if d in docs and (d not in stored or stored[d].sha256 != docs[d].sha256)]
    gone = [d for d in candidates if d in stored and (d not in docs or stored[d].sha256 != docs[d].sha256)]
    # PDF and Word documents come with their reader's blocks: line statistics are for pages.
    recleaned = state.lines.update(gone, [docs[d] for d in text_changed if docs[d].blocks is None])
    for doc_id in gone:
        state.heading_titles.discard(doc_id)
    new_chunks: dict[str, list[Chunk]] = {}
    for doc_id in sorted({*text_changed, *recleaned}):
        doc = docs[doc_id]
        blocks = (
            doc.blocks
            if doc.blocks is not None
            else clean_document(doc, state.lines.boilerplate_of(doc), settings.cleaning)
        )
        if doc.title is None or doc_id in state.heading_titles:
            title = heading_title(doc, blocks)
            docs[doc_id] = doc = doc.model_copy(update={"title": short_title(title) if title else None})
            if title:
                state.heading_titles.add(doc_id)
            else:
                state.heading_titles.discard(doc_id)
        new_chunks[doc_id] = paged_chunks(doc, blocks, settings)
    old_chunks = {d: store.chunks_of(d) for d in {*gone, *new_chunks} if d in stored}
    for doc_id in recleaned:
        if [(c.chunk_id, c.text) for c in new_chunks[doc_id]] == [(c.chunk_id, c.text) for c in old_chunks[doc_id]]:
            del new_chunks[doc_id], old_chunks[doc_id]  # its boilerplate changed, its passages did not
    report.without_passages = sorted(d for d, chunks in new_chunks.items() if not chunks)
    for doc_id in report.without_passages:
        log.warning("%s has no passages: cleaning dropped all of its text as boilerplate", doc_id)
    report.seconds["clean_chunk"] = time.perf_counter() - clock

    clock = time.perf_counter()
    removed_chunks = [c for chunks in old_chunks.values() for c in chunks]
    added_chunks = [c for doc_id in sorted(new_chunks) for c in new_chunks[doc_id]]
    component = state.sketches.update([c.chunk_id for c in removed_chunks], added_chunks)
    kept_in_component = _stored_chunks(store, component - {c.chunk_id for c in added_chunks})
    grouped = {
        c.chunk_id: c
        for c in group_duplicates(
            [*added_chunks, *kept_in_component.values()],
            settings.index.dedup_threshold,
            settings.index.dedup_num_perm,
            state.sketches.signatures,
        )
    }
    report.seconds["dedup"] = time.perf_counter() - clock

    upserted = sorted({*new_chunks, *(d for d in candidates if d in stored and d in docs and docs[d] != stored[d])})
    rows_of = {
        doc_id: [
            grouped.get(c.chunk_id, c)
            for c in (new_chunks[doc_id] if doc_id in new_chunks else store.chunks_of(doc_id))
        ]
        for doc_id in upserted
    }
    annotated = [grouped[i] for i, c in kept_in_component.items() if c.doc_id not in rows_of and grouped[i] != c]
    before = store.manifest if not replace_all else None
    chunks = (before.chunks if before else 0) - len(removed_chunks) + len(added_chunks)
    # Canonical passages: those stored, less the ones regrouped, plus the regrouped outcome.
    was_canonical = sum(c.duplicate_of is None for c in [*removed_chunks, *kept_in_component.values()])
    canonical = (
        (before.canonical_chunks if before else 0)
        - was_canonical
        + sum(c.duplicate_of is None for c in grouped.values())
    )
    return _Rows(rows_of, annotated, chunks, canonical, state)


def _engine_rows(
    settings: Settings,
    docs: CorpusView,
    store: StoreWriter,
    replace_all: bool,
    report: IndexReport,
    engine: IngestEngine,
) -> _Rows:
    """Every document cleaned, chunked and grouped again by `engine` (rag.ingest.cluster);
    the documents whose chunks differ from the stored ones are written."""
    clock = time.perf_counter()
    chunks = engine.chunks(docs, settings)
    report.without_passages = sorted(set(docs) - {c.doc_id for c in chunks})
    for doc_id in report.without_passages:
        log.warning("%s has no passages: cleaning dropped all of its text as boilerplate", doc_id)
    report.seconds["clean_chunk"] = time.perf_counter() - clock
    clock = time.perf_counter()
    chunks = engine.group(chunks, settings)
    report.seconds["dedup"] = time.perf_counter() - clock

    by_doc: dict[str, list[Chunk]] = {doc_id: [] for doc_id in docs}
    for chunk in chunks:
        by_doc[chunk.doc_id].append(chunk)
    stored = {} if replace_all else store.documents
    rows_of: dict[str, list[Chunk]] = {}
    annotated: list[Chunk] = []
    for doc_id, doc_chunks in by_doc.items():
        old = store.chunks_of(doc_id) if doc_id in stored and stored[doc_id] == docs[doc_id] else None
        if old is None or [(c.chunk_id, c.text) for c in old] != [(c.chunk_id, c.text) for c in doc_chunks]:
            rows_of[doc_id] = doc_chunks
        else:
            annotated.extend(new for new, was in zip(doc_chunks, old) if new != was)
    # The saved incremental state no longer describes the index: the next local run rebuilds it.
    return _Rows(rows_of, annotated, len(chunks), sum(c.duplicate_of is None for c in chunks), None)


def _corpus_fingerprint(docs: CorpusView, store: StoreWriter, replace_all: bool) -> str:
    """The fingerprint after the update: the stored one moved by the touched documents."""
    if not replace_all and store.manifest is not None:
        stored = docs.stored
        changed = [d for d in docs.touched if d not in docs or d not in stored or docs[d].sha256 != stored[d].sha256]
        updated = updated_fingerprint(
            store.manifest.corpus_fingerprint,
            [(d, stored[d].sha256) for d in changed if d in stored],
            [(d, docs[d].sha256) for d in changed if d in docs],
        )
        if updated is not None:
            return updated
    return corpus_fingerprint(docs)


def _stored_chunks(store: StoreWriter, chunk_ids: set[str]) -> dict[str, Chunk]:
    """Stored chunks by id (a chunk id is "doc_id:start-end")."""
    doc_ids = {chunk_id.rsplit(":", 1)[0] for chunk_id in chunk_ids}
    return {c.chunk_id: c for doc_id in sorted(doc_ids) for c in store.chunks_of(doc_id) if c.chunk_id in chunk_ids}


def _state_from_store(settings: Settings, store: StoreWriter) -> IngestState:
    """The ingest state of the stored index, when none was saved for it (an index from before
    incremental updates, or a kill between publishing an update and saving its state): the
    stored documents and chunks are read, not cleaned or chunked again."""
    log.info("rebuilding the ingest state of %s from its documents", settings.index.dir)
    state = new_state(settings, state_key(settings, store.manifest.corpus_fingerprint))
    doc_ids = sorted(store.documents)
    # Read lazily: the stages take a step of documents or chunks at a time.
    state.lines.update([], (doc for doc in map(store.documents.__getitem__, doc_ids) if doc.blocks is None))
    state.sketches.update([], (chunk for doc_id in doc_ids for chunk in store.chunks_of(doc_id)))
    return state


def _vectors_for(
    texts: dict[str, list[str]],
    keys: dict[str, list[str]],
    store: StoreWriter,
    fresh_only: bool,
    embedder_factory: Callable[[], Embedder] | None,
    progress: EmbedProgress | None,
    report: IndexReport,
) -> np.ndarray:
    """One vector per chunk of `texts` (all documents in order), reusing stored vectors by
    key unless `fresh_only` (`--rebuild`)."""
    all_keys = [key for doc_keys in keys.values() for key in doc_keys]
    all_texts = [text for doc_texts in texts.values() for text in doc_texts]
    known = {} if fresh_only else store.vectors_for(set(all_keys))
    # The same text in two documents (both are indexed) has one key and is embedded once.
    text_of = dict(zip(all_keys, all_texts))
    missing = list(dict.fromkeys(key for key in all_keys if key not in known))
    report.reused_vectors = sum(key in known for key in all_keys)
    report.embedded = len(missing)
    clock = time.perf_counter()
    fresh = None
    stored_dimension = store.manifest.dimension if store.manifest and not fresh_only else None
    if missing or (not known and stored_dimension is None):
        if embedder_factory is None:
            raise BadInputError("no embedding model available to embed new chunks")
        embedder = embedder_factory()
        dimension = embedder.dimension
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, len(missing))

        if progress:
            progress(0, len(missing))
        fresh = embedder.encode([text_of[key] for key in missing], progress=advance)
    else:
        dimension = len(next(iter(known.values()))) if known else stored_dimension
    fresh_row = {key: row for row, key in enumerate(missing)}
    vectors = np.zeros((len(all_keys), dimension), dtype=np.float32)
    for i, key in enumerate(all_keys):
        vectors[i] = known[key] if key in known else fresh[fresh_row[key]]
    report.seconds["embed"] = time.perf_counter() - clock
    return vectors
