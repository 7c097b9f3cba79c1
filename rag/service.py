"""The library's front door: one object that the CLI, the HTTP API and the UI all call.
Models and the index load once, on first use, and the index reloads after every update.
The embedded answer model's server is the service's own: `close()` (or a `with` block) stops it."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from rag.answer.pipeline import Answerer, AnswerEvent
from rag.config import Settings, load_settings
from rag.embed.encoder import Embedder
from rag.errors import (
    BadInputError,
    PayloadTooLargeError,
    UnknownDocumentError,
)
from rag.ingest.incremental import HeldState
from rag.ingest.loading import SUPPORTED_LIST, SUPPORTED_SUFFIXES, LoadReport, load_file
from rag.ingest.pipeline import EmbedProgress, IndexReport, update_index
from rag.llm.local import LocalModel
from rag.requests import AskRequest, CheckRequest, SearchRequest, make_request
from rag.retrieve.retriever import Retriever
from rag.schema import AnswerResponse, Document, DocumentInfo, SearchResponse
from rag.stores import open_store
from rag.stores.base import Store
from rag.text.words import is_unicode_text
from rag.verify.checker import Checker, CheckReport


class RagService:
    """The library's front door: index documents, search them, answer questions with checked
    citations, check another system's citations. Models and the index load on first use.

    Use it as a context manager (or call `close`) so that what it started, such as the
    embedded model's server, stops with it."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._retriever: Retriever | None = None
        self._answerer: Answerer | None = None
        self._local_model: LocalModel | None = None
        # The incremental ingest state between this service's updates, written when it closes.
        self._held_state = HeldState()
        # Called with every finished answer (the server's metrics listen here).
        self.answer_observers: list[Callable[[AnswerResponse], None]] = []

    def __enter__(self) -> RagService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the loaded index and models, and stop the embedded model's server if it
        started. The service stays usable: a later use loads them again (and a later answer
        starts a new server, which another close() stops)."""
        self._reset()
        self._held_state.flush()
        with self._lock:
            local_model, self._local_model = self._local_model, None
        if local_model is not None:
            local_model.close()

    @cached_property
    def embedder(self) -> Embedder:
        return Embedder(self.settings.embedding)

    @property
    def store(self) -> Store:
        """The index, loaded on first use and again after every update."""
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings)
            return self._store

    @property
    def retriever(self) -> Retriever:
        store = self.store
        if self._retriever is None or self._retriever.store is not store:
            self._retriever = Retriever(store, self.embedder, self.settings)
        return self._retriever

    @property
    def local_model(self) -> LocalModel:
        """The embedded answer model for these settings (`local_llm`): made on first use, its
        server started by its first answer and stopped by `close()`."""
        with self._lock:
            if self._local_model is None:
                self._local_model = LocalModel(self.settings.local_llm)
            return self._local_model

    @property
    def answerer(self) -> Answerer:
        retriever = self.retriever
        if self._answerer is None or self._answerer.retriever is not retriever:
            self._answerer = Answerer(retriever, self.embedder, self.settings, self.local_model)
        return self._answerer

    def ask(self, request: AskRequest | str, **options: Any) -> AnswerResponse:
        """A cited answer. `request`: an AskRequest, or the question with AskRequest's other
        fields as keywords (`service.ask("Who?", model="extractive")`)."""
        for event in self.ask_stream(request, **options):
            if event.response is not None:
                return event.response
        raise AssertionError("answer stream ended without a result")

    def ask_stream(self, request: AskRequest | str, **options: Any) -> Iterator[AnswerEvent]:
        """The answer as events: the passages found, the answer's text as it is written, then
        the verified response. Arguments as for `ask`."""
        request = make_request(AskRequest, {"question": request, **options}) if isinstance(request, str) else request
        for event in self.answerer.stream(request):
            if event.response is not None:
                for observe in self.answer_observers:
                    observe(event.response)
            yield event

    def check(self, request: CheckRequest) -> CheckReport:
        limit = self.settings.verification.max_check_chars
        given = [request.answer, request.claim, request.quote, *(c.text for c in request.citations)]
        if sum(len(text or "") for text in given) > limit:
            raise BadInputError(f"the answer to check is over {limit:,} characters (verification.max_check_chars)")
        return Checker(self.retriever, self.answerer.verifier).check(request)

    def _reset(self) -> None:
        with self._lock:
            self._store = None
            self._retriever = None
            self._answerer = None

    def update(
        self,
        paths: list[str | os.PathLike[str]] | None = None,
        remove: list[str] | None = None,
        rebuild: bool = False,
        progress: EmbedProgress | None = None,
        documents: list[Document] | None = None,
    ) -> IndexReport:
        """Sync the index with `paths` (folders are mirrored, deletions included; files are
        added or updated), drop the `remove` doc ids, add ready-made `documents`. Only new
        and changed passages are embedded; `rebuild` re-embeds everything. With
        `ingest.engine = "dask"` the work runs on a Dask cluster (rag.ingest.cluster)."""
        paths = [Path(path) for path in paths] if paths else None
        if self.settings.ingest.engine == "dask":
            from rag.ingest.cluster import update_index_on_cluster

            report = update_index_on_cluster(
                self.settings, paths=paths, remove=remove, rebuild=rebuild, progress=progress, documents=documents
            )
        else:
            report = update_index(
                self.settings,
                paths=paths,
                remove=remove,
                rebuild=rebuild,
                embedder_factory=lambda: self.embedder,
                progress=progress,
                documents=documents,
                held_state=self._held_state,
            )
        if report.written:
            self._reset()
        return report

    def search(self, request: SearchRequest | str, **options: Any) -> SearchResponse:
        """The passages most relevant to a query. `request`: a SearchRequest, or the query with
        SearchRequest's other fields as keywords (`service.search("border guard", k=3)`)."""
        request = make_request(SearchRequest, {"query": request, **options}) if isinstance(request, str) else request
        return self.retriever.search(request.query, k=request.k, mode=request.mode, doc_ids=request.doc_ids)

    def documents(self) -> list[DocumentInfo]:
        store = self.store
        counts = store.chunk_counts()
        return [
            DocumentInfo(
                doc_id=doc.doc_id,
                title=doc.display_title,
                source_url=doc.source_url,
                path=doc.path,
                chars=len(doc.text),
                chunks=counts[doc.doc_id].chunks,
                duplicate_chunks=counts[doc.doc_id].duplicates,
            )
            for doc in sorted(store.documents.values(), key=lambda d: d.doc_id)
        ]

    def document(self, doc_id: str) -> Document:
        doc = self.store.documents.get(doc_id)
        if doc is None:
            raise UnknownDocumentError(f"unknown document: {doc_id} (see `rag docs`)")
        return doc

    def add_document(self, filename: str, data: bytes) -> IndexReport:
        """Save an uploaded file into the corpus folder and index it. The name may not leave
        the folder, and the file is written (atomically) only once it has loaded as a document."""
        name = upload_name(filename)
        limit = self.settings.server.max_upload_bytes
        if len(data) > limit:
            raise PayloadTooLargeError(f"{name} is {len(data):,} bytes; the limit is {limit:,}")
        corpus = self.settings.index.corpus_dir
        corpus.mkdir(parents=True, exist_ok=True)
        target = corpus / name
        # Hidden name: folder indexing skips dot-files, so a half-written upload is never indexed.
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=target.suffix, dir=corpus)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            check = LoadReport()
            if load_file(tmp, corpus, check, self.settings.index.max_file_bytes) is None:
                raise BadInputError(f"cannot index {name}: {check.skipped[0][1]}")
            existed = target.exists()
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        try:
            return self.update(paths=[target])
        except Exception:
            if not existed:  # leave no file behind that the index does not know
                target.unlink(missing_ok=True)
            raise

    def delete_documents(self, doc_ids: list[str]) -> IndexReport:
        """Drop documents from the index and delete the files of those that live in the corpus
        folder: the index mirrors that folder, so a file left there would come back at the next
        `rag index`. Files indexed from elsewhere are left alone."""
        docs = [self.document(doc_id) for doc_id in doc_ids]
        report = self.update(remove=doc_ids)
        corpus = self.settings.index.corpus_dir.resolve()
        for doc in docs:
            path = Path(doc.path).resolve()
            if path.is_relative_to(corpus):
                path.unlink(missing_ok=True)
        return report

    def changed_on_disk(self) -> list[str]:
        """Indexed documents whose file changed or vanished since indexing."""
        changed = []
        for doc in self.store.documents.values():
            path = Path(doc.path)
            try:
                stat = path.stat()
            except OSError:
                changed.append(doc.doc_id)
                continue
            if stat.st_size != doc.size or (
                stat.st_mtime_ns != doc.mtime_ns and hashlib.sha256(path.read_bytes()).hexdigest() != doc.sha256
            ):
                changed.append(doc.doc_id)
        return changed


# The longest file name ext4, XFS, btrfs and most others take, in bytes (of UTF-8 here).
MAX_NAME_BYTES = 255


def upload_name(filename: str) -> str:
    """A plain file name of a supported type: no folders, no `..`, no hidden files, and one the
    file system can hold."""
    name = filename.strip()
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name or not is_unicode_text(name):
        raise BadInputError(f"invalid file name {name!r}: give a plain name such as notes.md, without folders")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise BadInputError(f"file name too long: {len(name.encode())} bytes of UTF-8, the limit is {MAX_NAME_BYTES}")
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES or not suffix:
        raise BadInputError(f"unsupported file type '{suffix or name}' (use {SUPPORTED_LIST})")
    return name
