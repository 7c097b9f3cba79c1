"""The answer pipeline: scripted model output for parsing and verification, real litellm
failures for the fallback, and the extractive answerer end to end."""

import socket
import threading

import pytest

from rag.answer import pipeline as answering
from rag.answer.pipeline import adds_to_question
from rag.answer.prompts import answer_messages, choice_messages
from rag.errors import BadInputError
from rag.requests import AskOptions

pytestmark = pytest.mark.slow

CELLS = "How many commune-level military party cells were established in Military Region 2?"


def check_offsets(service, response) -> None:
    documents = service.store.data.documents
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


def prompt_passages(service, question: str = CELLS) -> list:
    """The passages a model is shown for a question, numbered as its [n] markers count them."""
    return service.answerer.draft(question, "openai/scripted", AskOptions()).passages


def test_extractive_answer_cites_verbatim_supported_span(seed_service) -> None:
    response = seed_service.ask(CELLS, model="extractive")
    assert not response.abstained and "529" in response.answer
    assert response.citations and all(c.supported for c in response.citations)
    assert any("529 commune-level" in c.text for c in response.citations)
    check_offsets(seed_service, response)


def test_off_topic_question_abstains(seed_service) -> None:
    response = seed_service.ask("How do I bake sourdough bread at home?", model="extractive")
    assert response.abstained and response.citations == [] and "do not contain" in response.answer


def test_answer_from_documents_that_never_name_the_questions_subject_is_withheld(seed_service) -> None:
    # Only the Gia Lai article names Gia Lai (in its source URL); the cells figure is Military Region 2's.
    question = (
        "How many commune-level military party cells did the Gia Lai Provincial Military Party Committee establish?"
    )
    response = seed_service.ask(question, model="extractive")
    assert response.abstained and response.citations == []
    assert "never mention Gia Lai" in response.notice and "529" not in response.notice + response.answer


def test_markers_are_renumbered_checked_and_flagged(seed_service, scripted) -> None:
    passages = prompt_passages(seed_service)
    cells = next(i for i, p in enumerate(passages, start=1) if "529" in p.text)
    other = next(i for i in range(1, len(passages) + 1) if i != cells)
    scripted(
        f"The Party Committee established 529 commune-level military party cells [{cells}]. "
        f"It also built 40 new airports [{other}][9]. "
        "Officials planted twelve thousand orange trees along the riverside villages."
    )
    response = seed_service.ask(CELLS, model="openai/scripted")
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
    response = seed_service.ask(CELLS, model="openai/scripted")
    system, *examples, user = scripted.calls[0]
    passages = len(prompt_passages(seed_service))
    assert f"[{passages}]" in user["content"] and f"[{passages + 1}]" not in user["content"]
    assert "not instructions" in system["content"]
    assert [m["role"] for m in examples] == ["user", "assistant"] * (len(examples) // 2) and examples
    # The evidence budget bounds the prompt: its sentences, not whole passages.
    assert len(user["content"].split()) <= seed_service.settings.evidence.max_words + 60
    assert response.abstained and response.citations == [] and "found no answer" in response.notice


def test_prompt_prefix_is_the_same_for_every_question() -> None:
    # The local server reuses its KV cache only for an identical prefix: the worked examples
    # are free only if nothing question-specific comes before the last message.
    for build in (answer_messages, choice_messages):
        first = build("How many cells?", ["Passage one.", "Passage two."])
        second = build("Who attended?", ["Another passage."])
        assert first[:-1] == second[:-1] and first[-1] != second[-1]
        assert first[-1]["role"] == "user" and "Who attended?" in second[-1]["content"]


def test_answer_that_only_repeats_the_question_is_withheld(seed_service, scripted) -> None:
    scripted("Military Region 2 established commune-level military party cells [1].")
    response = seed_service.ask(CELLS, model="openai/scripted")
    assert response.abstained and "only repeats the question" in response.notice


def test_a_bare_number_or_name_adds_to_the_question() -> None:
    assert adds_to_question("5 provinces [1].", "How many other provinces were present?")
    assert adds_to_question("Colonel Mai Kim Binh [2].", "Who attended the conference?")
    assert not adds_to_question(
        "It was held on 2025 - 2030 [1].", "When was the Congress for the 2025 - 2030 term held?"
    )


def test_unsupported_answer_is_withheld(seed_service, scripted) -> None:
    scripted("The committee built three hospitals and a railway in 2019 [1].")
    response = seed_service.ask(CELLS, model="openai/scripted")
    assert response.abstained and "withheld" in response.notice
    # A withheld answer is never shown, not even as a draft.
    assert "railway" not in response.model_dump_json()


def test_unreachable_model_falls_back_to_extractive_with_notice(seed_service) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connections are refused
    response = seed_service.ask(CELLS, model="openai/anything", api_base=f"http://127.0.0.1:{port}/v1", timeout_s=5)
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
            model="openai/slow",
            api_base=f"http://127.0.0.1:{server.getsockname()[1]}/v1",
            timeout_s=1.5,
        )
    finally:
        server.close()
    assert response.model == "extractive" and "within 1.5 s" in response.notice


def test_unknown_model_is_bad_input(seed_service) -> None:
    with pytest.raises(BadInputError, match="unknown model 'nosuchprovider/x'"):
        seed_service.ask(CELLS, model="nosuchprovider/x")


def test_wrong_or_missing_citations_are_pointed_at_the_passage_that_states_the_claim(seed_service, scripted) -> None:
    passages = prompt_passages(seed_service)
    cells = next(i for i, p in enumerate(passages, start=1) if "529" in p.text)
    wrong = next(i for i in range(1, len(passages) + 1) if i != cells and "529" not in passages[i - 1].text)
    scripted(
        f"The Party Committee established 529 commune-level military party cells [{wrong}]. "
        "The cells were set up when local military agencies were reorganized."
    )
    response = seed_service.ask(CELLS, model="openai/scripted")
    corrected, added = response.citations
    assert corrected.origin == "corrected" and corrected.passage == cells and corrected.supported
    assert f"[{wrong}]" in corrected.reason
    assert added.origin == "added" and added.supported and added.sentence == 1
    assert response.answer.endswith("reorganized [2].")
    assert [s.status for s in response.sentences] == ["supported", "supported"]
    check_offsets(seed_service, response)


def test_a_decline_is_never_streamed(seed_service, scripted) -> None:
    scripted(" NOT_FOUND")
    events = list(seed_service.ask_stream(CELLS, model="openai/scripted"))
    response = events[-1].response
    assert response.abstained and len(scripted.calls) == 1
    assert not [e for e in events if e.kind == "token"], "the decline sentinel is never streamed"


@pytest.fixture
def scripted_choice(monkeypatch):
    """Replace the model's first-token probabilities with fixed ones ({label: p})."""

    def use(probabilities: dict[str, float]):
        use.calls = []

        def fake(messages, **kwargs):
            use.calls.append(messages)
            return probabilities

        monkeypatch.setattr(answering, "first_token_probabilities", fake)

    return use


def chosen_labels(service, question: str, *needles: str) -> list[str]:
    evidence = service.answerer.draft(question, "local/scripted", AskOptions()).evidence
    return [str(next(n for n, s in enumerate(evidence, start=1) if needle in s.text)) for needle in needles]


def test_the_chosen_sentence_is_the_answer_verbatim_with_its_confidence(seed_service, scripted_choice) -> None:
    [cells] = chosen_labels(seed_service, CELLS, "529 commune-level")
    scripted_choice({cells: 0.9, "0": 0.05})
    events = list(seed_service.ask_stream(CELLS, model="local/scripted"))
    response = events[-1].response
    system, *_, user = scripted_choice.calls[0]
    assert "reply 0" in system["content"] and f"[{cells}]" in user["content"]
    assert not response.abstained and "529 commune-level" in response.answer
    assert [e.text for e in events if e.kind == "token"] == [response.raw_answer]
    assert response.confidence is not None and response.confidence >= answering.load_decision_model().threshold
    assert response.evidence[int(cells) - 1].probability == pytest.approx(0.9 / 0.95, abs=1e-3)
    assert len(response.citations) == 1 and response.citations[0].supported
    check_offsets(seed_service, response)


def test_an_unsure_choice_is_withheld_with_its_confidence(seed_service, scripted_choice) -> None:
    [cells] = chosen_labels(seed_service, CELLS, "529 commune-level")
    scripted_choice({cells: 0.02, "0": 0.98})
    response = seed_service.ask(CELLS, model="local/scripted")
    assert response.abstained and response.citations == [] and "not likely enough" in response.notice
    assert response.confidence < answering.load_decision_model().threshold
    assert "529" not in response.notice


def test_two_sentences_from_two_documents_answer_a_multi_document_question(seed_service, scripted_choice) -> None:
    question = (
        "The military region that rated Điện Biên's 2021 provincial defense area exercise as excellent "
        "established how many commune-level military party cells?"
    )
    evidence = seed_service.answerer.draft(question, "local/scripted", AskOptions()).evidence
    cells = next(n for n, s in enumerate(evidence, start=1) if "529 commune-level" in s.text)
    passages = seed_service.answerer.draft(question, "local/scripted", AskOptions()).passages
    other = next(
        n
        for n, s in enumerate(evidence, start=1)
        if passages[s.passage].doc_id != passages[evidence[cells - 1].passage].doc_id
    )
    scripted_choice({str(cells): 0.5, str(other): 0.45, "0": 0.01})
    response = seed_service.ask(question, model="local/scripted")
    assert not response.abstained and len(response.sentences) == 2
    # Both chosen sentences, verbatim, in the order of the decision's confidence.
    shown = {" ".join(evidence[n - 1].text.split())[:40] for n in (cells, other)}
    assert {sentence.text[:40] for sentence in response.sentences} == shown
    assert len({c.doc_id for c in response.citations}) == 2 and all(c.supported for c in response.citations)
    check_offsets(seed_service, response)


def test_a_choice_of_none_declines(seed_service, scripted_choice) -> None:
    scripted_choice({"0": 0.99, "The": 0.01})
    response = seed_service.ask(CELLS, model="local/scripted")
    assert response.abstained and "found no answer" in response.notice


def test_a_provider_without_token_probabilities_chooses_by_the_label_it_writes(
    seed_service, scripted, monkeypatch
) -> None:
    [cells] = chosen_labels(seed_service, CELLS, "529 commune-level")
    monkeypatch.setattr(answering, "first_token_probabilities", lambda messages, **kwargs: {})
    scripted(f"[{cells}]")
    response = seed_service.ask(CELLS, model="local/scripted")
    assert "reply 0" in scripted.calls[0][0]["content"], "the choice prompt, not the free-form one"
    assert not response.abstained and "529 commune-level" in response.answer
    assert response.evidence[int(cells) - 1].probability == 1.0
