"""Build and update the index: load -> clean -> chunk -> group near-copies -> embed -> FAISS + BM25 -> store.

Updates are incremental where it matters: the whole corpus is re-cleaned and re-chunked
(cheap, and cleaning looks across documents), but a chunk is embedded only if no vector for
its exact text and model exists in the previous index. FAISS and BM25 are rebuilt from the
resulting chunk list every time, so removed or changed documents cannot leave stale or
duplicated chunks behind. A damaged index is rebuilt from the newest generation that is still
sound, or else from the corpus alone."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rag.config import Settings
from rag.embed.encoder import Embedder, embedding_fingerprint, embedding_key
from rag.errors import (
    BadInputError,
    IncompatibleIndexError,
    IndexDamagedError,
    IndexMissingError,
)
from rag.ingest.chunking import chunk_document
from rag.ingest.cleaning import clean_corpus, heading_title
from rag.ingest.dedup import group_duplicates
from rag.ingest.loading import load_paths
from rag.ingest.pdf import search_text
from rag.schema import Chunk, Document, short_title
from rag.stores.faiss_bm25.dense import build_dense_index
from rag.stores.faiss_bm25.lexical import build_lexical_index
from rag.stores.faiss_bm25.store import (
    FORMAT_VERSION,
    IndexData,
    Manifest,
    compatibility_problems,
    current_generation,
    generations,
    new_manifest_time,
    package_versions,
    read_generation,
    read_index,
    write_index,
    writer_lock,
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
    # Documents indexed without a single passage: cleaning dropped all of their text.
    without_passages: list[str] = field(default_factory=list)
    rebuilt_because: list[str] = field(default_factory=list)
    documents: int = 0
    chunks: int = 0
    canonical_chunks: int = 0
    embedded: int = 0
    reused_vectors: int = 0
    written: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


def embedding_text(chunk: Chunk, doc: Document, include_title: bool) -> str:
    """What gets embedded and BM25-indexed for a chunk: its text, headed by the document
    title when the chunk does not already contain it."""
    title = doc.title
    text = search_text(chunk.text) if doc.format == "pdf" else chunk.text
    if include_title and title and title not in chunk.text:
        return f"{title}\n{text}"
    return text


def corpus_fingerprint(documents: dict[str, Document]) -> str:
    digest = hashlib.sha256()
    for doc_id in sorted(documents):
        digest.update(f"{doc_id}\0{documents[doc_id].sha256}\n".encode())
    return digest.hexdigest()


def _previous_index(settings: Settings, rebuild: bool, report: IndexReport) -> tuple[IndexData | None, Path | None]:
    """The index to update, and the current generation when it is damaged (to be discarded)."""
    if rebuild:
        report.rebuilt_because.append("--rebuild")
        return None, None
    try:
        return read_index(settings.index.dir), None
    except IndexMissingError:
        return None, None
    except IncompatibleIndexError as exc:
        report.rebuilt_because.append(str(exc))
        return None, None
    except IndexDamagedError as exc:
        damaged = current_generation(settings.index.dir)
        return _last_sound_generation(settings, damaged, exc, report), damaged


def _last_sound_generation(
    settings: Settings, damaged: Path | None, damage: IndexDamagedError, report: IndexReport
) -> IndexData | None:
    """The newest older generation that passes every check, so its documents and vectors are
    reused; None when there is none and the corpus must be indexed afresh."""
    for generation in generations(settings.index.dir):
        if generation == damaged:
            continue
        try:
            data = read_generation(generation)
        except (IndexDamagedError, IncompatibleIndexError):
            continue
        report.rebuilt_because.append(f"{damage.summary}; rebuilt from the previous generation {generation.name}")
        return data
    report.rebuilt_because.append(f"{damage.summary}; no sound generation left, rebuilt from the documents given")
    return None


def update_index(
    settings: Settings,
    paths: list[Path] | None = None,
    remove: list[str] | None = None,
    rebuild: bool = False,
    embedder_factory: Callable[[], Embedder] | None = None,
    progress: EmbedProgress | None = None,
    documents: list[Document] | None = None,
) -> IndexReport:
    """Sync the index with `paths` (folders are mirrored, deletions included; files are added
    or updated), drop the `remove` doc ids, and add ready-made `documents` (benchmarks)."""
    index_dir = settings.index.dir
    report = IndexReport(index_dir=str(index_dir))
    clock = time.perf_counter()
    with writer_lock(index_dir):
        previous, damaged = _previous_index(settings, rebuild, report)
        fingerprint = embedding_fingerprint(settings.embedding)
        old_docs = dict(previous.documents) if previous else {}
        docs = dict(old_docs)

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
            docs[doc.doc_id] = doc if old is None or old.sha256 != doc.sha256 else old.model_copy(
                update={"size": doc.size, "mtime_ns": doc.mtime_ns, "path": doc.path}
            )
        for doc_id in remove or []:
            if doc_id not in docs:
                raise BadInputError(f"no document '{doc_id}' in the index (see `rag docs`)")
            del docs[doc_id]
        if paths and not docs:
            raise BadInputError("no readable documents in " + ", ".join(map(str, paths)))
        report.removed = sorted(set(old_docs) - set(docs))
        report.unchanged = len(docs) - len(report.added) - len(report.updated)
        report.seconds["load"] = time.perf_counter() - clock

        problems = compatibility_problems(previous.manifest, settings, fingerprint) if previous else []
        report.rebuilt_because.extend(problems)
        # rebuilt_because also holds damage recovered from: the damaged generation must be replaced.
        changed = report.added or report.updated or report.removed or report.rebuilt_because or previous is None
        report.documents = len(docs)
        if not changed:
            report.chunks = previous.manifest.chunks
            report.canonical_chunks = previous.manifest.canonical_chunks
            return report

        data = _build(settings, docs, previous, fingerprint, embedder_factory, progress, report)
        clock = time.perf_counter()
        write_index(index_dir, data, discard=damaged)
        report.seconds["write"] = time.perf_counter() - clock
        report.written = True
        return report


def _build(
    settings: Settings,
    docs: dict[str, Document],
    previous: IndexData | None,
    fingerprint: str,
    embedder_factory: Callable[[], Embedder] | None,
    progress: EmbedProgress | None,
    report: IndexReport,
) -> IndexData:
    clock = time.perf_counter()
    blocks = clean_corpus(list(docs.values()), settings.cleaning)
    for doc_id, doc in docs.items():
        if doc.title is None and (title := heading_title(doc, blocks[doc_id])):
            docs[doc_id] = doc.model_copy(update={"title": short_title(title)})
    chunks = [
        chunk.model_copy(update=docs[doc_id].page_fields(chunk.start, chunk.end)) if docs[doc_id].pages else chunk
        for doc_id in sorted(docs)
        for chunk in chunk_document(doc_id, docs[doc_id].text, blocks[doc_id], settings.chunking)
    ]
    report.without_passages = sorted(set(docs) - {c.doc_id for c in chunks})
    for doc_id in report.without_passages:
        log.warning("%s has no passages: cleaning dropped all of its text as boilerplate", doc_id)
    report.seconds["clean_chunk"] = time.perf_counter() - clock

    clock = time.perf_counter()
    chunks = group_duplicates(chunks, settings.index.dedup_threshold, settings.index.dedup_num_perm)
    distinct = sum(c.duplicate_of is None for c in chunks)
    report.seconds["dedup"] = time.perf_counter() - clock

    texts = [embedding_text(c, docs[c.doc_id], settings.embedding.include_title) for c in chunks]
    keys = [embedding_key(fingerprint, t) for t in texts]
    vectors = _vectors_for(texts, keys, previous, embedder_factory, progress, report)

    clock = time.perf_counter()
    dense = build_dense_index(vectors, settings.index)
    lexical = build_lexical_index(texts)
    report.seconds["indexes"] = time.perf_counter() - clock

    report.chunks, report.canonical_chunks = len(chunks), distinct
    manifest = Manifest(
        format_version=FORMAT_VERSION,
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
        corpus_fingerprint=corpus_fingerprint(docs),
        documents=len(docs),
        chunks=len(chunks),
        canonical_chunks=distinct,
        versions=package_versions(),
    )
    return IndexData(manifest, docs, chunks, vectors, keys, dense, lexical)


def _vectors_for(
    texts: list[str],
    keys: list[str],
    previous: IndexData | None,
    embedder_factory: Callable[[], Embedder] | None,
    progress: EmbedProgress | None,
    report: IndexReport,
) -> np.ndarray:
    known = {key: row for row, key in enumerate(previous.embedding_keys)} if previous else {}
    # The same text in two documents (both are indexed) has one key and is embedded once.
    text_of = dict(zip(keys, texts))
    missing = list(dict.fromkeys(key for key in keys if key not in known))
    report.reused_vectors = sum(key in known for key in keys)
    report.embedded = len(missing)
    clock = time.perf_counter()
    fresh = None
    if missing or previous is None:
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
        dimension = previous.vectors.shape[1]
    fresh_row = {key: row for row, key in enumerate(missing)}
    vectors = np.zeros((len(keys), dimension), dtype=np.float32)
    for i, key in enumerate(keys):
        vectors[i] = previous.vectors[known[key]] if key in known else fresh[fresh_row[key]]
    report.seconds["embed"] = time.perf_counter() - clock
    return vectors
