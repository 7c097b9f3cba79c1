"""Cited answers, as small stages:

    retrieve -> select evidence -> choose (or generate, or extract) -> verify and repair -> decide

- Retrieval fetches a deep pool of passages; evidence selection scores every sentence of the
  pool against the question and keeps the best few (rag/evidence.py).
- The answer comes from one of three strategies: `choose` (the model picks the numbered
  evidence sentence that answers, read from its token probabilities: the default for `local/`
  models), `generate` (free-form with [n] markers, for other litellm models) or `extractive`
  (no model).
- Every citation is verified against its passage and repaired when it points at the wrong one
  (rag/verification.py).
- The decision to show the answer is one calibrated confidence (rag/decision.py) followed by
  an ordered list of guards, each of which returns the reason to withhold the answer or None.

An answer is never shown with a citation that was not checked, and a withheld answer is never
shown at all: the response says that it was withheld and why."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from rag.answer.choice import Choice, choice_from_probabilities, choice_from_reply
from rag.answer.conversation import standalone_question
from rag.answer.decision import Signals, load_decision_model
from rag.answer.evidence import (
    EvidenceSentence,
    SentenceVectors,
    rank_evidence,
    select_evidence,
)
from rag.answer.extractive import cited, extractive_answer
from rag.answer.prompts import (
    DECLINE_TOKENS,
    NOT_FOUND,
    answer_messages,
    choice_messages,
    is_decline,
)
from rag.config import EXTRACTIVE, Settings
from rag.embed.encoder import Embedder
from rag.llm.generation import (
    GenerationError,
    check_model,
    first_token_probabilities,
    stream_completion,
)
from rag.llm.local import LocalModel
from rag.llm.provider import is_local_model
from rag.requests import AskOptions, AskRequest
from rag.retrieve.retriever import Retriever, validate_query
from rag.schema import AnswerResponse, AnswerSentence, Citation, Evidence, SearchHit
from rag.text.words import content_tokens, makes_claim, names_not_in, numbers_in
from rag.verify.citations import MARKER, ParsedSentence, parse_answer, strip_markers
from rag.verify.verifier import Verdict, Verifier

NOT_FOUND_ANSWER = "The documents do not contain an answer to this question."

Strategy = Literal["choose", "generate", "extractive"]


@dataclass
class AnswerEvent:
    """What a stream yields: the passages once, then answer text pieces, then the result."""

    kind: str  # passages | token | answer
    text: str = ""
    passages: list[SearchHit] | None = None
    response: AnswerResponse | None = None


@dataclass
class Draft:
    """One question's answer as the stages build it up."""

    question: str
    model: str
    strategy: Strategy
    passages: list[SearchHit]  # the passages evidence came from; [n] markers count in this list
    evidence: list[EvidenceSentence]  # passage = index into `passages`
    ranked: list[EvidenceSentence]  # the whole pool, best first
    retrieval_score: float  # best dense cosine of a retrieved passage
    text: str | None = None  # the answer with [n] markers; None = no answer
    answered_by: str = ""
    declined: bool = False
    choice: Choice | None = None
    confidence: float | None = None
    threshold: float | None = None
    notices: list[str] = field(default_factory=list)
    response: AnswerResponse | None = None


# A guard looks at a draft and returns why its answer must be withheld, or None.
Guard = Callable[[Draft], str | None]


class Answerer:
    def __init__(
        self, retriever: Retriever, embedder: Embedder, settings: Settings, local_model: LocalModel | None = None
    ):
        self.retriever = retriever
        self.embedder = embedder
        self.settings = settings
        self.local_model = local_model  # answers `local/...` models
        self.verifier = Verifier(embedder, settings.verification)
        self.sentence_vectors = SentenceVectors(embedder, settings.evidence.cache_sentences)

    def strategy(self, model: str) -> Strategy:
        configured = self.settings.answer.strategy
        if model == EXTRACTIVE:
            return "extractive"
        if configured == "auto":
            return "choose" if is_local_model(model) else "generate"
        return configured

    def stream(self, request: AskRequest) -> Iterator[AnswerEvent]:
        """The stages in order: rewrite a follow-up, retrieve and select evidence, answer,
        verify and repair citations, then the guards; events as each stage ends."""
        model = request.model or self.settings.answer.model
        question = validate_query(request.question, self.settings.retrieval)
        if model != EXTRACTIVE:
            check_model(model, request.api_base or self.settings.answer.api_base)
        timings: dict[str, float] = {}
        started = clock = time.perf_counter()

        query = standalone_question(question, request.history, model, self.settings, request.api_base, self.local_model)
        if query != question:
            timings["rewrite"] = _ms(clock)
            clock = time.perf_counter()
        draft = self.draft(query, model, request)
        timings["retrieve"] = _ms(clock)
        yield AnswerEvent("passages", passages=draft.passages)

        def finish(response: AnswerResponse) -> AnswerEvent:
            response.timings_ms = {**timings, "total": _ms(started)}
            if query != question:
                response.question, response.rewritten_question = question, query
            return AnswerEvent("answer", response=response)

        reason = self.retrieval_guard(draft)
        if reason:
            yield finish(self._abstain(draft, "no_evidence", reason))
            return

        clock = time.perf_counter()
        for piece in self.answer(draft, request):
            if "first_token" not in timings:
                timings["first_token"] = _ms(started)
            yield AnswerEvent("token", text=piece)
        timings["generate"] = _ms(clock)

        clock = time.perf_counter()
        if draft.text is not None:
            draft.response = self._cited_response(draft)
        timings["verify"] = _ms(clock)
        for code, guard in self.guards:
            reason = guard(draft)
            if reason:
                yield finish(self._abstain(draft, code, reason))
                return
        assert draft.response is not None  # the guards withhold a draft without an answer
        yield finish(draft.response)

    # ------------------------------------------------------------------ retrieve, select evidence

    def draft(self, question: str, model: str, options: AskOptions) -> Draft:
        """Retrieve the pool, rank its sentences, keep the evidence; the passages the evidence
        comes from are renumbered in order of their best sentence."""
        cfg = self.settings.evidence
        pool = self.retriever.search(
            question, k=options.k or cfg.passages, mode=options.mode, doc_ids=options.doc_ids
        ).results
        ranked = rank_evidence(question, pool, self.sentence_vectors, cfg)
        evidence = select_evidence(ranked, cfg.sentences, cfg.max_words)
        order = list(dict.fromkeys(s.passage for s in evidence))
        position = {passage: i for i, passage in enumerate(order)}
        passages = [pool[i].model_copy(update={"rank": n}) for n, i in enumerate(order, start=1)]
        evidence = [EvidenceSentence(position[s.passage], s.span, s.text, s.score) for s in evidence]
        retrieval_score = max((h.dense_score or 0.0 for h in pool), default=0.0)
        return Draft(question, model, self.strategy(model), passages, evidence, ranked, retrieval_score)

    def retrieval_guard(self, draft: Draft) -> str | None:
        if not draft.evidence or draft.retrieval_score < self.settings.answer.min_retrieval_score:
            return "No passage in the documents is close enough to the question."
        return None

    # ------------------------------------------------------------------ choose, generate, extract

    def answer(self, draft: Draft, options: AskOptions) -> Iterator[str]:
        """Fill in `draft.text` by the draft's strategy, yielding the text to show as it comes.
        A model that fails is replaced by the extractive answer, with a notice."""
        cfg = self.settings.answer
        draft.answered_by = draft.model
        try:
            if draft.strategy == "choose":
                yield from self._choose(draft, options)
            elif draft.strategy == "generate":
                yield from self._generate(draft, options)
        except GenerationError as exc:
            if not cfg.fallback_to_extractive:
                raise
            draft.notices.append(f"{exc}; showing an extractive answer built from the passages instead.")
            draft.strategy, draft.text, draft.declined = "extractive", None, False
        if draft.strategy == "extractive":
            draft.answered_by = EXTRACTIVE
            draft.text = extractive_answer(draft.evidence, cfg.extractive_sentences, cfg.extractive_min_score)
            if draft.text:
                yield draft.text

    def choice_prompt(self, draft: Draft) -> list[dict[str, str]]:
        """The numbered-choice messages for a draft's evidence, best-ranked first."""
        return choice_messages(draft.question, [s.text for s in draft.evidence])

    def _choose(self, draft: Draft, options: AskOptions) -> Iterator[str]:
        cfg = self.settings.answer
        messages = self.choice_prompt(draft)
        api_base, timeout_s = options.api_base or cfg.api_base, options.timeout_s or cfg.timeout_s
        probabilities = first_token_probabilities(
            messages,
            model=draft.model,
            api_base=api_base,
            timeout_s=timeout_s,
            local_model=self.local_model,
        )
        if probabilities:
            choice = choice_from_probabilities(probabilities, len(draft.evidence))
        else:  # a provider without token probabilities: read the labels it writes
            reply = "".join(
                stream_completion(
                    messages,
                    model=draft.model,
                    api_base=api_base,
                    temperature=0.0,
                    max_tokens=8,
                    timeout_s=timeout_s,
                    local_model=self.local_model,
                )
            )
            choice = choice_from_reply(reply, len(draft.evidence))
        draft.choice = choice
        if choice.best is None:  # the model gave no label any probability
            draft.declined = True
            return
        decision = load_decision_model()
        draft.threshold = decision.threshold if cfg.min_confidence is None else cfg.min_confidence
        confidence = [decision.confidence(self.signals(draft, i)) for i in range(len(draft.evidence))]
        ranked = sorted(range(len(confidence)), key=lambda i: -confidence[i])
        best = ranked[0]
        draft.confidence = confidence[best]
        if draft.confidence < draft.threshold:
            return
        chosen = [best]
        # A second sentence, from another document, confident enough by itself: for questions
        # whose answer needs two documents.
        for i in ranked[1:]:
            if self._document(draft, i) != self._document(draft, best):
                if confidence[i] >= draft.threshold:
                    chosen.append(i)
                break
        draft.text = " ".join(cited(draft.evidence[i]) for i in chosen)
        yield draft.text

    def signals(self, draft: Draft, candidate: int) -> Signals:
        """What the calibrated decision sees about answering with one evidence sentence."""
        assert draft.choice is not None
        return Signals.of(
            retrieval=draft.retrieval_score,
            evidence=draft.ranked[0].score,
            chosen=draft.evidence[candidate].score,
            position=candidate,
            p_choice=draft.choice.p[candidate],
            p_none=draft.choice.p_none,
        )

    def _document(self, draft: Draft, evidence: int) -> str:
        return draft.passages[draft.evidence[evidence].passage].doc_id

    def answer_prompt(self, draft: Draft) -> list[dict[str, str]]:
        """The free-form messages: each evidence passage cut to its evidence sentences, kept in
        reading order."""
        texts = []
        for i in range(len(draft.passages)):
            own = sorted((s for s in draft.evidence if s.passage == i), key=lambda s: s.span.start)
            texts.append(" … ".join(s.text for s in own))
        return answer_messages(draft.question, texts)

    def _generate(self, draft: Draft, options: AskOptions) -> Iterator[str]:
        cfg = self.settings.answer
        text, shown = "", 0
        # A negative bias on the decline token makes a local model decline only when that is
        # clearly likelier than any answer.
        bias = (
            [[token, cfg.decline_bias] for token in DECLINE_TOKENS]
            if cfg.decline_bias and is_local_model(draft.model)
            else None
        )
        for piece in stream_completion(
            self.answer_prompt(draft),
            model=draft.model,
            api_base=options.api_base or cfg.api_base,
            temperature=cfg.temperature if options.temperature is None else options.temperature,
            max_tokens=options.max_tokens or cfg.max_tokens,
            timeout_s=options.timeout_s or cfg.timeout_s,
            local_model=self.local_model,
            logit_bias=bias,
        ):
            text += piece
            # Held back while it may still be the decline sentinel, which is never shown.
            if not NOT_FOUND.startswith(text.strip()):
                yield text[shown:]
                shown = len(text)
        draft.declined = is_decline(text)
        draft.text = None if draft.declined else text

    # ------------------------------------------------------------------ decide

    @property
    def guards(self) -> list[tuple[str, Guard]]:
        """Why an answer is withheld, in the order they are asked, each with the code that
        `AnswerResponse.abstention` gives for it."""
        return [
            ("declined", self._declined),
            ("unsure", self._unsure),
            ("repeats_question", self._repeats_question),
            ("unsupported", self._unsupported),
            ("unnamed", self._unnamed),
        ]

    def _declined(self, draft: Draft) -> str | None:
        if draft.declined:
            return "The model found no answer in the passages."
        if draft.text is None and draft.strategy == "extractive":
            return "No sentence in the passages answers the question."
        return None

    def _unsure(self, draft: Draft) -> str | None:
        if draft.text is None and draft.confidence is not None and draft.threshold is not None:
            return (
                f"The model's choice is not likely enough to be right (confidence {draft.confidence:.2f}, "
                f"needed {draft.threshold:.2f})."
            )
        return None

    def _repeats_question(self, draft: Draft) -> str | None:
        if draft.strategy == "generate" and draft.text is not None and not adds_to_question(draft.text, draft.question):
            return "The model's answer only repeats the question."
        return None

    def _unsupported(self, draft: Draft) -> str | None:
        response = draft.response
        if response is None or draft.answered_by == EXTRACTIVE or not self.settings.answer.abstain_when_unsupported:
            return None
        if not any(s.status in ("supported", "partly") for s in response.sentences):
            return "The model's answer is not supported by the cited passages, so it is withheld."
        return None

    def _unnamed(self, draft: Draft) -> str | None:
        if draft.response is None:
            return None
        documents = self.retriever.store.documents
        sources = sorted({c.doc_id for c in draft.response.citations if c.supported})
        unnamed = names_not_in(draft.question, [documents[doc_id].text for doc_id in sources])
        if unnamed:
            return f"The documents this answer comes from never mention {unnamed[0]}, which the question asks about."
        return None

    # ------------------------------------------------------------------ responses

    def _evidence(self, draft: Draft) -> list[Evidence]:
        p = draft.choice.p if draft.choice else None
        return [
            Evidence(
                number=n,
                passage=s.passage + 1,
                doc_id=draft.passages[s.passage].doc_id,
                chunk_id=draft.passages[s.passage].chunk_id,
                start=s.span.start,
                end=s.span.end,
                text=s.text,
                score=round(s.score, 4),
                probability=round(p[n - 1], 4) if p else None,
                **self.retriever.store.documents[draft.passages[s.passage].doc_id].page_fields(
                    s.span.start, s.span.end
                ),
            )
            for n, s in enumerate(draft.evidence, start=1)
        ]

    def _abstain(self, draft: Draft, code: str, reason: str) -> AnswerResponse:
        return AnswerResponse(
            question=draft.question,
            answer=NOT_FOUND_ANSWER,
            abstained=True,
            abstention=code,
            model=draft.model,
            citations=[],
            passages=draft.passages,
            notice=" ".join([*draft.notices, reason]),
            confidence=_round(draft.confidence),
            evidence=self._evidence(draft),
        )

    def _cited_response(self, draft: Draft) -> AnswerResponse:
        question, hits, raw = draft.question, draft.passages, draft.text or ""
        sentences = parse_answer(raw)
        documents = self.retriever.store.documents
        question_tokens = content_tokens(question)

        def verify(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], Verdict]:
            claims = [
                (sentences[i].text, documents[hits[n - 1].doc_id].text, hits[n - 1].start, hits[n - 1].end)
                for i, n in pairs
            ]
            return dict(zip(pairs, self.verifier.verify(claims, question)))

        cited_by = {i: [n for n in s.numbers if 1 <= n <= len(hits)] for i, s in enumerate(sentences)}
        verdicts = verify([(i, n) for i, ns in cited_by.items() for n in ns])
        # A claim none of whose citations holds up may still be stated by another retrieved
        # passage: point the citation there (and say so) rather than show a wrong source.
        claims = {i for i, s in enumerate(sentences) if cited_by[i] or makes_claim(s.text, question_tokens)}
        unsupported = [i for i in sorted(claims) if not any(verdicts[(i, n)].supported for n in cited_by[i])]
        alternatives = verify([(i, n) for i in unsupported for n in range(1, len(hits) + 1) if n not in cited_by[i]])
        repairs: dict[int, tuple[int, Verdict]] = {}
        for i in unsupported:
            options = [(v.score, n, v) for (j, n), v in alternatives.items() if j == i and v.supported]
            if options:
                _, n, verdict = max(options, key=lambda option: option[0])
                repairs[i] = (n, verdict)

        citations: list[Citation] = []
        ids: dict[tuple[int, int], int] = {}
        insertions: dict[int, int] = {}

        def add(i: int, n: int, verdict: Verdict, origin: str, reason: str) -> int:
            hit = hits[n - 1]
            citations.append(
                Citation(
                    id=len(citations) + 1,
                    passage=n,
                    sentence=i,
                    chunk_id=hit.chunk_id,
                    doc_id=hit.doc_id,
                    start=verdict.span.start,
                    end=verdict.span.end,
                    text=documents[hit.doc_id].text[verdict.span.start : verdict.span.end],
                    chunk_start=hit.start,
                    chunk_end=hit.end,
                    title=hit.title,
                    supported=verdict.supported,
                    score=round(verdict.score, 4),
                    reason=reason,
                    origin=origin,
                    **documents[hit.doc_id].page_fields(verdict.span.start, verdict.span.end),
                )
            )
            return len(citations)

        for i in range(len(sentences)):
            if i in repairs:
                n, verdict = repairs[i]
                if cited_by[i]:
                    wrong = ", ".join(f"[{m}]" for m in cited_by[i])
                    new_id = add(
                        i, n, verdict, "corrected", f"the model cited passage {wrong}, which does not state this"
                    )
                    ids.update({(i, m): new_id for m in cited_by[i]})
                else:
                    insertions[i] = add(i, n, verdict, "added", "the model gave no citation; this passage states it")
                continue
            for n in cited_by[i]:
                ids[(i, n)] = add(i, n, verdicts[(i, n)], "model", verdicts[(i, n)].reason)

        answer, spans = _renumber(raw, sentences, ids, insertions)
        out_sentences = []
        for i, (sentence, (start, end)) in enumerate(zip(sentences, spans)):
            own = [c.id for c in citations if c.sentence == i]
            flags = [citations[c - 1].supported for c in own]
            if not own:
                status = "uncited" if i in claims else "no_claim"
            elif all(flags):
                status = "supported"
            elif any(flags):
                status = "partly"
            else:
                status = "unsupported"
            out_sentences.append(AnswerSentence(text=sentence.text, start=start, end=end, citations=own, status=status))
        notices = list(draft.notices)
        dropped = sorted({n for s in sentences for n in s.numbers if not 1 <= n <= len(hits)})
        if dropped:
            notices.append(
                f"Removed citation markers that point at no passage: {', '.join(f'[{n}]' for n in dropped)}."
            )
        return AnswerResponse(
            question=question,
            answer=answer,
            abstained=False,
            model=draft.answered_by,
            citations=citations,
            sentences=out_sentences,
            passages=hits,
            notice=" ".join(notices) or None,
            confidence=_round(draft.confidence),
            evidence=self._evidence(draft),
            raw_answer=raw,
        )


def _renumber(
    raw: str, sentences: list[ParsedSentence], ids: dict[tuple[int, int], int], insertions: dict[int, int]
) -> tuple[str, list[tuple[int, int]]]:
    """Rewrite each [n] marker as the ids of its citations (dropping numbers that point at no
    passage), add the markers of `insertions` ({sentence: citation id}) before a sentence's
    closing punctuation, and return the new text with each sentence's (start, end) in it."""
    owner = {m.start: (i, m) for i, sentence in enumerate(sentences) for m in sentence.markers}
    replacements: list[tuple[int, int, str]] = []
    for match in MARKER.finditer(raw):
        new = ""
        if match.start() in owner:
            i, marker = owner[match.start()]
            new = "".join(f"[{c}]" for c in dict.fromkeys(ids[(i, n)] for n in marker.numbers if (i, n) in ids))
        replacements.append((match.start(), match.end(), new))
    for i, citation_id in insertions.items():
        at = sentences[i].end
        while at > sentences[i].start and raw[at - 1] in ".!?":
            at -= 1
        replacements.append((at, at, f" [{citation_id}]"))
    replacements.sort()
    pieces, pos = [], 0
    for start, end, new in replacements:
        pieces += [raw[pos:start], new]
        pos = end
    pieces.append(raw[pos:])

    def shift(p: int) -> int:
        return p + sum(len(new) - (end - start) for start, end, new in replacements if end <= p)

    return "".join(pieces), [(shift(s.start), shift(s.end)) for s in sentences]


def adds_to_question(answer: str, question: str) -> bool:
    """Does the answer state anything the question does not? A small model that finds no answer
    sometimes echoes the question with a citation ("It was held on 2025 - 2030 [1]."); the
    verifier passes such a sentence, since words taken from the question need no support."""
    answer = strip_markers(answer)
    # The tokenizer drops one-digit numbers, and "5 provinces" answers "how many provinces".
    return bool(content_tokens(answer) - content_tokens(question) or numbers_in(answer) - numbers_in(question))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)
