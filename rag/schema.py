"""Typed records passed between pipeline stages, and the JSON shapes the CLI and API print (README)."""

from __future__ import annotations

from bisect import bisect_right

from pydantic import BaseModel, Field, field_validator

# Titles are shown in every result and prefixed to every passage embedded: a heading or first
# line of megabytes (one long word, a minified page) must not become a title of megabytes.
MAX_TITLE_CHARS = 200


def short_title(title: str) -> str:
    """`title`, cut to MAX_TITLE_CHARS with a closing "…" when longer."""
    return title if len(title) <= MAX_TITLE_CHARS else title[: MAX_TITLE_CHARS - 1].rstrip() + "…"


class Document(BaseModel):
    """A loaded document. `text` is the text as read (HTML: as extracted); all offsets point into it."""

    doc_id: str
    path: str
    root: str
    text: str
    sha256: str
    format: str = "text"
    title: str | None = None
    source_url: str | None = None
    # File state at load time, to notice edits on disk after indexing.
    size: int = 0
    mtime_ns: int = 0
    # Paged formats (PDF): the offset in `text` where each page starts; pages are joined by "\f".
    pages: list[int] | None = None
    # Formats whose reader knows their structure (PDF, Word): the spans to index, in order,
    # used instead of the text-based cleaning of web pages (page furniture already left out).
    blocks: list[Block] | None = None

    @field_validator("title")
    @classmethod
    def _short_title(cls, title: str | None) -> str | None:
        return None if title is None else short_title(title)

    @property
    def display_title(self) -> str:
        if self.title:
            return self.title
        first_line = self.text.strip().split("\n", 1)[0]
        words = first_line.split()
        return short_title(" ".join(words[:12]) + (" …" if len(words) > 12 else "")) if words else self.doc_id

    def page_fields(self, start: int, end: int) -> dict[str, int | list[int]]:
        """`page` (the page of the span's first character) and, when it runs over more than one,
        `pages` (every page it touches), for a span of a paged document; {} otherwise."""
        if not self.pages:
            return {}
        first = max(1, bisect_right(self.pages, start))
        last = max(first, bisect_right(self.pages, max(start, end - 1)))
        return {"page": first, "pages": list(range(first, last + 1))} if last > first else {"page": first}


class Span(BaseModel):
    start: int
    end: int


class Block(Span):
    """A kept paragraph of a document after cleaning."""

    kind: str = "paragraph"  # paragraph | heading


class ChunkLocation(BaseModel):
    chunk_id: str
    doc_id: str
    start: int
    end: int


class Chunk(BaseModel):
    chunk_id: str
    doc_id: str
    start: int
    end: int
    text: str
    # Set on a near-copy: the first chunk of its group, with which results show it.
    duplicate_of: str | None = None
    # Set on the first chunk of a group: where its near-identical copies live.
    copies: list[ChunkLocation] = Field(default_factory=list)
    # Paged documents (PDF): the page of the first character; `pages` when the span crosses pages.
    page: int | None = None
    pages: list[int] | None = None


class SearchHit(BaseModel):
    rank: int
    score: float
    chunk_id: str
    doc_id: str
    start: int
    end: int
    text: str
    title: str
    dense_score: float | None = None
    bm25_score: float | None = None
    also_in: list[ChunkLocation] = Field(default_factory=list)
    page: int | None = None  # as on Chunk
    pages: list[int] | None = None


def page_label(ref: Chunk | SearchHit | Citation) -> str:
    """ "p. 3", or "pp. 3–4" for a span over pages 3 and 4; "" for documents without pages."""
    if ref.page is None:
        return ""
    return f"pp. {ref.pages[0]}–{ref.pages[-1]}" if ref.pages else f"p. {ref.page}"


class SearchResponse(BaseModel):
    query: str
    mode: str
    results: list[SearchHit]


class DocumentInfo(BaseModel):
    doc_id: str
    title: str
    source_url: str | None
    path: str
    chars: int
    chunks: int
    duplicate_chunks: int


class Citation(BaseModel):
    """One (answer sentence, cited passage) pair, pointing at the exact supporting span."""

    id: int
    passage: int  # the [n] the model wrote: position in the numbered passages
    sentence: int  # index into AnswerResponse.sentences
    chunk_id: str
    doc_id: str
    start: int  # supporting span in the document; document_text[start:end] == text
    end: int
    text: str
    chunk_start: int
    chunk_end: int
    title: str
    supported: bool | None
    score: float | None = None
    reason: str = ""
    # model: as the model cited it; corrected: the model cited a passage that does not state
    # this and the verifier found one that does; added: the model gave no citation.
    origin: str = "model"
    page: int | None = None  # of the supporting span, as on Chunk
    pages: list[int] | None = None


class Evidence(BaseModel):
    """A sentence the answer was chosen from (what the model saw, in the order it saw it)."""

    number: int  # the label the model saw
    passage: int  # 1-based position in AnswerResponse.passages
    doc_id: str
    chunk_id: str
    start: int  # document_text[start:end] == text
    end: int
    text: str
    score: float  # relevance to the question
    probability: float | None = None  # the model's probability that this sentence answers
    page: int | None = None  # as on Chunk
    pages: list[int] | None = None


class AnswerSentence(BaseModel):
    text: str
    start: int  # offsets into AnswerResponse.answer
    end: int
    citations: list[int]
    # supported: every citation supports it; partly: some do; unsupported: none do;
    # uncited: a claim without a citation; no_claim: nothing to support (e.g. a preamble).
    status: str


class AnswerResponse(BaseModel):
    question: str
    # The standalone question searched for, when a follow-up was rewritten using the conversation.
    rewritten_question: str | None = None
    answer: str
    abstained: bool
    model: str
    citations: list[Citation]
    sentences: list[AnswerSentence] = Field(default_factory=list)
    passages: list[SearchHit] = Field(default_factory=list)
    notice: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    # The calibrated probability that a chosen answer is right (rag/decision.py); None when the
    # strategy has no calibrated decision (generate, extractive).
    confidence: float | None = None
    evidence: list[Evidence] = Field(default_factory=list)
    # The answer as the model wrote it, before citation repair; its [n] count in `passages`.
    raw_answer: str | None = None
    # Why a withheld answer was withheld, as a code: no_evidence | declined | unsure |
    # repeats_question | unsupported | unnamed (the notice says it in words).
    abstention: str | None = None


Document.model_rebuild()  # `blocks` refers to Block, defined after Document
