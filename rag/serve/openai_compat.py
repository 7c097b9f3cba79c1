"""The OpenAI chat API over the same service: `POST /v1/chat/completions` (plain or streamed)
and `GET /v1/models`, so chat clients and SDKs that speak it can ask the documents.

- The model name chooses the answering model: `rag` is the server's answer model; `extractive`
  and others only as the server lets clients choose them (rag/serve/access.py check_client_model),
  exactly as for POST /ask.
- The last message is the question (it must be the user's); earlier user and assistant messages
  are the conversation a follow-up is rewritten with. System messages are not instructions to
  this service and are skipped: answers come from the documents only.
- The reply's content is the cited answer (markers like [1]); the verified citations ride along
  in `citations`, and the whole answer as POST /ask returns it in `answer` (`abstained`,
  `notice`, `confidence`...). Streamed, they come in the last chunk, beside finish_reason.
- A stream carries only verified text: the answer is checked as a whole before it is shown, and
  a withheld answer is never shown at all, so the content arrives in one piece after the role
  chunk (sent once retrieval is done), never as the model's unverified tokens.

Optional extensions of the request (the openai client's `extra_body`): `k`, `mode`, `doc_ids`."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from itertools import chain
from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rag.answer.pipeline import AnswerEvent
from rag.config import EXTRACTIVE, SearchMode
from rag.errors import BadInputError, RagError, ServerBusyError
from rag.requests import AskRequest, Turn
from rag.schema import AnswerResponse, Citation
from rag.serve.api import BUSY_RETRY_AFTER_S, AnswerQueue, allowed, reject_lone_surrogates, status_code
from rag.service import RagService

log = logging.getLogger(__name__)

DEFAULT_MODEL = "rag"
OWNER = "cited-rag"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_calls...: nothing this service uses

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.type != "text" for part in self.content):
            raise BadInputError("messages: only text content is read (no images, audio or files)")
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat completion request. Sampling options this service has no use for (top_p,
    stop, tools...) are accepted and ignored; `k`, `mode` and `doc_ids` are extensions."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(
        description="`rag` (the server's answer model), `extractive`, or a model the server lets clients choose"
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one answer per request")
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    k: int | None = Field(None, description="Passages searched for evidence (as POST /ask)")
    mode: SearchMode | None = None
    doc_ids: list[str] | None = None

    def ask_request(self) -> AskRequest:
        """The same request as POST /ask takes, so the same limits and model policy apply."""
        *earlier, last = [m for m in self.messages if m.role in ("user", "assistant")] or [None]
        if last is None or last.role != "user":
            raise BadInputError("messages: the last message must be the user's question")
        history: list[Turn] = []
        for message in earlier:
            if message.role == "user":
                history.append(Turn(question=message.text()))
            elif history and not history[-1].answer:
                history[-1].answer = message.text()
        try:
            return AskRequest(
                question=last.text(),
                model=None if self.model == DEFAULT_MODEL else self.model,
                history=history,
                k=self.k,
                mode=self.mode,
                doc_ids=self.doc_ids,
                temperature=self.temperature,
                max_tokens=self.max_completion_tokens or self.max_tokens,
            )
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


class ReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class CompletionChoice(BaseModel):
    index: int = 0
    message: ReplyMessage
    finish_reason: Literal["stop"] = "stop"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    citations: list[Citation] = Field(description="The verified citations of the answer (as POST /ask)")
    answer: AnswerResponse = Field(description="The whole answer, exactly as POST /ask returns it")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = OWNER


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def openai_router(service: RagService, queue: AnswerQueue) -> APIRouter:
    """The routes under /v1; keys, origins and body limits are checked around them as for every
    route (rag/serve/access.py)."""
    api = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], dependencies=[Depends(reject_lone_surrogates)])
    settings = service.settings

    @api.get("/models")
    def list_models() -> ModelList:
        """`rag` (the server's answer model), then the model names a client may also choose."""
        names = [DEFAULT_MODEL, settings.answer.model, EXTRACTIVE, *settings.server.allow_client_models]
        return ModelList(data=[ModelCard(id=name) for name in dict.fromkeys(names) if name != "*"])

    @api.post(
        "/chat/completions",
        response_model=ChatCompletion,
        responses={200: {"content": {"text/event-stream": {}}}, 503: {"description": "As for POST /ask"}},
    )
    async def chat_completions(request: ChatCompletionRequest) -> Response:
        try:
            ask = allowed(service, request.ask_request())
            if request.stream:
                events = queue.held(ask.model, service.ask_stream(ask))
                # Validation and retrieval happen before the first event: bad input is a plain 4xx.
                first = await run_in_threadpool(next, events)
                return StreamingResponse(_chunks(request.model, chain([first], events)), media_type="text/event-stream")
            with queue.place(ask.model):
                response = await run_in_threadpool(service.ask, ask)
        except RagError as exc:
            return _error_response(exc)
        completion = ChatCompletion(
            id=_completion_id(),
            created=int(time.time()),
            model=request.model,
            choices=[CompletionChoice(message=ReplyMessage(content=response.answer))],
            citations=response.citations,
            answer=response,
        )
        return JSONResponse(completion.model_dump(mode="json"))

    return api


def _error_body(exc: RagError) -> dict[str, object]:
    """The project's one-line `detail`, and the same in the `error` object OpenAI clients read."""
    status = status_code(exc)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"detail": str(exc), "error": {"message": str(exc), "type": kind, "code": status}}


def _error_response(exc: RagError) -> JSONResponse:
    headers = {"Retry-After": str(BUSY_RETRY_AFTER_S)} if isinstance(exc, ServerBusyError) else None
    return JSONResponse(_error_body(exc), status_code=status_code(exc), headers=headers)


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _chunks(model: str, events: Iterator[AnswerEvent]) -> Iterator[str]:
    """OpenAI's streamed chunks as server-sent events: the role once retrieval is done, the
    verified answer, then finish_reason with the citations, and `[DONE]`. A sync iterator, so
    Starlette runs it (and the answer) in its thread pool."""
    base = {"id": _completion_id(), "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, str], finish_reason: str | None = None, **extra: object) -> str:
        payload = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    try:
        for event in events:
            if event.kind == "passages":
                yield chunk({"role": "assistant", "content": ""})
            elif event.response is not None:
                response = event.response
                yield chunk({"content": response.answer})
                yield chunk(
                    {},
                    "stop",
                    citations=[c.model_dump(mode="json") for c in response.citations],
                    answer=response.model_dump(mode="json"),
                )
    except RagError as exc:  # the stream has begun: the error travels as a chunk, as OpenAI's do
        yield f"data: {json.dumps(_error_body(exc), ensure_ascii=False)}\n\n"
        return
    except Exception as exc:
        log.exception("chat completion stream failed")
        yield f"data: {json.dumps({'error': {'message': f'unexpected {type(exc).__name__}: {exc}', 'type': 'server_error', 'code': 500}})}\n\n"
        return
    yield "data: [DONE]\n\n"
