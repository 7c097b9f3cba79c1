"""The service as MCP tools (official MCP Python SDK): `search`, `ask`, `check` and
`list_documents`, over stdio (`rag mcp`) or streamable HTTP at /mcp on `rag serve`.

Each tool's input schema is the JSON schema of the request model the HTTP API takes for the
same call (SearchRequest, AskRequest, CheckRequest), field by field, and its output is the same
JSON object the API returns (structured content, with its schema). A bad request or a failure
is a tool error whose text is the API's one-line `detail`.

Over HTTP the server's rules apply as for the API: the same keys (rag/serve/access.py, around the
whole app), the model policy of POST /ask, and the same queue of answers. Over stdio the tools
run as their user, like the CLI, and any model may be chosen."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ValidationError
from starlette.routing import BaseRoute

from rag.errors import RagError
from rag.requests import AskRequest, CheckRequest, SearchRequest
from rag.schema import AnswerResponse, SearchResponse
from rag.serve.api import AnswerQueue, DocumentList, allowed
from rag.service import RagService
from rag.verify.checker import CheckReport

MCP_PATH = "/mcp"
INSTRUCTIONS = (
    "Questions answered from the indexed documents, with citations checked against the exact span they "
    "point at. `ask` answers (or says the documents do not hold the answer); `search` returns ranked "
    "passages; `check` verifies the citations of any answer or a single claim; `list_documents` lists "
    "the documents. Offsets satisfy document_text[start:end] == text."
)
READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)

Request = TypeVar("Request", bound=BaseModel)


def model_tool(
    model: type[Request], call: Callable[[Request], BaseModel], returns: type[BaseModel]
) -> Callable[..., BaseModel]:
    """A tool function whose parameters are the fields of `model` (types, defaults, limits and
    descriptions), so the SDK derives the tool's input schema from the API's request model; the
    arguments are validated by the model itself before `call`."""

    def tool(**arguments: Any) -> BaseModel:
        try:
            request = model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(str(exc)) from None
        return _run(lambda: call(request))

    tool.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[field.annotation, field])
            for name, field in model.model_fields.items()
        ],
        return_annotation=returns,
    )
    return tool


def _run(call: Callable[[], BaseModel]) -> BaseModel:
    """The call's result, or a tool error with the API's one-line message (the SDK would hide
    the text of any other exception)."""
    try:
        return call()
    except RagError as exc:
        raise ToolError(str(exc)) from None


def create_mcp(service: RagService, queue: AnswerQueue | None = None) -> MCPServer:
    """The tools over `service`. With `queue` (the HTTP server's), clients get the server's
    model policy and answers wait in its queue; without, the caller is trusted (stdio)."""
    server = MCPServer(name="cited-rag", instructions=INSTRUCTIONS, log_level="WARNING")

    def ask(request: AskRequest) -> AnswerResponse:
        if queue is None:
            return service.ask(request)
        with queue.place(allowed(service, request).model):
            return service.ask(request)

    def list_documents() -> DocumentList:
        """Every indexed document: id, title, source, size, passages and near-copies."""
        return _run(lambda: DocumentList(documents=service.documents()))

    server.add_tool(
        model_tool(SearchRequest, service.search, SearchResponse),
        name="search",
        annotations=READ_ONLY,
        description="Ranked passages for a query (hybrid, dense or BM25), each with its document id and exact offsets.",
    )
    server.add_tool(
        model_tool(AskRequest, ask, AnswerResponse),
        name="ask",
        annotations=READ_ONLY,
        description=(
            "A cited answer from the documents: `answer` with [n] markers, `citations` (each verified against "
            "its span), or `abstained` with a `notice` saying why the documents do not answer it. Earlier turns "
            "in `history` make a follow-up answerable."
        ),
    )
    server.add_tool(
        model_tool(CheckRequest, service.check, CheckReport),
        name="check",
        annotations=READ_ONLY,
        description=(
            "Verify the citations of an answer ({answer, citations: [{id, doc_id, start, end, text}]}) or find the "
            "evidence for a single `claim`: a verdict per sentence and citation, with the best supporting span."
        ),
    )
    server.add_tool(list_documents, name="list_documents", annotations=READ_ONLY)
    return server


def http_routes(server: MCPServer) -> list[BaseRoute]:
    """The streamable HTTP endpoint, as routes of the host app, so the app's middleware (keys,
    origins, body limit, metrics) is around it. Stateless with JSON replies: the tools need no
    session and send no notifications. The SDK's own Host and Origin checks are off: the app's
    middleware judges origins, and its Host check would refuse a server behind a proxy."""
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return list(app.routes)
