"""The numbered choice and the calibrated decision, without a model."""

from hypothesis import given
from hypothesis import strategies as st

from rag.answer.choice import choice_from_probabilities, choice_from_reply, parse_choice
from rag.answer.decision import DecisionModel, Signals, load_decision_model


@given(st.text(), st.integers(min_value=0, max_value=9))
def test_any_reply_maps_to_valid_distinct_candidates_or_none(reply: str, candidates: int) -> None:
    chosen = parse_choice(reply, candidates)
    assert all(0 <= i < candidates for i in chosen) and len(chosen) == len(set(chosen))


def test_replies_name_candidates_in_order_and_zero_means_none() -> None:
    assert parse_choice("3", 5) == [2]
    assert parse_choice("[3], [1] and 3 again", 5) == [2, 0]
    assert parse_choice("Sentence 7", 5) == []  # no such candidate
    assert parse_choice("0", 5) == [] and parse_choice("NOT_FOUND", 5) == []
    assert parse_choice("12", 9) == []  # not a label: labels are single digits


@given(
    st.dictionaries(st.text(max_size=3), st.floats(min_value=0, max_value=1), max_size=25),
    st.integers(min_value=1, max_value=9),
)
def test_first_token_probabilities_become_a_distribution_over_the_labels(probabilities, candidates) -> None:
    choice = choice_from_probabilities(probabilities, candidates)
    assert len(choice.p) == candidates
    assert abs(choice.p_none + sum(choice.p) - 1) < 1e-6
    assert choice.best is None or 0 <= choice.best < candidates


def test_labels_beyond_the_shown_candidates_and_other_tokens_are_ignored() -> None:
    choice = choice_from_probabilities({"2": 0.3, " 2": 0.1, "7": 0.5, "The": 0.05, "0": 0.1}, 3)
    assert choice.best == 1 and abs(choice.p[1] - 0.8) < 1e-9 and abs(choice.p_none - 0.2) < 1e-9
    assert choice_from_probabilities({"The": 1.0}, 3).best is None


def signals(p_choice: float, p_none: float) -> Signals:
    return Signals.of(retrieval=0.6, evidence=0.8, chosen=0.8, position=0, p_choice=p_choice, p_none=p_none)


def test_confidence_rises_with_the_models_certainty_and_the_threshold_decides() -> None:
    model = DecisionModel(
        features=["log_p_choice", "log_p_none"],
        coefficients=[1.0, -1.0],
        intercept=0.0,
        threshold=0.5,
    )
    sure, unsure = model.confidence(signals(0.9, 0.05)), model.confidence(signals(0.05, 0.9))
    assert sure > 0.9 > 0.1 > unsure
    assert model.confidence(signals(0.0, 0.0)) == model.confidence(signals(1e-9, 1e-9))  # floored, no log(0)


def test_the_shipped_decision_model_prefers_a_sure_choice_over_a_decline() -> None:
    model = load_decision_model()
    assert set(model.features) <= set(Signals.__dataclass_fields__) and 0 < model.threshold < 1
    assert model.confidence(signals(0.95, 0.01)) > model.threshold > model.confidence(signals(0.01, 0.98))


@given(st.text(), st.integers(min_value=1, max_value=9))
def test_a_text_reply_becomes_a_choice_that_names_what_it_names(reply: str, candidates: int) -> None:
    choice = choice_from_reply(reply, candidates)
    assert abs(choice.p_none + sum(choice.p) - 1) < 1e-9
    assert (choice.best is None) == (parse_choice(reply, candidates) == [])
