"""Evaluation metrics on small hand-made cases whose values are known."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT

from rag.config import Settings
from rag.errors import BadInputError
from rag.eval.beir import score_run
from rag.eval.evaluation import (
    EvalQuestion,
    alce_citation_scores,
    contains_answer,
    evaluate_questions,
    load_questions,
    summarize,
    token_f1,
    token_recall,
    verifier_entails,
)
from rag.requests import AskOptions
from rag.verify.verifier import Verifier


def test_retrieval_metrics_via_ranx_on_a_tiny_run() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d9": 1}}
    # q1: relevant at rank 1; q2: at rank 2; q3: judged but never retrieved (counts as 0).
    run = {"q1": {"d1": 2.0, "d3": 1.0}, "q2": {"d3": 2.0, "d2": 1.0}, "q3": {}}
    scores = score_run(qrels, run, ["mrr@10", "recall@1", "recall@10", "ndcg@10"])
    assert scores["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert scores["recall@1"] == pytest.approx(1 / 3)
    assert scores["recall@10"] == pytest.approx(2 / 3)
    assert scores["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_token_f1_and_recall() -> None:
    # 2 of 3 predicted tokens are in the 2-token gold: P 2/3, R 1, F1 0.8.
    assert token_f1("The cat sat", "the cat") == pytest.approx(0.8)
    assert token_recall("The cat sat", "the cat") == pytest.approx(1.0)
    # A short prediction of a long gold answer: recall 1/5, precision 1.
    assert token_recall("cat", "the cat sat on mats") == pytest.approx(0.2)
    assert token_f1("cat", "the cat sat on mats") == pytest.approx(2 * 0.2 / 1.2)
    assert token_f1("dog", "the cat") == 0.0
    # Accents and case are folded before comparing.
    assert token_f1("Điện Biên Phủ", "dien bien phu") == pytest.approx(1.0)


def test_contains_expected_answer() -> None:
    assert contains_answer("The garrison at Điện Biên Phủ fell in 1954.", ["dien bien phu"])
    assert contains_answer("It had 22,700 members.", ["22 700", "nope"])  # punctuation is not a token
    assert not contains_answer("It fell in 1954.", ["1955"])
    assert not contains_answer("It fell in 19545.", ["1954"])  # whole tokens only
    assert not contains_answer("Anything.", [])


def table_entails(supported: set[tuple[str, tuple[str, ...]]]):
    return lambda text, passages: (text, tuple(sorted(passages))) in supported


def test_alce_citation_scores_follow_alce_definitions() -> None:
    entails = table_entails(
        {
            ("s1", ("A",)),
            ("s2", ("B", "C")),  # only jointly: both are needed
            ("s3", ("D",)),
            ("s3", ("D", "E")),  # D alone suffices; E is neither alone nor needed
        }
    )
    assert alce_citation_scores([("s1", ("A",))], entails) == (1.0, 1.0)
    assert alce_citation_scores([("s2", ("B", "C"))], entails) == (1.0, 1.0)
    assert alce_citation_scores([("s3", ("D", "E"))], entails) == (1.0, 0.5)
    # Not entailed jointly: the sentence and its citations all count as failures.
    assert alce_citation_scores([("s1", ("B",))], entails) == (0.0, 0.0)
    # An uncited sentence lowers recall but adds no citation.
    recall, precision = alce_citation_scores([("s1", ("A",)), ("s9", ())], entails)
    assert (recall, precision) == (0.5, 1.0)
    # Everything together: 3 of 5 sentences entailed; relevant citations 1 + 2 + 1 of 1 + 2 + 2 + 1.
    recall, precision = alce_citation_scores(
        [("s1", ("A",)), ("s2", ("B", "C")), ("s3", ("D", "E")), ("s9", ()), ("s1", ("C",))], entails
    )
    assert recall == pytest.approx(3 / 5)
    assert precision == pytest.approx(4 / 6)
    assert alce_citation_scores([], entails) == (0.0, 0.0)


PASSAGE_FOUNDING = "The college was founded in 1850 by a group of Methodist ministers in the town of Ashbury."
PASSAGE_STUDENTS = "Today the college enrolls 20,000 students on its two campuses near the river."
PASSAGE_OTHER = "Tomato plants need full sun and regular watering to produce a good harvest in summer."


def test_verifier_as_alce_judge(embedder) -> None:
    entails = verifier_entails(Verifier(embedder, Settings().verification))
    # Verbatim from the cited passage: entailed; a passage about something else: not.
    assert entails("The college was founded in 1850 by Methodist ministers.", (PASSAGE_FOUNDING,))
    assert not entails("The college was founded in 1850 by Methodist ministers.", (PASSAGE_OTHER,))
    # Each number is in one passage only: only the two together support the claim, so both
    # citations are needed (precision 1); an unrelated third citation is not (precision 2/3).
    claim = "The college, founded in 1850, enrolls 20,000 students."
    assert not entails(claim, (PASSAGE_FOUNDING,)) and not entails(claim, (PASSAGE_STUDENTS,))
    assert alce_citation_scores([(claim, (PASSAGE_FOUNDING, PASSAGE_STUDENTS))], entails) == (1.0, 1.0)
    recall, precision = alce_citation_scores([(claim, (PASSAGE_FOUNDING, PASSAGE_STUDENTS, PASSAGE_OTHER))], entails)
    assert recall == 1.0 and precision == pytest.approx(2 / 3)


def row(answerable: bool, abstained: bool, **values) -> dict:
    base = {
        "answerable": answerable,
        "abstained": abstained,
        "correct": abstained if not answerable else False,
        "token_f1": 0.0,
        "token_recall": 0.0,
        "quote_cited": None,
        "claims": 0,
        "supported_claims": 0,
        "citations": 0,
        "supporting_citations": 0,
        "invalid_offsets": 0,
        "citation_recall": None,
        "citation_precision": None,
        "first_token_ms": None,
        "total_ms": 100.0,
    }
    return base | values


def test_summarize_abstention_and_macro_citation_scores() -> None:
    rows = [
        row(True, False, correct=True, citation_recall=1.0, citation_precision=1.0, token_f1=0.5, token_recall=1.0),
        row(True, False, citation_recall=0.5, citation_precision=0.0, token_f1=0.25, token_recall=0.5),
        row(True, True),  # a false abstention
        row(False, True),
        row(False, True),
        row(False, False),  # answered an unanswerable question
    ]
    metrics = summarize(rows)
    assert metrics["abstention"] == {
        "unanswerable_abstained": pytest.approx(2 / 3),
        "answerable_abstained": pytest.approx(1 / 3),
        # Right when it abstains on exactly the unanswerable ones: rows 1, 2, 4, 5.
        "accuracy": pytest.approx(4 / 6),
    }
    assert metrics["answer"]["accuracy"] == pytest.approx(1 / 3)
    assert metrics["answer"]["accuracy_when_answered"] == pytest.approx(1 / 2)
    assert metrics["answer"]["token_f1"] == pytest.approx(0.75 / 3)  # abstentions score 0
    assert metrics["answer"]["token_recall"] == pytest.approx(1.5 / 3)
    # Macro over the two answered answerable questions.
    assert metrics["citations"]["recall"] == pytest.approx(0.75)
    assert metrics["citations"]["precision"] == pytest.approx(0.5)


def test_load_questions_rejects_bad_records(tmp_path) -> None:
    good = tmp_path / "q.jsonl"
    good.write_text(json.dumps({"question": "Who?", "answers": ["x"]}) + "\n\n", encoding="utf-8")
    [question] = load_questions(good)
    assert question.id == "line1" and question.answerable
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answers": []}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match="bad.jsonl:1"):
        load_questions(bad)


def test_evaluate_questions_end_to_end_extractive(seed_service) -> None:
    """The real service (seed index, extractive answers): the report is consistent with itself."""
    questions = [
        EvalQuestion.model_validate(json.loads(line))
        for line in (ROOT / "bench/questions/seeds_qa.jsonl").read_text().splitlines()[:3]
    ]
    report = evaluate_questions(seed_service, questions, AskOptions(model="extractive"))
    metrics = report["metrics"]
    assert report["questions"] == 3 and len(report["per_question"]) == 3
    assert set(metrics["retrieval"]) == {"Recall@5", "MRR@10", "nDCG@10"}
    assert metrics["citations"]["invalid_offsets"] == 0
    answered = [r for r in report["per_question"] if not r["abstained"]]
    assert answered, "extractive answers these seed questions"
    for r in answered:
        assert 0.0 <= r["citation_recall"] <= 1.0 and 0.0 <= r["citation_precision"] <= 1.0
    assert metrics["citations"]["recall"] == pytest.approx(sum(r["citation_recall"] for r in answered) / len(answered))
    # What the model was shown, and its own citations before repair, are reported beside.
    assert all(r["quote_in_evidence"] for r in report["per_question"] if r["quote_cited"])
    assert metrics["citations"]["quote_in_evidence"] >= metrics["citations"]["quote_in_span"]
    assert metrics["citations"]["raw_recall"] is not None


def test_raw_citations_are_scored_before_the_verifier_repairs_them(seed_service, monkeypatch) -> None:
    """A model that cites the wrong passage: the delivered answer is repaired, the raw figures
    say what the model did."""
    from rag.answer import pipeline as answering

    question = "How many commune-level military party cells were established in Military Region 2?"
    passages = seed_service.answerer.draft(question, "openai/scripted", AskOptions()).passages
    wrong = next(i for i, p in enumerate(passages, start=1) if "529" not in p.text)
    monkeypatch.setattr(
        answering,
        "stream_completion",
        lambda messages, **kwargs: iter(
            [f"The Party Committee established 529 commune-level military party cells [{wrong}]."]
        ),
    )
    quote = "establishing 529 commune-level military party cells strictly and in accordance with principles."
    q = EvalQuestion(
        id="q", question=question, answers=["529"], quotes=[{"doc_id": "000_c1a45aa062b469e9.txt", "quote": quote}]
    )
    [row] = evaluate_questions(seed_service, [q], AskOptions(model="openai/scripted"))["per_question"]
    assert row["correct"] and row["citation_recall"] == 1.0
    assert row["raw_citation_recall"] == 0.0 and row["raw_citation_precision"] == 0.0
    assert row["quote_in_evidence"] and row["confidence"] is None
