"""What a caller asks for: one request model per operation, shared by the Python API, the CLI,
the HTTP API and the web interface. Every field but the text is optional; a field left out
takes its value from the settings, in the stage that uses it, so no front end carries a
default of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rag.config import SearchMode
from rag.errors import BadInputError

Request = TypeVar("Request", bound=BaseModel)


class Turn(BaseModel):
    """An earlier question of the conversation and the answer it got."""

    question: str
    answer: str = ""


class SearchRequest(BaseModel):
    """Find the passages most relevant to `query`."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="A question or keywords.")
    k: int | None = Field(None, ge=1, le=1000, description="Passages to return; default: setting retrieval.k.")
    mode: SearchMode | None = Field(
        None,
        description="hybrid (meaning and keywords fused), dense (meaning) or bm25 (keywords); default: setting retrieval.mode.",
    )
    doc_ids: list[str] | None = Field(None, description="Only search these documents (ids as listed by /documents).")


class AskOptions(BaseModel):
    """How a question is answered; shared by every question of an evaluation run."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(
        None, ge=1, le=50, description="Passages searched for evidence sentences; default: setting evidence.passages."
    )
    mode: SearchMode | None = Field(None, description="Retrieval mode; default: setting retrieval.mode.")
    doc_ids: list[str] | None = Field(None, description="Only use these documents.")
    model: str | None = Field(
        None,
        description="litellm model string, or `extractive` (sentences of the passages, no LLM); default: setting answer.model.",
    )
    api_base: str | None = Field(
        None, description="Base URL of an OpenAI-compatible server; default: setting answer.api_base."
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Default: setting answer.temperature.")
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Default: setting answer.max_tokens.")
    timeout_s: float | None = Field(
        None, gt=0, description="Seconds to wait for the model before falling back; default: setting answer.timeout_s."
    )


class AskRequest(AskOptions):
    """Answer `question` with citations, each checked against the passage it cites."""

    question: str = Field(description="The question.")
    history: list[Turn] = Field(
        default_factory=list, description="Earlier turns: a follow-up is first rewritten into a standalone question."
    )


class GivenCitation(BaseModel):
    """A citation as another system gives it: a `text`, or a `doc_id` known to the index
    (offsets optional)."""

    id: int
    doc_id: str | None = None
    start: int | None = None
    end: int | None = None
    text: str | None = None


class CheckRequest(BaseModel):
    """Check the citations of an answer (`answer` with `[n]` markers and its `citations`, as
    `rag ask --json` prints them), or one `claim` against a document span or the index."""

    answer: str | None = None
    citations: list[GivenCitation] = Field(default_factory=list)
    claim: str | None = None
    doc_id: str | None = None
    start: int | None = None
    end: int | None = None
    quote: str | None = None


def make_request(kind: type[Request], fields: dict[str, Any], name: Callable[[str], str] = str) -> Request:
    """`kind(**fields)`, with a bad field a BadInputError of one line naming it (`name` turns a
    field name into what the caller knows it as, e.g. a command-line option)."""
    try:
        return kind(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(map(str, error["loc"])) or "request"
        raise BadInputError(f"{name(field)}: {error['msg']}") from None
