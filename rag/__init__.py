"""Questions answered with citations you can check: hybrid retrieval over your documents, an
answer whose every citation is verified against the span it points at, offline by default.

    from rag import RagService, Settings

    with RagService(Settings().replace(index={"dir": "index"})) as service:
        service.update(paths=["seeds"])
        answer = service.ask("How many commune-level military party cells were established?")

`RagService` is the one front door (the CLI, the HTTP API and the web interface call it);
requests and responses are pydantic models; every setting lives in `Settings`. Names load on
first use, so `import rag` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "RagService": "rag.service",
    "Settings": "rag.config",
    "load_settings": "rag.config",
    "SearchRequest": "rag.requests",
    "AskRequest": "rag.requests",
    "AskOptions": "rag.requests",
    "CheckRequest": "rag.requests",
    "GivenCitation": "rag.requests",
    "Turn": "rag.requests",
    "SearchResponse": "rag.schema",
    "SearchHit": "rag.schema",
    "AnswerResponse": "rag.schema",
    "Citation": "rag.schema",
    "Document": "rag.schema",
    "DocumentInfo": "rag.schema",
    "CheckReport": "rag.verify.checker",
    "AnswerEvent": "rag.answer.pipeline",
    "IndexReport": "rag.ingest.pipeline",
    "Store": "rag.stores.base",
    "Candidate": "rag.stores.base",
    "RagError": "rag.errors",
    "BadInputError": "rag.errors",
    "IndexMissingError": "rag.errors",
    "IncompatibleIndexError": "rag.errors",
    "IndexDamagedError": "rag.errors",
    "UnknownDocumentError": "rag.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rag' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from rag.answer.pipeline import AnswerEvent
    from rag.config import Settings, load_settings
    from rag.errors import (
        BadInputError,
        IncompatibleIndexError,
        IndexDamagedError,
        IndexMissingError,
        RagError,
        UnknownDocumentError,
    )
    from rag.ingest.pipeline import IndexReport
    from rag.requests import AskOptions, AskRequest, CheckRequest, GivenCitation, SearchRequest, Turn
    from rag.schema import AnswerResponse, Citation, Document, DocumentInfo, SearchHit, SearchResponse
    from rag.service import RagService
    from rag.stores.base import Candidate, Store
    from rag.verify.checker import CheckReport
