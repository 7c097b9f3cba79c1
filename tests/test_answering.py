"""The answer pipeline: scripted model output for parsing and verification, real litellm
failures for the fallback, and the extractive answerer end to end."""

import socket
import threading

import pytest

from rag import answering
from rag.answering import AskOptions, adds_to_question
from rag.errors import BadInputError
from rag.generation import GenerationError
from rag.extractive import ScoredSentence, trimmed_passages
from rag.prompts import answer_messages
from rag.schema import SearchHit, Span

pytestmark = pytest.mark.slow

CELLS = "How many commune-level military party cells were established in Military Region 2?"


def check_offsets(service, response) -> None:
    documents = service.index.documents
    for citation in response.citations:
        text = documents[citation.doc_id].text
        assert text[citation.start : citation.end] == citation.text
        assert citation.chunk_start <= citation.start < citation.end <= citation.chunk_end
    for sentence in response.sentences:
        assert response.answer[sentence.start : sentence.end].startswith(sentence.text.split()[0])


@pytest.fixture
def scripted(monkeypatch):
    """Replace the LLM call with fixed text (split in pieces, as a stream arrives)."""

    def use(*texts: str):
        """One reply per call, in order; the last one repeats."""
        use.calls = []

        def fake_stream(messages, **kwargs):
            use.messages = messages
            use.calls.append(messages)
            text = texts[min(len(use.calls), len(texts)) - 1]
            for i in range(0, len(text), 7):
                yield text[i : i + 7]

        monkeypatch.setattr(answering, "stream_completion", fake_stream)

    return use


def test_extractive_answer_cites_verbatim_supported_span(seed_service) -> None:
    response = seed_service.ask(CELLS, AskOptions(model="extractive"))
    assert not response.abstained and "529" in response.answer
    assert response.citations and all(c.supported for c in response.citations)
    assert any("529 commune-level" in c.text for c in response.citations)
    check_offsets(seed_service, response)


def test_off_topic_question_abstains(seed_service) -> None:
    response = seed_service.ask("How do I bake sourdough bread at home?", AskOptions(model="extractive"))
    assert response.abstained and response.citations == [] and "do not contain" in response.answer


def test_answer_from_documents_that_never_name_the_questions_subject_is_withheld(seed_service) -> None:
    # Only the Gia Lai article names Gia Lai (in its source URL); the cells figure is Military Region 2's.
    question = "How many commune-level military party cells did the Gia Lai Provincial Military Party Committee establish?"
    response = seed_service.ask(question, AskOptions(model="extractive"))
    assert response.abstained and response.citations == []
    assert "never mention Gia Lai" in response.notice and "529" in response.notice


def test_markers_are_renumbered_checked_and_flagged(seed_service, scripted) -> None:
    passages = seed_service.search(CELLS, k=4).results
    cells = next(i for i, p in enumerate(passages, start=1) if "529" in p.text)
    other = next(i for i in range(1, 5) if i != cells)
    scripted(
        f"The Party Committee established 529 commune-level military party cells [{cells}]. "
        f"It also built 40 new airports [{other}][9]. "
        "Officials planted twelve thousand orange trees along the riverside villages."
    )
    response = seed_service.ask(CELLS, AskOptions(model="openai/scripted"))
    assert not response.abstained
    first, second, third = response.sentences
    assert first.status == "supported" and second.status == "unsupported" and third.status == "uncited"
    assert [c.passage for c in response.citations] == [cells, other]
    assert response.answer.startswith("The Party Committee established 529 commune-level military party cells [1].")
    assert "[2]." in response.answer and "[9]" not in response.answer
    assert "[9]" in response.notice
    assert response.citations[1].supported is False and "40" in response.citations[1].reason
    check_offsets(seed_service, response)


def test_prompt_numbers_passages_and_keeps_them_short(seed_service, scripted) -> None:
    scripted("NOT_FOUND")
    response = seed_service.ask(CELLS, AskOptions(model="openai/scripted", k=3))
    system, *examples, user = scripted.calls[0]
    assert "[1]" in user["content"] and "[3]" in user["content"] and "[4]" not in user["content"]
    assert "not instructions" in system["content"]
    assert [m["role"] for m in examples] == ["user", "assistant"] * (len(examples) // 2) and examples
    assert user["content"].count("…") <= seed_service.settings.answer.prompt_sentences - 3
    assert len(user["content"].split()) < 400
    assert response.abstained and response.citations == []


def test_prompt_prefix_is_the_same_for_every_question() -> None:
    # The local server reuses its KV cache only for an identical prefix: the worked examples
    # are free only if nothing question-specific comes before the last message.
    first = answer_messages("How many cells?", ["Passage one.", "Passage two."])
    second = answer_messages("Who attended?", ["Another passage."])
    assert first[:-1] == second[:-1] and first[-1] != second[-1]
    assert first[-1]["role"] == "user" and "Who attended?" in second[-1]["content"]


def sentence(passage: int, start: int, score: float) -> ScoredSentence:
    return ScoredSentence(passage, Span(start=start, end=start + 5), f"p{passage}s{start}", score)


def test_trimmed_passages_keep_each_passage_best_sentence_and_spend_the_rest_on_the_best_overall() -> None:
    hits = [SearchHit(rank=i + 1, score=1.0, chunk_id=f"c{i}", doc_id="d", start=0, end=100, text=f"full {i}", title="t")
            for i in range(3)]
    ranked = sorted([
        sentence(0, 0, 0.9), sentence(0, 10, 0.8), sentence(0, 20, 0.7), sentence(0, 30, 0.6),
        sentence(1, 0, 0.3), sentence(1, 10, 0.2), sentence(2, 0, 0.5),
    ], key=lambda s: -s.score)
    # Budget 5: the three passage bests, then 0.8 and 0.7 (passage 0 is capped at 3).
    assert trimmed_passages(hits, ranked, per_passage=3, budget=5) == ["p0s0 … p0s10 … p0s20", "p1s0", "p2s0"]
    # The cap moves the budget to the next best sentence of another passage, in reading order.
    assert trimmed_passages(hits, ranked, per_passage=2, budget=5) == ["p0s0 … p0s10", "p1s0 … p1s10", "p2s0"]
    # A passage without sentences is given whole.
    assert trimmed_passages(hits, [s for s in ranked if s.passage != 2], 3, 4)[2] == "full 2"


def test_answer_that_only_repeats_the_question_is_withheld(seed_service, scripted) -> None:
    scripted("Military Region 2 established commune-level military party cells [1].")
    response = seed_service.ask(CELLS, AskOptions(model="openai/scripted"))
    assert response.abstained and "only repeats the question" in response.notice


def test_a_bare_number_or_name_adds_to_the_question() -> None:
    assert adds_to_question("5 provinces [1].", "How many other provinces were present?")
    assert adds_to_question("Colonel Mai Kim Binh [2].", "Who attended the conference?")
    assert not adds_to_question("It was held on 2025 - 2030 [1].", "When was the Congress for the 2025 - 2030 term held?")


def test_unsupported_answer_is_withheld(seed_service, scripted) -> None:
    scripted("The committee built three hospitals and a railway in 2019 [1].")
    response = seed_service.ask(CELLS, AskOptions(model="openai/scripted"))
    assert response.abstained and "withheld" in response.notice and "railway" in response.notice


def test_unreachable_model_falls_back_to_extractive_with_notice(seed_service) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connections are refused
    response = seed_service.ask(
        CELLS, AskOptions(model="openai/anything", api_base=f"http://127.0.0.1:{port}/v1", timeout_s=5)
    )
    assert response.model == "extractive" and "extractive answer" in response.notice
    assert "529" in response.answer and all(c.supported for c in response.citations)


def test_model_that_hangs_times_out_and_falls_back(seed_service) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        response = seed_service.ask(
            CELLS,
            AskOptions(model="openai/slow", api_base=f"http://127.0.0.1:{server.getsockname()[1]}/v1", timeout_s=1.5),
        )
    finally:
        server.close()
    assert response.model == "extractive" and "within 1.5 s" in response.notice


def test_unknown_model_is_bad_input(seed_service) -> None:
    with pytest.raises(BadInputError, match="unknown model 'nosuchprovider/x'"):
        seed_service.ask(CELLS, AskOptions(model="nosuchprovider/x"))


def test_wrong_or_missing_citations_are_pointed_at_the_passage_that_states_the_claim(seed_service, scripted) -> None:
    passages = seed_service.search(CELLS, k=4).results
    cells = next(i for i, p in enumerate(passages, start=1) if "529" in p.text)
    wrong = next(i for i in range(1, 5) if i != cells and "529" not in passages[i - 1].text)
    scripted(
        f"The Party Committee established 529 commune-level military party cells [{wrong}]. "
        "The cells were set up when local military agencies were reorganized."
    )
    response = seed_service.ask(CELLS, AskOptions(model="openai/scripted"))
    corrected, added = response.citations
    assert corrected.origin == "corrected" and corrected.passage == cells and corrected.supported
    assert f"[{wrong}]" in corrected.reason
    assert added.origin == "added" and added.supported and added.sentence == 1
    assert response.answer.endswith("reorganized [2].")
    assert [s.status for s in response.sentences] == ["supported", "supported"]
    check_offsets(seed_service, response)


def test_a_decline_gets_a_second_look_at_the_best_sentence_that_the_model_must_confirm(seed_service, scripted) -> None:
    scripted("NOT_FOUND", "Yes.")
    response = seed_service.ask(CELLS, AskOptions(model="openai/scripted"))
    assert len(scripted.calls) == 2
    judge = scripted.calls[-1][-1]["content"]
    # The judge sees the best-ranked passage sentence, which then becomes the answer, cited and checked.
    assert CELLS in judge and "establishing 529 commune-level military party cells" in judge
    assert not response.abstained and "establishing 529 commune-level military party cells" in response.answer
    assert response.citations[0].supported and "first found no answer" in response.notice
    check_offsets(seed_service, response)

    scripted("NOT_FOUND", "No")
    response = seed_service.ask(CELLS, AskOptions(model="openai/scripted"))
    assert response.abstained and response.citations == []


def test_a_judge_that_fails_leaves_the_decline_standing(seed_service, monkeypatch) -> None:
    calls = []

    def decline_then_fail(messages, **kwargs):
        calls.append(messages)
        if len(calls) > 1:
            raise GenerationError("the model did not answer within 90 s")
        yield "NOT_FOUND"

    monkeypatch.setattr(answering, "stream_completion", decline_then_fail)
    response = seed_service.ask(CELLS, AskOptions(model="openai/scripted"))
    assert response.abstained and len(calls) == 2 and "found no answer" in response.notice


def test_a_decline_is_never_streamed_and_the_second_look_can_be_turned_off(seed_service, scripted) -> None:
    scripted(" NOT_FOUND")
    events = list(seed_service.ask_stream(CELLS, AskOptions(model="openai/scripted")))
    response = events[-1].response
    assert response.abstained and len(scripted.calls) == 2
    assert not [e for e in events if e.kind == "token"], "the decline sentinel is never streamed"
    seed_service.settings.answer.second_look = False
    try:
        scripted("NOT_FOUND", "The Party Committee established 529 commune-level military party cells [1].")
        response = seed_service.ask(CELLS, AskOptions(model="openai/scripted"))
    finally:
        seed_service.settings.answer.second_look = True
    assert response.abstained and len(scripted.calls) == 1
