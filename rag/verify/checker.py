"""Check the citations of any answer, ours or another system's (`rag check`, POST /check).

Input: `{"answer": "... [1] ...", "citations": [{"id", "doc_id", "start", "end", "text"}]}`
(the shape `rag ask --json` prints; a citation needs either `text` or a `doc_id` known to the
index, offsets optional), or a single `{"claim", "doc_id"?, "start"?, "end"?, "quote"?}`.
Every sentence gets the verdicts of the citations it carries; a claim without any location
is checked against the best evidence the index can find."""

from __future__ import annotations

from pydantic import BaseModel

from rag.errors import BadInputError
from rag.requests import CheckRequest, GivenCitation
from rag.retrieve.retriever import Retriever
from rag.text.words import makes_claim
from rag.verify.citations import parse_answer
from rag.verify.verifier import Verifier

# How many passages to try for a claim that names no source.
EVIDENCE_CANDIDATES = 5


class CitationVerdict(BaseModel):
    id: int
    verdict: str  # supported | not_supported | points_at_nothing
    supported: bool
    score: float | None
    reason: str
    doc_id: str | None = None
    start: int | None = None  # best supporting span; offsets into the document when known
    end: int | None = None
    text: str | None = None
    page: int | None = None  # of the supporting span in a paged document (PDF), as on Chunk
    pages: list[int] | None = None


class SentenceCheck(BaseModel):
    text: str
    citations: list[CitationVerdict]
    status: str  # supported | partly | unsupported | uncited | no_claim


class CheckReport(BaseModel):
    sentences: list[SentenceCheck]
    uncited_claims: list[str]


class Checker:
    def __init__(self, retriever: Retriever, verifier: Verifier):
        self.retriever = retriever
        self.verifier = verifier

    def check(self, request: CheckRequest) -> CheckReport:
        if request.claim is not None:
            return self._check_claim(request)
        if not request.answer or not request.answer.strip():
            raise BadInputError("nothing to check: give an `answer` with citations, or a `claim`")
        by_id = {c.id: c for c in request.citations}
        sentences = []
        for sentence in parse_answer(request.answer):
            verdicts = [self._verdict(sentence.text, n, by_id.get(n)) for n in sentence.numbers]
            sentences.append(
                SentenceCheck(text=sentence.text, citations=verdicts, status=_status(sentence.text, verdicts))
            )
        return CheckReport(sentences=sentences, uncited_claims=[s.text for s in sentences if s.status == "uncited"])

    def _passage(self, citation: GivenCitation) -> tuple[str, int, int, str | None] | None:
        """(document text, start, end, doc_id) the citation points at, or None."""
        document = self.retriever.store.documents.get(citation.doc_id) if citation.doc_id else None
        if document is not None:
            text = document.text
            if (
                citation.start is not None
                and citation.end is not None
                and 0 <= citation.start < citation.end <= len(text)
            ):
                return text, citation.start, citation.end, document.doc_id
            if citation.text and (at := text.find(citation.text)) >= 0:
                return text, at, at + len(citation.text), document.doc_id
            if not citation.text:
                return text, 0, len(text), document.doc_id
        if citation.text and citation.text.strip():
            return citation.text, 0, len(citation.text), citation.doc_id
        return None

    def _verdict(self, claim: str, number: int, citation: GivenCitation | None) -> CitationVerdict:
        located = self._passage(citation) if citation else None
        if located is None:
            reason = "no citation with this id" if citation is None else "its passage is neither given nor in the index"
            return CitationVerdict(id=number, verdict="points_at_nothing", supported=False, score=None, reason=reason)
        text, start, end, doc_id = located
        verdict = self.verifier.verify([(claim, text, start, end)])[0]
        document = self.retriever.store.documents.get(doc_id) if doc_id else None
        in_document = document is not None and text is document.text
        return CitationVerdict(
            id=number,
            verdict="supported" if verdict.supported else "not_supported",
            supported=verdict.supported,
            score=round(verdict.score, 4),
            reason=verdict.reason,
            doc_id=doc_id,
            start=verdict.span.start,
            end=verdict.span.end,
            text=text[verdict.span.start : verdict.span.end],
            **(document.page_fields(verdict.span.start, verdict.span.end) if in_document else {}),
        )

    def _check_claim(self, request: CheckRequest) -> CheckReport:
        claim = (request.claim or "").strip()
        if not claim:
            raise BadInputError("the claim is empty")
        if request.doc_id is not None:
            if request.doc_id not in self.retriever.store.documents:
                raise BadInputError(f"unknown document: {request.doc_id} (see `rag docs`)")
            given = GivenCitation(id=1, doc_id=request.doc_id, start=request.start, end=request.end, text=request.quote)
            verdicts = [self._verdict(claim, 1, given)]
        else:
            # No location: the best evidence the index holds, as the citation to judge.
            hits = self.retriever.search(claim, k=EVIDENCE_CANDIDATES).results
            candidates = [
                self._verdict(claim, 1, GivenCitation(id=1, doc_id=h.doc_id, start=h.start, end=h.end)) for h in hits
            ]
            verdicts = [max(candidates, key=lambda v: (v.supported, v.score or 0.0))] if candidates else []
        sentence = SentenceCheck(text=claim, citations=verdicts, status=_status(claim, verdicts))
        return CheckReport(sentences=[sentence], uncited_claims=[claim] if sentence.status == "uncited" else [])


def _status(text: str, verdicts: list[CitationVerdict]) -> str:
    if not verdicts:
        return "uncited" if makes_claim(text) else "no_claim"
    flags = [v.supported for v in verdicts]
    return "supported" if all(flags) else "partly" if any(flags) else "unsupported"
