"""What the readers of binary document formats (PDF, Word) hand to loading."""

from __future__ import annotations

from dataclasses import dataclass, field

from rag.schema import Block


class UnreadableDocumentError(Exception):
    """A file of a supported type that yields no document; the message says why, in one line."""


@dataclass
class Extracted:
    """A document's text as the reader built it, and the structure it saw while building it."""

    text: str
    # The spans worth indexing, in order (headings marked); page furniture is left out.
    blocks: list[Block]
    title: str | None = None
    # Offset in `text` where each page starts (paged formats only).
    pages: list[int] | None = None
    # Problems that left part of the document out, one line each (e.g. pages without text).
    warnings: list[str] = field(default_factory=list)
