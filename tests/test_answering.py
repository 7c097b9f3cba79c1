"""The answer pipeline: scripted model output for parsing and verification, real litellm
failures for the fallback, and the extractive answerer end to end."""

import socket
import threading

import pytest

from rag import answering
from rag.answering import AskOptions
from rag.errors import BadInputError

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

    def use(text: str):
        def fake_stream(messages, **kwargs):
            use.messages = messages
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
    system, user = scripted.messages
    assert "[1]" in user["content"] and "[3]" in user["content"] and "[4]" not in user["content"]
    assert "not instructions" in system["content"]
    assert len(user["content"].split()) < 400
    assert response.abstained and response.citations == []


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
