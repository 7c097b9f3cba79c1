"""Cited answers: retrieve -> (abstain?) -> prompt -> LLM or extractive -> parse [n] ->
verify every citation against its passage -> AnswerResponse.

An answer is never shown with a citation that was not checked: each (sentence, passage)
pair carries a verdict and the exact supporting span, sentences with a claim and no
citation are flagged, an LLM answer that none of its passages supports is withheld, and so is
any answer whose sources never name what the question names ("Gia Lai")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from rag.citations import MARKER, ParsedSentence, parse_answer, strip_markers
from rag.config import SearchMode, Settings
from rag.embedding import Embedder
from rag.extractive import ScoredSentence, cited, extractive_answer, rank_sentences, trimmed_passages
from rag.generation import GenerationError, check_model, stream_completion
from rag.local_llm import is_local_model
from rag.prompts import DECLINE_TOKENS, NOT_FOUND, YES_TOKENS, answer_messages, is_decline, is_yes, judge_messages
from rag.retrieval import Retriever, validate_query
from rag.schema import AnswerResponse, AnswerSentence, Citation, SearchHit
from rag.verification import Verdict, Verifier, content_tokens, makes_claim, names_not_in, numbers_in

EXTRACTIVE = "extractive"

NOT_FOUND_ANSWER = "The documents do not contain an answer to this question."

SECOND_LOOK_NOTICE = "The model first found no answer, then confirmed that this passage sentence answers the question."


@dataclass
class AnswerEvent:
    """What a stream yields: the passages once, then answer text pieces, then the result."""

    kind: str  # passages | token | answer
    text: str = ""
    passages: list[SearchHit] | None = None
    response: AnswerResponse | None = None


@dataclass
class AskOptions:
    k: int | None = None
    mode: SearchMode | None = None
    doc_ids: list[str] | None = None
    model: str | None = None
    api_base: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None


class Answerer:
    def __init__(self, retriever: Retriever, embedder: Embedder, settings: Settings):
        self.retriever = retriever
        self.embedder = embedder
        self.settings = settings
        self.verifier = Verifier(embedder, settings.verification)

    def stream(self, question: str, options: AskOptions | None = None) -> Iterator[AnswerEvent]:
        cfg = self.settings.answer
        options = options or AskOptions()
        model = options.model or cfg.model
        question = validate_query(question, self.settings.retrieval)
        if model != EXTRACTIVE:
            check_model(model, options.api_base or cfg.api_base)
        timings: dict[str, float] = {}
        clock = started = time.perf_counter()

        hits = self.retriever.search(question, k=options.k or cfg.k, mode=options.mode, doc_ids=options.doc_ids).results
        timings["retrieve"] = _ms(clock)
        yield AnswerEvent("passages", passages=hits)

        def finish(response: AnswerResponse) -> AnswerEvent:
            response.timings_ms = {**timings, "total": _ms(started)}
            return AnswerEvent("answer", response=response)

        if not self.retrieval_is_relevant(hits):
            yield finish(self._abstain(question, model, hits, "No passage in the documents is close enough to the question."))
            return

        clock = time.perf_counter()
        ranked = rank_sentences(question, hits, self.embedder)
        timings["rank_sentences"] = _ms(clock)
        notice = second_look_notice = None
        answered_by = model
        if model == EXTRACTIVE:
            text = extractive_answer(ranked, cfg.extractive_sentences, cfg.extractive_min_score)
        else:
            clock = time.perf_counter()
            try:
                text, shown = "", 0
                # A negative bias on the decline token makes a small model decline only when that is
                # clearly likelier than any answer (bench/bench_declines.py calibrates it).
                prompt = self.answer_prompt(question, hits, ranked)
                for piece in self._complete(prompt, model, options, (DECLINE_TOKENS, cfg.decline_bias)):
                    if not text:
                        timings["first_token"] = _ms(started)
                    text += piece
                    # Held back while it may still be the decline sentinel, which is never shown.
                    if not NOT_FOUND.startswith(text.strip()):
                        yield AnswerEvent("token", text=text[shown:])
                        shown = len(text)
            except GenerationError as exc:
                if not cfg.fallback_to_extractive:
                    raise
                notice = f"{exc}; showing an extractive answer built from the passages instead."
                text = extractive_answer(ranked, cfg.extractive_sentences, cfg.extractive_min_score)
                answered_by = EXTRACTIVE
            if notice is None and is_decline(text) and cfg.second_look:
                confirmed = self.second_look(question, ranked, model, options)
                if confirmed:
                    text, second_look_notice = confirmed, SECOND_LOOK_NOTICE
            timings["generate"] = _ms(clock)
            if notice is None and is_decline(text):
                yield finish(self._abstain(question, model, hits, "The model found no answer in the passages.", draft=text))
                return
            if notice is None and not adds_to_question(text, question):
                yield finish(self._abstain(
                    question, model, hits, "The model's answer only repeats the question.", draft=text,
                ))
                return
        if text is None:
            yield finish(self._abstain(question, model, hits, "No sentence in the passages answers the question.", notice=notice))
            return

        clock = time.perf_counter()
        response = self._cited_response(question, answered_by, text, hits)
        timings["verify"] = _ms(clock)
        response.notice = " ".join(n for n in (notice, second_look_notice, response.notice) if n) or None
        supported = any(s.status in ("supported", "partly") for s in response.sentences)
        if not supported and answered_by != EXTRACTIVE and cfg.abstain_when_unsupported:
            yield finish(self._abstain(
                question, model, hits, "The model's answer is not supported by the cited passages, so it is withheld.",
                draft=text,
            ))
            return
        documents = self.retriever.index.documents
        sources = {c.doc_id for c in response.citations if c.supported}
        unnamed = names_not_in(question, [documents[doc_id].text for doc_id in sorted(sources)])
        if unnamed:
            yield finish(self._abstain(
                question, model, hits,
                f"The documents this answer comes from never mention {unnamed[0]}, which the question asks about.",
                draft=text, notice=notice,
            ))
            return
        yield finish(response)

    def retrieval_is_relevant(self, hits: list[SearchHit]) -> bool:
        best = max((h.dense_score or 0.0 for h in hits), default=0.0)
        return bool(hits) and best >= self.settings.answer.min_retrieval_score

    def answer_prompt(self, question: str, hits: list[SearchHit], ranked: list[ScoredSentence] | None = None) -> list[dict[str, str]]:
        """The messages an LLM answers from: the passages trimmed to their sentences most relevant
        to the question."""
        cfg = self.settings.answer
        ranked = rank_sentences(question, hits, self.embedder) if ranked is None else ranked
        return answer_messages(question, trimmed_passages(hits, ranked, cfg.sentences_per_passage, cfg.prompt_sentences))

    def judge_prompt(self, question: str, ranked: list[ScoredSentence]) -> list[dict[str, str]] | None:
        """The yes/no question a second look asks: does the best-ranked passage sentence answer
        the question? None when the passages have no sentence."""
        return judge_messages(question, ranked[0].text) if ranked else None

    def second_look(self, question: str, ranked: list[ScoredSentence], model: str, options: AskOptions) -> str | None:
        """After a decline: the passage sentence most relevant to the question, with its citation,
        kept only if the model, asked yes or no, says it answers the question. The small model
        declines many questions whose answer is in its prompt but judges one candidate sentence
        better. Among its declines of ClapNQ questions, judging the best-ranked sentence told
        answerable from unanswerable ones better than judging an answer drawn out of the model
        (AUC 0.66 vs 0.56, bench/RESULTS.md), and it saves generating that answer."""
        messages = self.judge_prompt(question, ranked)
        if messages is None:
            return None
        bias = (YES_TOKENS, self.settings.answer.judge_bias)
        try:
            verdict = "".join(self._complete(messages, model, options, bias, max_tokens=3))
        except GenerationError:
            return None
        return cited(ranked[0]) if is_yes(verdict) else None

    def _complete(
        self,
        messages: list[dict[str, str]],
        model: str,
        options: AskOptions,
        token_bias: tuple[tuple[str, ...], float] | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[str]:
        """`token_bias` = (tokens, logit bias), applied for `local/` models only: it names tokens
        by their text, which llama.cpp accepts and other APIs do not."""
        cfg = self.settings.answer
        tokens, bias = token_bias or ((), 0.0)
        return stream_completion(
            messages,
            model=model,
            api_base=options.api_base or cfg.api_base,
            temperature=cfg.temperature if options.temperature is None else options.temperature,
            max_tokens=max_tokens or options.max_tokens or cfg.max_tokens,
            timeout_s=options.timeout_s or cfg.timeout_s,
            local_settings=self.settings.local_llm,
            logit_bias=[[token, bias] for token in tokens] if bias and is_local_model(model) else None,
        )

    def _abstain(
        self, question: str, model: str, hits: list[SearchHit], reason: str, draft: str | None = None, notice: str | None = None
    ) -> AnswerResponse:
        details = [n for n in (notice, reason, f"Draft answer: {draft.strip()}" if draft and draft.strip() else None) if n]
        return AnswerResponse(
            question=question, answer=NOT_FOUND_ANSWER, abstained=True, model=model, citations=[], passages=hits,
            notice=" ".join(details),
        )

    def _cited_response(self, question: str, model: str, raw: str, hits: list[SearchHit]) -> AnswerResponse:
        sentences = parse_answer(raw)
        documents = self.retriever.index.documents
        question_tokens = content_tokens(question)

        def verify(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], Verdict]:
            claims = [(sentences[i].text, documents[hits[n - 1].doc_id].text, hits[n - 1].start, hits[n - 1].end) for i, n in pairs]
            return dict(zip(pairs, self.verifier.verify(claims, question)))

        cited = {i: [n for n in s.numbers if 1 <= n <= len(hits)] for i, s in enumerate(sentences)}
        verdicts = verify([(i, n) for i, ns in cited.items() for n in ns])
        # A claim none of whose citations holds up may still be stated by another retrieved
        # passage: point the citation there (and say so) rather than show a wrong source.
        claims = {
            i for i, s in enumerate(sentences)
            if cited[i] or makes_claim(s.text, question_tokens)
        }
        unsupported = [i for i in sorted(claims) if not any(verdicts[(i, n)].supported for n in cited[i])]
        alternatives = verify([(i, n) for i in unsupported for n in range(1, len(hits) + 1) if n not in cited[i]])
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
            citations.append(Citation(
                id=len(citations) + 1, passage=n, sentence=i, chunk_id=hit.chunk_id, doc_id=hit.doc_id,
                start=verdict.span.start, end=verdict.span.end, text=documents[hit.doc_id].text[verdict.span.start : verdict.span.end],
                chunk_start=hit.start, chunk_end=hit.end, title=hit.title, supported=verdict.supported,
                score=round(verdict.score, 4), reason=reason, origin=origin,
            ))
            return len(citations)

        for i in range(len(sentences)):
            if i in repairs:
                n, verdict = repairs[i]
                if cited[i]:
                    wrong = ", ".join(f"[{m}]" for m in cited[i])
                    new_id = add(i, n, verdict, "corrected", f"the model cited passage {wrong}, which does not state this")
                    ids.update({(i, m): new_id for m in cited[i]})
                else:
                    insertions[i] = add(i, n, verdict, "added", "the model gave no citation; this passage states it")
                continue
            for n in cited[i]:
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
        dropped = sorted({n for s in sentences for n in s.numbers if not 1 <= n <= len(hits)})
        notice = f"Removed citation markers that point at no passage: {', '.join(f'[{n}]' for n in dropped)}." if dropped else None
        return AnswerResponse(
            question=question, answer=answer, abstained=False, model=model, citations=citations,
            sentences=out_sentences, passages=hits, notice=notice,
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


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)
