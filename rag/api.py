"""The HTTP API: the same service and JSON shapes as the CLI's `--json`, with OpenAPI docs at
/docs. Bad input is a 4xx with a one-line `detail`; nothing else ever shows a traceback.

Endpoints are plain (sync) functions, so FastAPI runs them in its thread pool: searches run
side by side, and answers from the embedded model wait in its server's queue in arrival order."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from itertools import chain
from typing import Annotated

from fastapi import APIRouter, FastAPI, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, Field

from rag.answering import AnswerEvent, AskOptions
from rag.checking import CheckReport, CheckRequest
from rag.config import SearchMode
from rag.conversation import Turn
from rag.errors import BadInputError, IndexMissingError, PayloadTooLargeError, RagError, UnknownDocumentError
from rag.indexing import IndexReport
from rag.schema import AnswerResponse, Document, DocumentInfo, SearchResponse
from rag.service import RagService, upload_name

log = logging.getLogger(__name__)


class SearchRequest(BaseModel):
    query: str
    k: int = Field(5, ge=1, le=1000)
    mode: SearchMode = "hybrid"
    doc_ids: list[str] | None = None


class AskRequest(BaseModel):
    question: str
    k: int | None = Field(None, ge=1, le=50)
    mode: SearchMode | None = None
    model: str | None = Field(None, description="litellm model string or `extractive`; default: the embedded model")
    doc_ids: list[str] | None = None
    api_base: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    timeout_s: float | None = Field(None, gt=0)
    history: list[Turn] = Field(default_factory=list, description="Earlier turns: a follow-up is rewritten into a standalone question")

    def options(self) -> AskOptions:
        return AskOptions(
            k=self.k, mode=self.mode, doc_ids=self.doc_ids, model=self.model, api_base=self.api_base,
            temperature=self.temperature, max_tokens=self.max_tokens, timeout_s=self.timeout_s,
        )


class Health(BaseModel):
    status: str
    documents: int
    passages: int
    embedding_model: str
    answer_model: str


class DocumentList(BaseModel):
    documents: list[DocumentInfo]


class IndexChange(BaseModel):
    doc_id: str
    added: list[str]
    updated: list[str]
    removed: list[str]
    documents: int
    passages: int


def status_code(error: RagError) -> int:
    if isinstance(error, UnknownDocumentError):
        return 404
    if isinstance(error, PayloadTooLargeError):
        return 413
    if isinstance(error, IndexMissingError):
        return 503
    return 400 if isinstance(error, BadInputError) else 500


def create_api(service: RagService) -> FastAPI:
    app = FastAPI(
        title="Cited answers",
        summary="Questions answered with citations you can check.",
        version="0.1.0",
    )

    @app.exception_handler(RagError)
    async def rag_error(_: Request, exc: RagError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_code(exc))

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse({"detail": f"unexpected {type(exc).__name__}: {exc}"}, status_code=500)

    app.include_router(router(service))
    return app


def router(service: RagService) -> APIRouter:
    api = APIRouter()

    @api.get("/health")
    def health() -> Health:
        index = service.index
        return Health(
            status="ok", documents=len(index.documents), passages=index.manifest.canonical_chunks,
            embedding_model=service.settings.embedding.model, answer_model=service.settings.answer.model,
        )

    @api.post("/search")
    def search(request: SearchRequest) -> SearchResponse:
        return service.search(request.query, k=request.k, mode=request.mode, doc_ids=request.doc_ids)

    @api.post("/ask")
    def ask(request: AskRequest) -> AnswerResponse:
        return service.ask(request.question, request.options(), request.history)

    @api.post("/ask/stream", responses={200: {"content": {"text/event-stream": {}}}})
    async def ask_stream(request: AskRequest) -> EventSourceResponse:
        """Server-sent events: `passages` (the retrieved passages), `token` (answer text as the
        model writes it), then `answer` (the full verified answer, exactly as POST /ask returns
        it) or `error` ({"detail", "status"}) if the answer fails once streaming has begun."""
        events = service.ask_stream(request.question, request.options(), request.history)
        # The first event comes after validation and retrieval, so bad input still gets a plain 4xx.
        first = await run_in_threadpool(next, events)
        return EventSourceResponse(_sse(chain([first], events)))

    @api.post("/check")
    def check(request: CheckRequest) -> CheckReport:
        return service.check(request)

    @api.get("/documents")
    def list_documents() -> DocumentList:
        return DocumentList(documents=service.documents())

    @api.post("/documents", status_code=201)
    def upload_document(file: Annotated[UploadFile, File(description="A .txt, .md or .html file")]) -> IndexChange:
        limit = service.settings.server.max_upload_bytes
        data = file.file.read(limit + 1)  # never more than the limit in memory
        name = upload_name(file.filename or "")
        return _change(name, service.add_document(name, data))

    @api.get("/documents/{doc_id:path}")
    def get_document(doc_id: str) -> Document:
        return service.document(doc_id)

    @api.delete("/documents/{doc_id:path}")
    def delete_document(doc_id: str) -> IndexChange:
        return _change(doc_id, service.delete_document(doc_id))

    return api


def _sse(events: Iterator[AnswerEvent]) -> Iterator[bytes]:
    """Encode answer events; a sync iterator, so Starlette runs it in its thread pool."""

    def encode(name: str, payload: object) -> bytes:
        return format_sse_event(data_str=json.dumps(payload, ensure_ascii=False), event=name)

    try:
        for event in events:
            if event.kind == "passages":
                yield encode("passages", [p.model_dump() for p in event.passages or []])
            elif event.kind == "token":
                yield encode("token", {"text": event.text})
            elif event.response is not None:
                yield encode("answer", event.response.model_dump())
    except RagError as exc:  # the stream has started: the error travels as an event
        yield encode("error", {"detail": str(exc), "status": status_code(exc)})
    except Exception as exc:
        log.exception("answer stream failed")
        yield encode("error", {"detail": f"unexpected {type(exc).__name__}: {exc}", "status": 500})


def _change(doc_id: str, report: IndexReport) -> IndexChange:
    return IndexChange(
        doc_id=doc_id, added=report.added, updated=report.updated, removed=report.removed,
        documents=report.documents, passages=report.canonical_chunks,
    )
