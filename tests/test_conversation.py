"""Follow-up questions become standalone questions before retrieval."""

import pytest

from rag.answer.conversation import needs_context, standalone_question
from rag.config import Settings
from rag.requests import Turn

HISTORY = [
    Turn(question="How many commune-level military party cells were established?", answer="529 were established [1].")
]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("When was it founded?", True),
        ("What about the budget?", True),
        ("And in 2024?", True),
        ("Who directed those cells?", True),
        ("How many commune-level military party cells were established in Military Region 2?", False),
        ("Which river flooded Hanoi in October 2025?", False),
    ],
)
def test_needs_context(question: str, expected: bool) -> None:
    assert needs_context(question) is expected


def test_standalone_questions_and_empty_history_are_left_alone() -> None:
    settings = Settings()
    standalone = "Which river flooded Hanoi in October 2025?"
    assert standalone_question(standalone, HISTORY, "extractive", settings) == standalone
    assert standalone_question("When was it founded?", [], "extractive", settings) == "When was it founded?"


def test_without_an_llm_the_previous_question_gives_the_missing_referent() -> None:
    rewritten = standalone_question("Who directed that?", HISTORY, "extractive", Settings())
    assert rewritten == f"{HISTORY[0].question} Who directed that?"


def test_a_failing_model_falls_back_instead_of_failing_the_question() -> None:
    settings = Settings().replace(answer={"timeout_s": 2})
    # Nothing listens on this port: the call fails fast and the question is still answerable.
    rewritten = standalone_question(
        "Who directed that?", HISTORY, "openai/any", settings, api_base="http://127.0.0.1:9/v1"
    )
    assert rewritten == f"{HISTORY[0].question} Who directed that?"
