"""The library's front door: one object that the CLI, the HTTP API and the UI all call.
Models and the index load once, on first use, and the index reloads after every update."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from rag.answering import Answerer, AnswerEvent, AskOptions
from rag.checking import Checker, CheckReport, CheckRequest
from rag.config import SearchMode, Settings, load_settings
from rag.embedding import Embedder, model_fingerprint
from rag.errors import BadInputError, IncompatibleIndexError
from rag.indexing import EmbedProgress, IndexReport, update_index
from rag.retrieval import Retriever
from rag.schema import AnswerResponse, Document, DocumentInfo, SearchResponse
from rag.store import IndexData, compatibility_problems, read_index


class RagService:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self._lock = threading.Lock()
        self._index: IndexData | None = None
        self._retriever: Retriever | None = None
        self._answerer: Answerer | None = None

    @cached_property
    def embedder(self) -> Embedder:
        return Embedder(self.settings.embedding)

    @property
    def index(self) -> IndexData:
        with self._lock:
            if self._index is None:
                index = read_index(self.settings.index.dir)
                problems = compatibility_problems(index.manifest, self.settings, model_fingerprint(self.settings.embedding.model))
                if problems:
                    raise IncompatibleIndexError(
                        f"the index in {self.settings.index.dir}/ was built with other {', '.join(problems)}: "
                        "run `rag index` to rebuild it"
                    )
                self._index = index
            return self._index

    @property
    def retriever(self) -> Retriever:
        index = self.index
        if self._retriever is None or self._retriever.index is not index:
            self._retriever = Retriever(index, self.embedder, self.settings)
        return self._retriever

    @property
    def answerer(self) -> Answerer:
        retriever = self.retriever
        if self._answerer is None or self._answerer.retriever is not retriever:
            self._answerer = Answerer(retriever, self.embedder, self.settings)
        return self._answerer

    def ask(self, question: str, options: AskOptions | None = None) -> AnswerResponse:
        return self.answerer.answer(question, options)

    def ask_stream(self, question: str, options: AskOptions | None = None) -> Iterator[AnswerEvent]:
        return self.answerer.stream(question, options)

    def check(self, request: CheckRequest) -> CheckReport:
        return Checker(self.retriever, self.answerer.verifier).check(request)

    def _reset(self) -> None:
        with self._lock:
            self._index = None
            self._retriever = None
            self._answerer = None

    def update(
        self,
        paths: list[Path] | None = None,
        remove: list[str] | None = None,
        rebuild: bool = False,
        progress: EmbedProgress | None = None,
        documents: list[Document] | None = None,
    ) -> IndexReport:
        report = update_index(
            self.settings, paths=paths, remove=remove, rebuild=rebuild,
            embedder_factory=lambda: self.embedder, progress=progress, documents=documents,
        )
        if report.written:
            self._reset()
        return report

    def search(
        self, query: str, k: int | None = None, mode: SearchMode | None = None, doc_ids: list[str] | None = None
    ) -> SearchResponse:
        return self.retriever.search(query, k=k, mode=mode, doc_ids=doc_ids)

    def documents(self) -> list[DocumentInfo]:
        index = self.index
        counts: dict[str, list[int]] = {doc_id: [0, 0] for doc_id in index.documents}
        for chunk in index.chunks:
            counts[chunk.doc_id][0] += 1
            counts[chunk.doc_id][1] += chunk.duplicate_of is not None
        return [
            DocumentInfo(
                doc_id=doc.doc_id, title=doc.display_title, source_url=doc.source_url, path=doc.path,
                chars=len(doc.text), chunks=counts[doc.doc_id][0], duplicate_chunks=counts[doc.doc_id][1],
            )
            for doc in sorted(index.documents.values(), key=lambda d: d.doc_id)
        ]

    def document(self, doc_id: str) -> Document:
        doc = self.index.documents.get(doc_id)
        if doc is None:
            raise BadInputError(f"unknown document: {doc_id} (see `rag docs`)")
        return doc

    def changed_on_disk(self) -> list[str]:
        """Indexed documents whose file changed or vanished since indexing."""
        changed = []
        for doc in self.index.documents.values():
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
