"""The OpenAI-compatible chat endpoint of a real `rag serve` process, driven by the official
`openai` client: models, plain and streamed answers with their verified citations,
follow-ups, the server's model policy and keys, and one answer from the embedded model."""

import httpx
import openai
import pytest
from conftest import READ_KEY, make_service, make_settings
from fastapi.testclient import TestClient

from rag.answer import pipeline
from rag.serve.api import create_api

pytestmark = pytest.mark.slow

QUESTION = "How many commune-level military party cells were established?"


@pytest.fixture(scope="module")
def client(live_server):
    with openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key="not-checked-without-keys", max_retries=0, timeout=300
    ) as client:
        yield client


def document_text(url: str, doc_id: str) -> str:
    return httpx.get(f"{url}/documents/{doc_id}", timeout=60).json()["text"]


def ask(client, content: str, model: str = "extractive", **options):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **options)


def test_models_are_rag_and_those_a_client_may_choose(client) -> None:
    assert [m.id for m in client.models.list()] == ["rag", "local/qwen2.5-1.5b-instruct", "extractive"]


def test_the_reply_is_the_cited_answer_and_its_citations_are_verified_spans(client, live_server) -> None:
    completion = ask(client, QUESTION)
    content = completion.choices[0].message.content
    assert completion.object == "chat.completion" and completion.choices[0].finish_reason == "stop"
    assert "529" in content and content == completion.answer["answer"]
    assert not completion.answer["abstained"] and completion.answer["model"] == "extractive"
    assert completion.citations and completion.citations == completion.answer["citations"]
    for citation in completion.citations:
        assert citation["supported"] and f"[{citation['id']}]" in content
        assert (
            document_text(live_server.url, citation["doc_id"])[citation["start"] : citation["end"]] == citation["text"]
        )


def test_a_stream_brings_the_role_then_the_same_answer_and_the_citations_last(client) -> None:
    chunks = list(ask(client, QUESTION, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and all(c.choices[0].finish_reason is None for c in chunks[:-1])
    plain = ask(client, QUESTION)
    assert content == plain.choices[0].message.content
    assert last.citations == plain.citations and last.answer["answer"] == content
    assert len({c.id for c in chunks}) == 1


def test_earlier_turns_make_a_follow_up_answerable(client) -> None:
    completion = client.chat.completions.create(
        model="extractive",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},  # skipped: answers come from the documents
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "529 commune-level military party cells were established [1]."},
            {"role": "user", "content": [{"type": "text", "text": "Which party committee directed that?"}]},
        ],
    )
    answer = completion.answer
    assert answer["question"] == "Which party committee directed that?"
    assert "military party cells" in answer["rewritten_question"]
    assert "Party Committee" in completion.choices[0].message.content


def test_a_question_the_documents_do_not_answer_is_withheld_with_its_reason(client) -> None:
    completion = ask(client, "What is the boiling point of liquid nitrogen on Mars?")
    assert completion.answer["abstained"] and completion.citations == []
    assert completion.answer["abstention"] in {"no_evidence", "declined"} and completion.answer["notice"]


@pytest.mark.parametrize(
    ("messages", "model", "error", "message"),
    [
        (
            [{"role": "user", "content": QUESTION}],
            "openai/gpt-4o-mini",
            openai.BadRequestError,
            "not offered by this server",
        ),
        (
            [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "529"}],
            "rag",
            openai.BadRequestError,
            "last message must be the user's",
        ),
        (
            [{"role": "system", "content": "Be brief."}],
            "rag",
            openai.BadRequestError,
            "last message must be the user's",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
            "rag",
            openai.BadRequestError,
            "only text",
        ),
        ([{"role": "user", "content": "   "}], "extractive", openai.BadRequestError, "empty"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_are_4xx_errors_the_client_raises(client, messages, model, error, message, stream) -> None:
    with pytest.raises(error) as raised:
        client.chat.completions.create(model=model, messages=messages, stream=stream)
    assert message in raised.value.message


def test_limits_of_post_ask_apply(client) -> None:
    with pytest.raises(openai.UnprocessableEntityError):
        ask(client, QUESTION, extra_body={"k": 500})
    with pytest.raises(openai.UnprocessableEntityError):
        ask(client, QUESTION, n=2)
    only = ask(client, QUESTION, extra_body={"doc_ids": ["002_be266ad687065662.txt"], "k": 3})
    assert {p["doc_id"] for p in only.answer["passages"]} <= {"002_be266ad687065662.txt"}


def test_keys_are_checked_as_for_the_api(keyed_server) -> None:
    with openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="not-a-key-" + "x" * 20, max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
        with pytest.raises(openai.AuthenticationError):
            ask(stranger, QUESTION)
    with openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=READ_KEY, max_retries=0, timeout=300) as reader:
        assert "rag" in [m.id for m in reader.models.list()]
        assert "529" in ask(reader, QUESTION).choices[0].message.content


@pytest.mark.parametrize(
    ("reply", "shown", "never_shown"),
    [
        ("The committee built three hospitals and a railway in 2019 [1].", "do not contain an answer", "railway"),
        ("Military Region 2 established 529 commune-level military party cells [3].", "529", "[3]"),
    ],
)
def test_a_stream_shows_only_the_checked_answer(seed_service, embedder, monkeypatch, reply, shown, never_shown) -> None:
    """A model writing free text: an unsupported answer is withheld and never streamed, and a
    supported one arrives as checked and renumbered, not as the model's tokens."""

    def scripted(messages, **kwargs):
        for i in range(0, len(reply), 5):
            yield reply[i : i + 5]

    monkeypatch.setattr(pipeline, "stream_completion", scripted)
    settings = make_settings(seed_service.settings.index.dir, server={"allow_client_models": ["openai/scripted"]})
    with TestClient(create_api(make_service(settings, embedder))) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        chunks = list(ask(client, QUESTION, model="openai/scripted", stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert shown in content and never_shown not in content
    answer = chunks[-1].answer
    assert content == answer["answer"] and all(c["supported"] for c in chunks[-1].citations)
    assert answer["abstained"] or (answer["raw_answer"] == reply != content and "[1]" in content)


def test_the_embedded_model_answers_through_the_endpoint(client) -> None:
    """`rag`: the server's own answer model, the bundled GGUF, choosing among the evidence."""
    completion = ask(
        client, "How many commune-level military party cells did Military Region 2 establish?", model="rag"
    )
    assert completion.model == "rag" and completion.answer["model"] == "local/qwen2.5-1.5b-instruct"
    assert not completion.answer["abstained"], completion.answer["notice"]
    assert "529" in completion.choices[0].message.content
    assert any(c["supported"] and "529" in c["text"] for c in completion.citations)
