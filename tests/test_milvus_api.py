"""The HTTP API over the Milvus store: the API tests once more against a real `rag serve`
whose index is in a `milvus-lite server`, two replicas sharing one collection, and 503 while
Milvus is down."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from conftest import TEST_BODY_LIMIT, TEST_UPLOAD_LIMIT, LiveServer, MilvusServer, serve, start_milvus

# The API tests that need no model but the extractive one, collected here once more.
from test_api import (  # noqa: F401
    api,
    test_ask_abstains_when_the_documents_do_not_hold_the_answer,
    test_ask_returns_checked_citations_with_exact_offsets,
    test_ask_stream_sends_passages_then_the_same_answer_as_post_ask,
    test_bad_ask_input_is_a_4xx_even_when_streaming,
    test_bad_search_input_is_a_4xx_with_a_message,
    test_bad_uploads_are_refused_and_leave_nothing_behind,
    test_check_verdicts,
    test_follow_up_is_rewritten_with_the_conversation,
    test_health_and_openapi,
    test_search_has_the_cli_shape_and_honours_filters,
    test_the_connection_stays_usable_after_refused_requests,
    test_upload_search_fetch_and_delete_a_document,
    test_whole_document_page_highlights_the_span,
)

pytestmark = pytest.mark.slow


def milvus_env(server: MilvusServer, collection: str) -> dict[str, str]:
    return {"RAG_STORE__BACKEND": "milvus", "RAG_STORE__URI": server.uri, "RAG_STORE__COLLECTION": collection}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, milvus_server) -> Iterator[LiveServer]:
    """`rag serve` as test_api's, its index in Milvus."""
    yield from serve(
        tmp_path_factory,
        {
            **milvus_env(milvus_server, f"api_{uuid.uuid4().hex[:8]}"),
            "RAG_SERVER__MAX_UPLOAD_BYTES": str(TEST_UPLOAD_LIMIT),
            "RAG_SERVER__MAX_BODY_BYTES": str(TEST_BODY_LIMIT),
        },
    )


@contextmanager
def replica(tmp_path_factory, env: dict[str, str]) -> Iterator[httpx.Client]:
    servers = serve(tmp_path_factory, env)
    server = next(servers)
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            yield client
    finally:
        servers.close()


def test_two_replicas_see_each_others_uploads_and_deletions(tmp_path_factory, milvus_server) -> None:
    env = milvus_env(milvus_server, f"replicas_{uuid.uuid4().hex[:8]}")
    with replica(tmp_path_factory, env) as first, replica(tmp_path_factory, env) as second:
        note = b"# Ferry timetable\n\nThe Osterby night ferry leaves the northern quay at 23:40 carrying the island's mail sacks.\n"
        assert first.post("/documents", files={"file": ("ferry.md", note, "text/markdown")}).status_code == 201
        assert "ferry.md" in {d["doc_id"] for d in second.get("/documents").json()["documents"]}
        assert second.get("/documents/ferry.md").json()["text"] == note.decode()
        query = {"query": "When does the Osterby night ferry leave?", "k": 3}
        answers = [client.post("/search", json=query) for client in (second, first)]
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        hits = answers[0].json()["results"]
        assert hits[0]["doc_id"] == "ferry.md" and hits == answers[1].json()["results"]

        assert second.delete("/documents/ferry.md").status_code == 200
        assert first.get("/documents/ferry.md").status_code == 404
        assert all(h["doc_id"] != "ferry.md" for h in first.post("/search", json=query).json()["results"])
        assert first.get("/health").json()["documents"] == second.get("/health").json()["documents"] == 5


def test_the_api_answers_503_while_milvus_is_down_and_recovers_without_a_restart(tmp_path_factory) -> None:
    data = tmp_path_factory.mktemp("milvus-down") / "data"
    milvus = start_milvus(data)
    try:
        with replica(tmp_path_factory, milvus_env(milvus, "down")) as client:
            before = client.post("/search", json={"query": "party cells", "k": 1})
            assert before.status_code == 200 and before.json()["results"], before.text
            milvus.stop()
            for response in (client.post("/search", json={"query": "party cells", "k": 1}), client.get("/documents")):
                assert response.status_code == 503
                assert response.json()["detail"].startswith(f"Milvus at {milvus.uri} failed: ")
            milvus = start_milvus(data, milvus.port)
            # The first request after the restart succeeds, over the collection the server kept.
            recovered = client.post("/search", json={"query": "party cells", "k": 1})
            assert recovered.status_code == 200, recovered.text
            assert recovered.json()["results"] == before.json()["results"]
            assert client.get("/documents").json()["documents"]
    finally:
        milvus.stop()
