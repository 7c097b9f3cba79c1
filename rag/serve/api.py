"""The HTTP API: the same service and JSON shapes as the CLI's `--json`, with OpenAPI docs at
/docs. Bad input is a 4xx with a one-line `detail`; nothing else ever shows a traceback. Keys,
origins, body sizes and security headers are checked around it (rag/serve/access.py).

Endpoints are plain (sync) functions, so FastAPI runs them in its thread pool: searches run
side by side, and answers from the embedded model wait for it in arrival order, up to
`server.max_queued_answers` of them; one more is refused (503) at once."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from itertools import chain
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel

from rag import __version__
from rag.answer.pipeline import AnswerEvent
from rag.config import EXTRACTIVE
from rag.errors import (
    BadInputError,
    IndexMissingError,
    PayloadTooLargeError,
    RagError,
    ServerBusyError,
    StoreSettingsError,
    StoreUnavailableError,
    UnknownDocumentError,
)
from rag.ingest.loading import SUPPORTED_LIST
from rag.ingest.pipeline import IndexReport
from rag.requests import AskRequest, CheckRequest, SearchRequest
from rag.schema import AnswerResponse, Document, DocumentInfo, SearchResponse
from rag.serve.access import (
    LOGIN_PATH,
    LOGOUT_PATH,
    METRICS_PATH,
    Keys,
    check_client_model,
    load_keys,
    login_page,
    login_response,
    logout_response,
    lone_surrogate_field,
    protect,
)
from rag.service import RagService, upload_name
from rag.verify.checker import CheckReport

log = logging.getLogger(__name__)


class Health(BaseModel):
    """Without a key (when keys are set) only `status`: the probe is public, the rest is not."""

    status: str
    documents: int | None = None
    passages: int | None = None
    embedding_model: str | None = None
    answer_model: str | None = None


class DocumentList(BaseModel):
    documents: list[DocumentInfo]


class IndexChange(BaseModel):
    doc_id: str
    added: list[str]
    updated: list[str]
    removed: list[str]
    documents: int
    passages: int


# Seconds a client refused for a full answer queue is told to wait before trying again.
BUSY_RETRY_AFTER_S = 10


def status_code(error: RagError) -> int:
    if isinstance(error, UnknownDocumentError):
        return 404
    if isinstance(error, PayloadTooLargeError):
        return 413
    if isinstance(error, (IndexMissingError, ServerBusyError, StoreSettingsError, StoreUnavailableError)):
        return 503
    return 400 if isinstance(error, BadInputError) else 500


class AnswerQueue:
    """Model answers being written or waiting for the model: at most what the model serves at
    once plus `max_queued_answers`; one more is refused at once instead of waiting without end.
    Extractive answers need no model and are not counted."""

    def __init__(self, service: RagService) -> None:
        settings = service.settings
        self._places = threading.BoundedSemaphore(
            settings.local_llm.max_concurrent + settings.server.max_queued_answers
        )
        self._default_model = settings.answer.model

    @contextmanager
    def place(self, model: str | None) -> Iterator[None]:
        if (model or self._default_model) == EXTRACTIVE:
            yield
            return
        if not self._places.acquire(blocking=False):
            raise ServerBusyError(f"too many answers are waiting for the model; try again in {BUSY_RETRY_AFTER_S} s")
        try:
            yield
        finally:
            self._places.release()

    def held(self, model: str | None, events: Iterator[AnswerEvent]) -> Iterator[AnswerEvent]:
        """`events`, holding a place from the first event until the last."""
        with self.place(model):
            yield from events


def create_api(service: RagService) -> FastAPI:
    """The API, the OpenAI-compatible /v1, the MCP tools at /mcp and /metrics, inside the
    access checks (keys, origins, body size, headers: rag/serve/access.py). The app closes the
    service when it shuts down (stopping the embedded model's server)."""
    # Imported here: these modules build on this one's request models and queue.
    from rag.serve.mcp_tools import create_mcp, http_routes
    from rag.serve.metrics import MetricsMiddleware, ServerMetrics
    from rag.serve.openai_compat import openai_router

    queue = AnswerQueue(service)
    metrics = ServerMetrics(service)
    mcp = create_mcp(service, queue)
    mcp_routes = http_routes(mcp)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with metrics.observing(), mcp.session_manager.run():
            yield
        await run_in_threadpool(service.close)

    app = FastAPI(
        title="Cited answers",
        summary="Questions answered with citations you can check.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.keys = keys = load_keys(service.settings.server)
    app.state.answer_queue = queue  # shared with the web interface
    protect(app, service.settings.server, keys)
    app.add_middleware(MetricsMiddleware, metrics=metrics, router=app.router)  # outermost: refusals count too

    @app.exception_handler(RagError)
    async def rag_error(_: Request, exc: RagError) -> JSONResponse:
        headers = {"Retry-After": str(BUSY_RETRY_AFTER_S)} if isinstance(exc, ServerBusyError) else None
        return JSONResponse({"detail": str(exc)}, status_code=status_code(exc), headers=headers)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse({"detail": f"unexpected {type(exc).__name__}: {exc}"}, status_code=500)

    app.include_router(router(service, keys, queue))
    app.include_router(openai_router(service, queue))
    app.add_api_route(METRICS_PATH, metrics.response, methods=["GET"], include_in_schema=False)
    app.router.routes.extend(mcp_routes)
    if keys.enabled:
        app.include_router(login_router(keys))
    return app


async def reject_lone_surrogates(request: Request) -> None:
    """A JSON string escape such as \\ud800 decodes to text that cannot be stored or shown: 400
    naming the field, before the text reaches the index, the model or an error message."""
    if "json" not in request.headers.get("content-type", ""):
        return
    try:
        body = await request.json()  # parsed once: FastAPI has parsed and cached it already
    except ValueError:
        return  # FastAPI answers malformed JSON itself
    field = lone_surrogate_field(body)
    if field is not None:
        raise BadInputError(f"{field}: not valid Unicode text (it holds a lone surrogate such as \\ud800)")


def allowed(service: RagService, request: AskRequest) -> AskRequest:
    """A client's request, once its model and `api_base` are ones the server lets clients
    choose (rag/serve/access.py check_client_model)."""
    check_client_model(service.settings.server, service.settings.answer.model, request.model, request.api_base)
    return request


def router(service: RagService, keys: Keys, queue: AnswerQueue) -> APIRouter:
    api = APIRouter(dependencies=[Depends(reject_lone_surrogates)])

    @api.get("/health", response_model_exclude_none=True)
    def health(request: Request) -> Health:
        if keys.enabled and keys.role(request.headers) is None:
            return Health(status="ok")
        store = service.store
        return Health(
            status="ok",
            documents=len(store.documents),
            passages=store.chunk_total,
            embedding_model=service.settings.embedding.model,
            answer_model=service.settings.answer.model,
        )

    @api.post("/search")
    def search(request: SearchRequest) -> SearchResponse:
        return service.search(request)

    @api.post("/ask", responses={503: {"description": "Too many answers waiting for the model (Retry-After)"}})
    def ask(request: AskRequest) -> AnswerResponse:
        with queue.place(allowed(service, request).model):
            return service.ask(request)

    @api.post(
        "/ask/stream", responses={200: {"content": {"text/event-stream": {}}}, 503: {"description": "As for /ask"}}
    )
    async def ask_stream(request: AskRequest) -> EventSourceResponse:
        """Server-sent events: `passages` (the retrieved passages), `token` (answer text as the
        model writes it), then `answer` (the full verified answer, exactly as POST /ask returns
        it) or `error` ({"detail", "status"}) if the answer fails once streaming has begun."""
        events = queue.held(allowed(service, request).model, service.ask_stream(request))
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
    def upload_document(file: Annotated[UploadFile, File(description=f"A {SUPPORTED_LIST} file")]) -> IndexChange:
        limit = service.settings.server.max_upload_bytes
        data = file.file.read(limit + 1)  # never more than the limit in memory
        name = upload_name(file.filename or "")
        return _change(name, service.add_document(name, data))

    @api.get("/documents/{doc_id:path}")
    def get_document(doc_id: str) -> Document:
        return service.document(doc_id)

    @api.delete("/documents/{doc_id:path}")
    def delete_document(doc_id: str) -> IndexChange:
        return _change(doc_id, service.delete_documents([doc_id]))

    return api


def login_router(keys: Keys) -> APIRouter:
    """The form the web interface sends a browser to when keys are set, and the way out."""
    login = APIRouter(include_in_schema=False)

    @login.get(LOGIN_PATH, response_class=HTMLResponse)
    def login_form() -> str:
        return login_page()

    @login.post(LOGIN_PATH)
    def log_in(request: Request, key: Annotated[str, Form()]) -> Response:
        return login_response(keys, key.strip(), secure=request.url.scheme == "https")

    @login.get(LOGOUT_PATH)
    def log_out() -> Response:
        return logout_response()

    return login


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
        doc_id=doc_id,
        added=report.added,
        updated=report.updated,
        removed=report.removed,
        documents=report.documents,
        passages=report.chunks,
    )
