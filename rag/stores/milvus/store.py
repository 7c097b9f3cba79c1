"""The index in Milvus: chunks with their dense and BM25 vectors, documents' full text, and
the manifest, in three collections that any number of `rag serve` replicas share.

Reading (`MilvusStore`) is a live view: every call asks the server, so an upload or deletion
through one replica is seen by the others on their next request. Hybrid search runs in
Milvus (hybrid_search with its RRF ranker over the dense and the BM25 request).

Writing (`MilvusWriter`) applies one update's `Changes`: only the rows of the documents it
names are deleted and inserted. Milvus has no transactions, so an update first records that
it is running; one that is interrupted (a killed process, a server gone) leaves that record
behind, and the next update rebuilds the collections from the documents, reusing the stored
vectors, so they hold exactly the corpus again."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from pymilvus import AnnSearchRequest, MilvusClient, RRFRanker

from rag.config import SearchMode, Settings
from rag.errors import (
    BadInputError,
    IncompatibleIndexError,
    IndexDamagedError,
    IndexMissingError,
    StoreUnavailableError,
)
from rag.schema import Chunk, ChunkLocation, Document
from rag.stores.base import Candidate, Changes, ChunkCounts, DocumentRows, Manifest, compatibility_problems
from rag.stores.milvus.connection import (
    BM25_K1,
    MAX_VARCHAR_BYTES,
    PLACEHOLDER,
    TEXT_PART_CHARS,
    CollectionReleasedError,
    batches,
    collection_names,
    connect,
    create_collections,
    drop_collections,
    literal,
    milvus_errors,
    one_of,
    where,
)
from rag.text.words import tokenize

CHUNK_FIELDS = ["chunk_id", "doc_id", "start", "end", "text", "duplicate_of", "copies"]
MANIFEST_KEY = "manifest"
# Set while an update runs, deleted when it is complete.
UPDATE_KEY = "update"
BM25_PARAMS = {"metric_type": "BM25"}
# Milvus's largest query result; documents fetched at once, so that their parts stay within it.
MAX_QUERY_ROWS = 16_384
DOCS_PER_QUERY = 8
# An update record whose writer has not been heard of for this long was interrupted.
STALE_UPDATE_S = 300.0


def lexical_texts(texts: list[str]) -> list[str]:
    """What Milvus's BM25 function indexes for each text: its BM25 tokens, space-separated,
    within a VARCHAR (tokens past it are left out)."""
    out = []
    for tokens in map(" ".join, tokenize(texts)) if texts else []:
        if len(tokens.encode()) > MAX_VARCHAR_BYTES:
            tokens = tokens.encode()[:MAX_VARCHAR_BYTES].decode(errors="ignore").rsplit(" ", 1)[0]
        out.append(tokens)
    return out


def _fits(text: str) -> bool:
    return len(text) <= TEXT_PART_CHARS or len(text.encode()) <= MAX_VARCHAR_BYTES


def _chunk_of(row: dict[str, Any], text: str | None = None) -> Chunk:
    return Chunk(
        chunk_id=row["chunk_id"],
        doc_id=row["doc_id"],
        start=row["start"],
        end=row["end"],
        text=row["text"] if text is None else text,
        duplicate_of=row["duplicate_of"] or None,
        copies=[ChunkLocation.model_validate(c) for c in row["copies"] or []],
    )


class _Collections:
    """A client and the names of the three collections, with the reads both sides share."""

    def __init__(self, client: MilvusClient, settings: Settings):
        self.client = client
        self.settings = settings
        self.timeout = settings.store.timeout_s
        self.chunks, self.documents, self.meta = collection_names(settings.store)

    def errors(self):
        return milvus_errors(self.settings.store)

    def meta_value(self, key: str) -> dict | None:
        rows = self.client.get(self.meta, ids=[key], output_fields=["value"], timeout=self.timeout)
        return rows[0]["value"] if rows else None

    def count(self, collection: str, expr: str = "") -> int:
        rows = self.client.query(collection, filter=expr, output_fields=["count(*)"], timeout=self.timeout)
        return int(rows[0]["count(*)"]) if rows else 0

    def rows(self, collection: str, expr: str, fields: list[str]) -> Iterator[dict]:
        """Every row matching `expr`, in batches (a plain query's result window is bounded)."""
        iterator = self.client.query_iterator(
            collection, batch_size=1000, filter=expr, output_fields=fields, timeout=self.timeout
        )
        try:
            while batch := iterator.next():
                yield from batch
        finally:
            iterator.close()

    def read_documents(self, doc_ids: list[str] | None) -> dict[str, Document]:
        """Documents with their full text (None: all), reassembled from their parts."""
        fields = ["doc_id", "part", "record", "text"]
        if doc_ids is None:
            found = self.rows(self.documents, "", fields)
        else:  # plain queries, fewer calls than an iterator: a document has at most 1,300 parts (20 MB)
            found = (
                row
                for batch in batches(doc_ids, DOCS_PER_QUERY)
                for row in self.client.query(
                    self.documents,
                    filter=one_of("doc_id", batch),
                    output_fields=fields,
                    limit=MAX_QUERY_ROWS,
                    timeout=self.timeout,
                )
            )
        parts: dict[str, dict[int, dict]] = {}
        for row in found:
            parts.setdefault(row["doc_id"], {})[row["part"]] = row
        out = {}
        for doc_id, rows in parts.items():
            head = rows.get(0)
            if head is None or len(rows) != head["record"]["parts"]:
                raise IndexDamagedError(where(self.settings.store), [f"the text of {doc_id} is incomplete"])
            record = {k: v for k, v in head["record"].items() if k != "parts"}
            out[doc_id] = Document(**record, text="".join(rows[i]["text"] for i in range(len(rows))))
        return out

    def chunks_by(self, expr: str) -> list[Chunk]:
        rows = list(self.rows(self.chunks, expr, CHUNK_FIELDS))
        long = sorted({r["doc_id"] for r in rows if not r["text"]})
        texts = self.read_documents(long) if long else {}
        return [_chunk_of(r, texts[r["doc_id"]].text[r["start"] : r["end"]] if not r["text"] else None) for r in rows]


def reloading(method: Callable) -> Callable:
    """`method` of an object with `_c`, tried once more after loading the collections when the
    server had released them (a restarted server): replicas recover without a restart."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except CollectionReleasedError:
            with self._c.errors():
                _load(self._c)
            return method(self, *args, **kwargs)

    return call


class LiveDocuments(Mapping[str, Document]):
    """The stored documents, read from the server at each access (another replica may have
    changed them since the last one)."""

    def __init__(self, collections: _Collections):
        self._c = collections

    @reloading
    def __getitem__(self, doc_id: str) -> Document:
        with self._c.errors():
            found = self._c.read_documents([doc_id])
        if doc_id not in found:
            raise KeyError(doc_id)
        return found[doc_id]

    @reloading
    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        with self._c.errors():
            return self._c.count(self._c.documents, f"doc_id == {literal(doc_id)} and part == 0") > 0

    @reloading
    def _ids(self) -> list[str]:
        with self._c.errors():
            return sorted(r["doc_id"] for r in self._c.rows(self._c.documents, "part == 0", ["doc_id"]))

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids())

    @reloading
    def __len__(self) -> int:
        with self._c.errors():
            return self._c.count(self._c.documents, "part == 0")

    @reloading
    def items(self):  # one batched read instead of one per document
        with self._c.errors():
            return sorted(self._c.read_documents(None).items())

    def values(self):
        return [doc for _, doc in self.items()]


class MilvusStore:
    """The Milvus `Store`: dense (IP over unit vectors), BM25 (Milvus's BM25 function) and
    hybrid search (Milvus's RRF ranker), doc filters as filter expressions."""

    def __init__(self, client: MilvusClient, settings: Settings, manifest: Manifest):
        self._c = _Collections(client, settings)
        self.settings = settings
        self.manifest = manifest

    @property
    def documents(self) -> LiveDocuments:
        return LiveDocuments(self._c)

    @reloading
    def documents_for(self, doc_ids: Iterable[str]) -> dict[str, Document]:
        with self._c.errors():
            return self._c.read_documents(list(dict.fromkeys(doc_ids)))

    @property
    @reloading
    def chunk_total(self) -> int:
        with self._c.errors():
            return self._c.count(self._c.chunks)

    @property
    @reloading
    def distinct_chunks(self) -> int:
        with self._c.errors():
            return self._c.count(self._c.chunks, 'duplicate_of == ""')

    @reloading
    def chunk(self, chunk_id: str) -> Chunk:
        with self._c.errors():
            found = self._c.chunks_by(f"chunk_id == {literal(chunk_id)}")
        if not found:
            raise KeyError(chunk_id)
        return found[0]

    @reloading
    def chunk_counts(self) -> dict[str, ChunkCounts]:
        with self._c.errors():
            counts = {doc_id: [0, 0] for doc_id in self.documents}
            for row in self._c.rows(self._c.chunks, "", ["doc_id", "duplicate_of"]):
                tally = counts.setdefault(row["doc_id"], [0, 0])
                tally[0] += 1
                tally[1] += bool(row["duplicate_of"])
        return {doc_id: ChunkCounts(*tally) for doc_id, tally in counts.items()}

    def verify(self) -> list[str]:
        """What `rag doctor` checks, one line per problem: counts as the manifest says, one row
        per chunk id, offsets that reproduce every chunk's text, near-copies of stored chunks."""
        with self._c.errors():
            documents = dict(self.documents.items())
            chunks = self._c.chunks_by("")
        problems = []
        if len(documents) != self.manifest.documents or len(chunks) != self.manifest.chunks:
            problems.append(
                f"{len(documents)} documents and {len(chunks)} passages, the manifest says "
                f"{self.manifest.documents} and {self.manifest.chunks}"
            )
        ids = {c.chunk_id for c in chunks}
        if len(ids) != len(chunks):
            problems.append(f"{len(chunks) - len(ids)} passage row(s) stored twice")
        shifted = [
            c.chunk_id
            for c in chunks
            if c.doc_id not in documents or documents[c.doc_id].text[c.start : c.end] != c.text
        ]
        if shifted:
            problems.append(f"{len(shifted)} chunk(s) whose offsets do not reproduce their text (first: {shifted[0]})")
        dangling = [c.chunk_id for c in chunks if c.duplicate_of is not None and c.duplicate_of not in ids]
        if dangling:
            problems.append(f"{len(dangling)} chunk(s) copying a chunk that is not in the index (first: {dangling[0]})")
        return problems

    def _dense_params(self, depth: int) -> dict:
        index_type = self.settings.store.index_type.upper()
        if index_type.startswith("HNSW"):
            # HNSW returns at most ef results.
            return {"metric_type": "IP", "params": {"ef": max(self.settings.index.hnsw_ef_search, depth)}}
        if index_type.startswith("IVF"):
            return {"metric_type": "IP", "params": {"nprobe": self.settings.index.ivf_nprobe}}
        return {"metric_type": "IP", "params": {}}

    @reloading
    def search(
        self, query: str, vector: np.ndarray | None, mode: SearchMode, depth: int, doc_ids: list[str] | None
    ) -> list[Candidate]:
        expr = one_of("doc_id", doc_ids) if doc_ids else ""
        terms = " ".join(tokenize([query])[0])
        client, timeout = self._c.client, self._c.timeout
        with self._c.errors():
            if mode == "bm25":
                hits = self._bm25_hits(terms, expr, depth, CHUNK_FIELDS)
                scores = bm25 = {hit["chunk_id"]: _bm25_score(hit) for hit in hits}
            else:
                dense = AnnSearchRequest(
                    data=[vector.tolist()], anns_field="vector", param=self._dense_params(depth), limit=depth, expr=expr
                )
            if mode == "dense":
                hits = client.search(
                    self._c.chunks,
                    data=dense.data,
                    anns_field="vector",
                    search_params=dense.param,
                    limit=depth,
                    filter=expr,
                    output_fields=CHUNK_FIELDS,
                    timeout=timeout,
                )[0]
                scores, bm25 = {hit["chunk_id"]: hit["distance"] for hit in hits}, None
            if mode == "hybrid":
                lexical = AnnSearchRequest(data=[terms], anns_field="sparse", param=BM25_PARAMS, limit=depth, expr=expr)
                # Milvus's RRF has no weights; open_milvus_store requires them equal, so scaling
                # its sums by the common weight gives the embedded store's fused scores.
                hits = client.hybrid_search(
                    self._c.chunks,
                    [dense, lexical] if terms else [dense],
                    RRFRanker(self.settings.retrieval.rrf_k),
                    limit=depth,
                    output_fields=CHUNK_FIELDS,
                    timeout=timeout,
                )[0]
                weight = self.settings.retrieval.dense_weight
                scores = {hit["chunk_id"]: weight * hit["distance"] for hit in hits}
                # The BM25 half's own scores (a chunk outside its top `depth`: 0).
                bm25 = {hit["chunk_id"]: _bm25_score(hit) for hit in self._bm25_hits(terms, expr, depth, [])}
            dense_scores = self._dense_scores(list(scores), vector) if vector is not None else None
            chunks = self._chunks(hits)
        return [
            Candidate(
                chunk=chunk,
                score=float(scores[chunk.chunk_id]),
                dense_score=dense_scores.get(chunk.chunk_id) if dense_scores is not None else None,
                bm25_score=bm25.get(chunk.chunk_id, 0.0) if bm25 is not None else None,
            )
            for chunk in chunks
        ]

    def _bm25_hits(self, terms: str, expr: str, depth: int, fields: list[str]) -> list[dict]:
        if not terms:  # no query word is a BM25 term (all stop words): nothing matches
            return []
        return self._c.client.search(
            self._c.chunks,
            data=[terms],
            anns_field="sparse",
            search_params=BM25_PARAMS,
            limit=depth,
            filter=expr,
            output_fields=fields,
            timeout=self._c.timeout,
        )[0]

    def _chunks(self, hits: list[dict]) -> list[Chunk]:
        rows = [{**hit["entity"], "chunk_id": hit["chunk_id"]} for hit in hits]
        long = sorted({r["doc_id"] for r in rows if not r["text"]})
        texts = self._c.read_documents(long) if long else {}
        return [_chunk_of(r, texts[r["doc_id"]].text[r["start"] : r["end"]] if not r["text"] else None) for r in rows]

    def _dense_scores(self, ids: list[str], vector: np.ndarray) -> dict[str, float]:
        """Each chunk's cosine with the query, from its stored unit vector."""
        if not ids:
            return {}
        rows = self._c.client.get(self._c.chunks, ids=ids, output_fields=["vector"], timeout=self._c.timeout)
        return {row["chunk_id"]: float(np.asarray(row["vector"], dtype=np.float32) @ vector) for row in rows}


def _bm25_score(hit: dict) -> float:
    """The embedded store's BM25 score of a hit. Milvus Lite reports BM25 hits as negated
    distances, Milvus as scores (never negative), so abs() reads both; Milvus's BM25 has the
    factor (k1 + 1) that bm25s leaves out, which changes no ranking."""
    return abs(float(hit["distance"])) / (BM25_K1 + 1)


def _collections_exist(c: _Collections) -> bool:
    return all(c.client.has_collection(name, timeout=c.timeout) for name in (c.chunks, c.documents, c.meta))


def _load(c: _Collections) -> None:
    """Collections must be loaded to be searched; a restarted server may hold them released."""
    for name in (c.chunks, c.documents, c.meta):
        state = c.client.get_load_state(name, timeout=c.timeout).get("state")
        if str(state).rsplit(".", 1)[-1] != "Loaded":
            c.client.load_collection(name, timeout=c.timeout)


def _interrupted(record: dict, settings: Settings) -> str:
    return f"an update of {where(settings.store)} was interrupted (started {record.get('started_at', '?')})"


def open_milvus_store(settings: Settings, fingerprint: str) -> MilvusStore:
    """The index in Milvus, refused when the settings would build it otherwise, as the embedded one is."""
    store = settings.store
    if settings.retrieval.dense_weight != settings.retrieval.bm25_weight:
        raise BadInputError(
            'retrieval.dense_weight and retrieval.bm25_weight must be equal with store.backend = "milvus" '
            "(Milvus's RRF ranker has no weights)"
        )
    c = _Collections(connect(store), settings)
    with c.errors():
        exists = _collections_exist(c)
        if exists:
            _load(c)
        update = c.meta_value(UPDATE_KEY) if exists else None
        if update is not None and _writer_gone(update):
            raise IndexDamagedError(where(store), [_interrupted(update, settings)])
        if not exists or (raw := c.meta_value(MANIFEST_KEY)) is None:
            raise IndexMissingError(f"no index in {where(store)} yet: run `rag index` first")
    manifest = Manifest.model_validate(raw)
    problems = compatibility_problems(manifest, settings, fingerprint)
    if problems:
        raise IncompatibleIndexError(
            f"the index in {where(store)} was built with other {', '.join(problems)}: run `rag index` to rebuild it"
        )
    return MilvusStore(c.client, settings, manifest)


# ----------------------------------------------------------------------------- writing


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _writer_gone(record: dict) -> bool:
    """Whether the update `record` describes can no longer be running: its process on this
    host has exited, or its writer has not been heard of for STALE_UPDATE_S."""
    host, _, pid = str(record.get("owner", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    return time.time() - float(record.get("heartbeat", 0)) > STALE_UPDATE_S


def _document_rows(doc: Document) -> list[dict]:
    parts = [doc.text[i : i + TEXT_PART_CHARS] for i in range(0, len(doc.text), TEXT_PART_CHARS)] or [""]
    record = {**doc.model_dump(exclude={"text"}), "parts": len(parts)}
    return [
        {
            "part_id": f"{doc.doc_id}#{i}",
            "doc_id": doc.doc_id,
            "part": i,
            "record": record if i == 0 else {},
            "text": part,
            "placeholder": PLACEHOLDER,
        }
        for i, part in enumerate(parts)
    ]


def _chunk_rows(rows: DocumentRows) -> list[dict]:
    return [
        {
            "chunk_id": chunk.chunk_id,
            "doc_id": chunk.doc_id,
            "start": chunk.start,
            "end": chunk.end,
            "text": chunk.text if _fits(chunk.text) else "",
            "lexical": lexical,
            "vector": np.asarray(vector, dtype=np.float32).tolist(),
            "duplicate_of": chunk.duplicate_of or "",
            "copies": [c.model_dump() for c in chunk.copies],
            "embedding_key": key,
        }
        for chunk, lexical, vector, key in zip(
            rows.chunks, lexical_texts(rows.texts), rows.vectors, rows.embedding_keys
        )
    ]


class MilvusWriter:
    """The Milvus `StoreWriter`: the stored index opened for one update."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._c = _Collections(connect(settings.store), settings)
        self.problems: list[str] = []
        self._manifest: Manifest | None = None
        with self._c.errors():
            if not _collections_exist(self._c):
                return
            _load(self._c)
            update = self._c.meta_value(UPDATE_KEY)
            raw = self._c.meta_value(MANIFEST_KEY)
        if update is not None:
            if not _writer_gone(update):
                raise StoreUnavailableError(
                    f"another update of {where(settings.store)} is running ({update.get('owner')}, "
                    f"started {update.get('started_at')}); try again when it has finished"
                )
            self.problems.append(_interrupted(update, settings))
        elif raw is not None:
            self._manifest = Manifest.model_validate(raw)

    @property
    def manifest(self) -> Manifest | None:
        return self._manifest

    @property
    def documents(self) -> Mapping[str, Document]:
        return LiveDocuments(self._c) if self._manifest is not None else {}

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        if self._manifest is None:
            return []
        with self._c.errors():
            return sorted(self._c.chunks_by(f"doc_id == {literal(doc_id)}"), key=lambda c: c.start)

    def vectors_for(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        if not _collections_exist(self._c):
            return {}
        found: dict[str, np.ndarray] = {}
        with self._c.errors():
            for batch in batches(sorted(set(keys))):
                for row in self._c.client.query(
                    self._c.chunks,
                    filter=one_of("embedding_key", batch),
                    output_fields=["embedding_key", "vector"],
                    timeout=self._c.timeout,
                ):
                    found[row["embedding_key"]] = np.asarray(row["vector"], dtype=np.float32)
        return found

    def _mark(self, started_at: str) -> None:
        """Record (again: a heartbeat) that this update is running."""
        value = {"owner": _owner(), "started_at": started_at, "heartbeat": time.time()}
        self._c.client.upsert(
            self._c.meta, [{"key": UPDATE_KEY, "value": value, "placeholder": PLACEHOLDER}], timeout=self._c.timeout
        )

    def apply(self, changes: Changes) -> None:
        if changes.manifest is None:
            raise ValueError("an update must carry the manifest of the index after it")
        c, client = self._c, self._c.client
        started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with c.errors():
            fresh = (
                changes.replace_all or self._manifest is None or self._manifest.dimension != changes.manifest.dimension
            )
            if fresh:
                drop_collections(client, self.settings.store)
                create_collections(client, self.settings.store, changes.manifest.dimension)
            self._mark(started_at)
            # Durable before any row changes: a server killed mid-update may keep some rows but
            # must not lose the record that the update was running (Milvus Lite lost it unflushed).
            client.flush(c.meta, timeout=c.timeout)
            if not fresh:
                gone = sorted(set(changes.removed) | {rows.document.doc_id for rows in changes.upserted})
                for batch in batches(gone):
                    client.delete(c.chunks, filter=one_of("doc_id", batch), timeout=c.timeout)
                    client.delete(c.documents, filter=one_of("doc_id", batch), timeout=c.timeout)
            # Rows per insert: a document part holds up to 64 KB of text, a chunk row usually
            # a few KB; gRPC messages stay within a few MB.
            for collection, rows, size in (
                (c.documents, (row for upsert in changes.upserted for row in _document_rows(upsert.document)), 32),
                (c.chunks, (row for upsert in changes.upserted for row in _chunk_rows(upsert)), 256),
            ):
                for batch in batches(rows, size):
                    client.insert(collection, batch, timeout=c.timeout)
                    self._mark(started_at)
            self._annotate(changes.annotated)
            client.upsert(
                c.meta,
                [{"key": MANIFEST_KEY, "value": changes.manifest.model_dump(mode="json"), "placeholder": PLACEHOLDER}],
                timeout=c.timeout,
            )
            client.delete(c.meta, ids=[UPDATE_KEY], timeout=c.timeout)
            client.flush(c.meta, timeout=c.timeout)
        self._manifest = changes.manifest
        self.problems = []

    def _annotate(self, chunks: list[Chunk]) -> None:
        """New near-copy annotations on stored chunks (their other fields stay as stored)."""
        c = self._c
        annotated = {chunk.chunk_id: chunk for chunk in chunks}
        fields = [*CHUNK_FIELDS, "lexical", "vector", "embedding_key"]
        for batch in batches(sorted(annotated)):
            rows = c.client.query(c.chunks, filter=one_of("chunk_id", batch), output_fields=fields, timeout=c.timeout)
            for row in rows:
                chunk = annotated[row["chunk_id"]]
                row["duplicate_of"] = chunk.duplicate_of or ""
                row["copies"] = [loc.model_dump() for loc in chunk.copies]
                row["vector"] = np.asarray(row["vector"], dtype=np.float32).tolist()
            if rows:
                c.client.upsert(c.chunks, rows, timeout=c.timeout)


# Updates within one process take turns; across processes the update record says one runs.
_WRITE_LOCK = threading.Lock()


@contextmanager
def open_milvus_writer(settings: Settings) -> Iterator[MilvusWriter]:
    """The Milvus index opened for one update."""
    with _WRITE_LOCK:
        yield MilvusWriter(settings)
