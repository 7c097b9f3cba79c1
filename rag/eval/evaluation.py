"""Evaluate answers on a question set: retrieval, answer correctness, ALCE-style citation
precision/recall, abstention, latency; a JSON report and a PNG chart.

Question set: JSON Lines with `question`, `answerable` (default true), `answers` (acceptable
short answers), `doc_ids` (gold documents) and/or `quotes` ([{doc_id, quote}], verbatim
supporting text), optional `id`.

Citation metrics follow ALCE (Gao et al. 2023, `compute_autoais`) with our verifier, as
`rag check` runs it (no question given), standing in for its NLI model, applied to the whole
retrieved passages that are cited (not the tight spans we show):
- recall of an answer = share of its sentences entailed by the concatenation of their cited
  passages (a sentence without citations counts as not entailed);
- precision of an answer = share of its citations that are relevant: the sentence is
  entailed jointly, and this passage supports it alone or is needed (the others without it
  do not);
- both are averaged over answers (macro), as ALCE does. One deviation: connective sentences
  that make no claim and carry no citation ("Here is what I found.") are left out.
The service's own per-citation verdicts are reported beside them (`service_*`)."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from rag.errors import BadInputError
from rag.eval.beir import run_queries, score_run
from rag.jsonl import read_json_lines
from rag.requests import AskOptions, AskRequest
from rag.schema import AnswerResponse
from rag.service import RagService
from rag.text.words import fold, makes_claim
from rag.verify.citations import parse_answer
from rag.verify.verifier import Verifier

RETRIEVAL_DEPTH = 10
Progress = Callable[[int, int], None]


class Quote(BaseModel):
    doc_id: str
    quote: str


class EvalQuestion(BaseModel):
    id: str
    question: str
    answerable: bool = True
    answers: list[str] = Field(default_factory=list)
    doc_ids: list[str] = Field(default_factory=list)
    quotes: list[Quote] = Field(default_factory=list)


def load_questions(path: Path) -> list[EvalQuestion]:
    questions = []
    for number, _, record in read_json_lines(path):
        try:
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            questions.append(EvalQuestion.model_validate({"id": f"line{number}", **record}))
        except ValueError as exc:
            raise BadInputError(f"{path}:{number}: not a question record ({str(exc).splitlines()[0]})") from None
    if not questions:
        raise BadInputError(f"{path} holds no questions")
    return questions


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", fold(text))


def _overlap(prediction: str, gold: str) -> tuple[float, float]:
    """(precision, recall) of the prediction's word tokens against the gold's, SQuAD-style."""
    pred, ref = _tokens(prediction), _tokens(gold)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0, 0.0
    return common / len(pred), common / len(ref)


def token_f1(prediction: str, gold: str) -> float:
    precision, recall = _overlap(prediction, gold)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def token_recall(prediction: str, gold: str) -> float:
    """Share of the gold answer's tokens the prediction holds: for long-form gold answers,
    where F1 also punishes every extra word of a correct but differently worded answer."""
    return _overlap(prediction, gold)[1]


def contains_answer(prediction: str, answers: list[str]) -> bool:
    # Space-padded so an answer matches whole tokens only ("1954" is not in "19545").
    folded = f" {' '.join(_tokens(prediction))} "
    return any(f" {' '.join(_tokens(a))} " in folded for a in answers if _tokens(a))


def quote_cited(response: AnswerResponse, quotes: list[Quote], documents: dict) -> bool:
    """Does a returned citation span cover at least half of a gold quote?"""
    return _covers([(c.doc_id, c.start, c.end) for c in response.citations], quotes, documents)


def quote_in_evidence(response: AnswerResponse, quotes: list[Quote], documents: dict) -> bool:
    """Was at least half of a gold quote among the evidence sentences the answer was chosen
    from? The figure that caps every reader: what the model never sees it cannot answer."""
    return _covers([(e.doc_id, e.start, e.end) for e in response.evidence], quotes, documents)


def _covers(spans: list[tuple[str, int, int]], quotes: list[Quote], documents: dict) -> bool:
    # By text, so that a span in one copy of a scraped-twice article covers the quote in the other.
    for doc_id, start, end in spans:
        text = documents[doc_id].text
        for quote in quotes:
            at = text.find(quote.quote)
            if at >= 0:
                overlap = min(at + len(quote.quote), end) - max(at, start)
                if overlap >= len(quote.quote) / 2:
                    return True
    return False


# (sentence, cited passage texts) -> are they, concatenated, evidence for the sentence?
Entails = Callable[[str, tuple[str, ...]], bool]


def alce_citation_scores(sentences: list[tuple[str, tuple[str, ...]]], entails: Entails) -> tuple[float, float]:
    """ALCE citation (recall, precision) of one answer, given each claim sentence with the
    passages it cites."""
    if not sentences:
        return 0.0, 0.0
    entailed = relevant = citations = 0
    for text, passages in sentences:
        citations += len(passages)
        if not passages or not entails(text, passages):
            continue  # not entailed: neither the sentence nor any of its citations counts
        entailed += 1
        if len(passages) == 1:
            relevant += 1
            continue
        for i, passage in enumerate(passages):
            # Relevant if it supports the sentence alone, or the rest cannot without it.
            if entails(text, (passage,)) or not entails(text, passages[:i] + passages[i + 1 :]):
                relevant += 1
    return entailed / len(sentences), (relevant / citations if citations else 0.0)


def verifier_entails(verifier: Verifier) -> Entails:
    """Our verifier as the entailment judge: the sentence against its cited passages joined
    (a two-sentence candidate span may then take one sentence from each, which is what joint
    support means). Memoised: precision asks about the same subsets again."""
    cache: dict[tuple[str, tuple[str, ...]], bool] = {}

    def entails(text: str, passages: tuple[str, ...]) -> bool:
        key = (text, passages)
        if key not in cache:
            joined = "\n\n".join(passages)
            cache[key] = verifier.verify([(text, joined, 0, len(joined))])[0].supported
        return cache[key]

    return entails


def cited_passages(response: AnswerResponse, documents: dict) -> list[tuple[str, tuple[str, ...]]]:
    """Each claim sentence of an answer with the whole retrieved passages its citations point
    into (each passage once)."""
    by_id = {c.id: c for c in response.citations}
    out = []
    for sentence in response.sentences:
        if sentence.status == "no_claim":
            continue
        spans = dict.fromkeys((by_id[c].doc_id, by_id[c].chunk_start, by_id[c].chunk_end) for c in sentence.citations)
        out.append((sentence.text, tuple(documents[d].text[a:b] for d, a, b in spans)))
    return out


def raw_cited_passages(response: AnswerResponse, documents: dict) -> list[tuple[str, tuple[str, ...]]]:
    """As `cited_passages`, for the answer as the model wrote it (`raw_answer`), before the
    verifier repaired its citations: what the model did, not what the service delivered."""
    out = []
    for sentence in parse_answer(response.raw_answer or ""):
        numbers = [n for n in sentence.numbers if 1 <= n <= len(response.passages)]
        if not numbers and not makes_claim(sentence.text, set()):
            continue
        hits = [response.passages[n - 1] for n in numbers]
        out.append((sentence.text, tuple(documents[h.doc_id].text[h.start : h.end] for h in hits)))
    return out


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def evaluate_questions(
    service: RagService, questions: list[EvalQuestion], options: AskOptions, progress: Progress | None = None
) -> dict:
    documents = service.store.documents
    entails = verifier_entails(service.answerer.verifier)
    rows = []
    for done, q in enumerate(questions, start=1):
        response = service.ask(AskRequest(question=q.question, **options.model_dump()))
        sentences = response.sentences
        claims = [s for s in sentences if s.status != "no_claim"]
        invalid = sum(documents[c.doc_id].text[c.start : c.end] != c.text for c in response.citations)
        citation_recall, citation_precision = (
            (None, None) if response.abstained else alce_citation_scores(cited_passages(response, documents), entails)
        )
        raw_recall, raw_precision = (
            (None, None)
            if response.abstained or not response.raw_answer
            else alce_citation_scores(raw_cited_passages(response, documents), entails)
        )
        rows.append(
            {
                "id": q.id,
                "question": q.question,
                "answerable": q.answerable,
                "abstained": response.abstained,
                "answer": response.answer,
                "notice": response.notice,
                "correct": (not response.abstained and contains_answer(response.answer, q.answers))
                if q.answerable
                else response.abstained,
                "token_f1": max((token_f1(response.answer, a) for a in q.answers), default=0.0)
                if q.answerable and not response.abstained
                else 0.0,
                "token_recall": max((token_recall(response.answer, a) for a in q.answers), default=0.0)
                if q.answerable and not response.abstained
                else 0.0,
                "quote_cited": quote_cited(response, q.quotes, documents) if q.answerable and q.quotes else None,
                "quote_in_evidence": quote_in_evidence(response, q.quotes, documents)
                if q.answerable and q.quotes
                else None,
                "confidence": response.confidence,
                "claims": len(claims),
                "supported_claims": sum(s.status in ("supported", "partly") for s in claims),
                "citations": len(response.citations),
                "supporting_citations": sum(bool(c.supported) for c in response.citations),
                "invalid_offsets": invalid,
                "citation_recall": citation_recall,
                "citation_precision": citation_precision,
                "raw_citation_recall": raw_recall,
                "raw_citation_precision": raw_precision,
                "first_token_ms": response.timings_ms.get("first_token"),
                "total_ms": response.timings_ms.get("total", 0.0),
            }
        )
        if progress:
            progress(done, len(questions))

    gold = {q.id: dict.fromkeys(q.doc_ids or [x.doc_id for x in q.quotes], 1) for q in questions if q.answerable}
    gold = {qid: docs for qid, docs in gold.items() if docs}
    retrieval = {}
    if gold:
        run = run_queries(
            service.retriever,
            {q.id: q.question for q in questions if q.id in gold},
            options.mode or service.settings.retrieval.mode,
            RETRIEVAL_DEPTH,
            RETRIEVAL_DEPTH,
        )
        scores = score_run(gold, run, ["recall@5", "mrr@10", "ndcg@10"])
        retrieval = {"Recall@5": scores["recall@5"], "MRR@10": scores["mrr@10"], "nDCG@10": scores["ndcg@10"]}
    return {
        "model": options.model or service.settings.answer.model,
        "mode": options.mode or service.settings.retrieval.mode,
        "questions": len(rows),
        "answerable": sum(r["answerable"] for r in rows),
        "unanswerable": sum(not r["answerable"] for r in rows),
        "metrics": {"retrieval": retrieval} | summarize(rows),
        "per_question": rows,
    }


def summarize(rows: list[dict]) -> dict:
    """Answer, citation, abstention and latency metrics from the per-question rows."""
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    answered = [r for r in answerable if not r["abstained"]]

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    with_quotes = [r for r in answerable if r["quote_cited"] is not None]
    raw = [r for r in answered if r.get("raw_citation_recall") is not None]
    first_tokens = [r["first_token_ms"] for r in rows if r["first_token_ms"] is not None]
    return {
        "answer": {
            "accuracy": share(sum(r["correct"] for r in answerable), len(answerable)),
            "accuracy_when_answered": share(sum(r["correct"] for r in answered), len(answered)),
            "token_f1": statistics.fmean(r["token_f1"] for r in answerable) if answerable else None,
            "token_recall": statistics.fmean(r["token_recall"] for r in answerable) if answerable else None,
        },
        "citations": {
            # ALCE, averaged over the answers given to answerable questions.
            "recall": statistics.fmean(r["citation_recall"] for r in answered) if answered else None,
            "precision": statistics.fmean(r["citation_precision"] for r in answered) if answered else None,
            # The same for the model's own citations, before the verifier repaired them.
            "raw_recall": statistics.fmean(r["raw_citation_recall"] for r in raw) if raw else None,
            "raw_precision": statistics.fmean(r["raw_citation_precision"] for r in raw) if raw else None,
            # The service's own verdicts (against the tight spans it cites, question known).
            "service_supported_claims": share(
                sum(r["supported_claims"] for r in answered), sum(r["claims"] for r in answered)
            ),
            "service_supported_citations": share(
                sum(r["supporting_citations"] for r in answered), sum(r["citations"] for r in answered)
            ),
            "quote_in_span": share(sum(bool(r["quote_cited"]) for r in with_quotes), len(with_quotes)),
            "quote_in_evidence": share(sum(bool(r.get("quote_in_evidence")) for r in with_quotes), len(with_quotes)),
            "invalid_offsets": sum(r["invalid_offsets"] for r in rows),
        },
        "abstention": {
            "unanswerable_abstained": share(sum(r["abstained"] for r in unanswerable), len(unanswerable)),
            "answerable_abstained": share(sum(r["abstained"] for r in answerable), len(answerable)),
            "accuracy": share(sum(r["abstained"] != r["answerable"] for r in rows), len(rows)),
        },
        "latency_ms": {
            "first_token_p50": _percentile(first_tokens, 0.5),
            "first_token_p95": _percentile(first_tokens, 0.95),
            "total_p50": _percentile([r["total_ms"] for r in rows], 0.5),
            "total_p95": _percentile([r["total_ms"] for r in rows], 0.95),
        },
    }


CHART_METRICS = [
    ("answer", "accuracy", "answer accuracy"),
    ("answer", "token_recall", "gold-answer token recall"),
    ("citations", "quote_in_evidence", "gold quote in the evidence"),
    ("citations", "quote_in_span", "gold quote cited"),
    ("citations", "recall", "citation recall"),
    ("citations", "precision", "citation precision"),
    ("abstention", "unanswerable_abstained", "abstains when unanswerable"),
    ("abstention", "answerable_abstained", "abstains when answerable"),
    ("retrieval", "Recall@5", "retrieval Recall@5"),
    ("retrieval", "nDCG@10", "retrieval nDCG@10"),
]


def chart_rows(report: dict) -> list[tuple[str, float]]:
    return [
        (label, report["metrics"][group][key])
        for group, key, label in CHART_METRICS
        if report["metrics"].get(group, {}).get(key) is not None
    ]


def write_chart(reports: dict[str, dict], path: Path) -> None:
    """Horizontal bars per metric, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(reports)
    labels = [label for label, _ in chart_rows(reports[names[0]])]
    height = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    for i, name in enumerate(names):
        values = dict(chart_rows(reports[name]))
        positions = [j + i * height for j in range(len(labels))]
        bars = ax.barh(positions, [values.get(label, 0.0) for label in labels], height=height, label=name)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    ax.set_yticks([j + height * (len(names) - 1) / 2 for j in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("share (higher is better, except 'abstains when answerable')")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Question-set evaluation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
