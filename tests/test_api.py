"""The HTTP API of a real `rag serve` process, over real sockets: JSON shapes, streaming,
uploads and their limits, and 4xx answers for bad input."""

import json
import threading
import time

import httpx
import pytest
from conftest import TEST_BODY_LIMIT, TEST_UPLOAD_LIMIT

pytestmark = pytest.mark.slow

QUESTION = "How many commune-level military party cells were established?"
DOC = "000_c1a45aa062b469e9.txt"


@pytest.fixture(scope="module")
def api(live_server):
    with httpx.Client(base_url=live_server.url, timeout=300) as client:
        yield client


def sse_events(response: httpx.Response) -> list[tuple[str, object]]:
    events, name, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif not line and name:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []
    return events


def test_health_and_openapi(api) -> None:
    health = api.get("/health").json()
    assert health["status"] == "ok" and health["documents"] == 5 and health["passages"] > 0
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/health", "/search", "/ask", "/ask/stream", "/check", "/documents", "/documents/{doc_id}"} <= set(paths)
    assert api.get("/docs").status_code == 200


def test_search_has_the_cli_shape_and_honours_filters(api) -> None:
    payload = api.post("/search", json={"query": QUESTION, "k": 3}).json()
    assert payload["query"] == QUESTION and len(payload["results"]) == 3
    top = payload["results"][0]
    assert {"rank", "score", "chunk_id", "doc_id", "start", "end", "text"} <= set(top)
    assert "529 commune-level military party cells" in top["text"]
    text = api.get(f"/documents/{top['doc_id']}").json()["text"]
    assert text[top["start"] : top["end"]] == top["text"]
    only = api.post("/search", json={"query": QUESTION, "k": 5, "doc_ids": ["002_be266ad687065662.txt"]}).json()
    assert {r["doc_id"] for r in only["results"]} == {"002_be266ad687065662.txt"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query": "   "}, 400, "empty"),
        ({"query": "x" * 5000}, 400, "the limit is 2000"),
        ({"query": "cells", "mode": "fuzzy"}, 422, "hybrid"),
        ({"query": "cells", "k": 0}, 422, "greater than"),
        ({"query": "cells", "doc_ids": ["missing.txt"]}, 400, "missing.txt"),
    ],
)
def test_bad_search_input_is_a_4xx_with_a_message(api, body, status, message) -> None:
    response = api.post("/search", json=body)
    assert response.status_code == status
    assert message in json.dumps(response.json()["detail"])


def test_ask_returns_checked_citations_with_exact_offsets(api) -> None:
    payload = api.post("/ask", json={"question": QUESTION, "model": "extractive"}).json()
    assert not payload["abstained"] and "529" in payload["answer"]
    assert payload["citations"] and all(c["supported"] for c in payload["citations"])
    for citation in payload["citations"]:
        assert f"[{citation['id']}]" in payload["answer"]
        text = api.get(f"/documents/{citation['doc_id']}").json()["text"]
        assert text[citation["start"] : citation["end"]] == citation["text"]


def test_ask_stream_sends_passages_then_the_same_answer_as_post_ask(api) -> None:
    body = {"question": QUESTION, "model": "extractive"}
    with api.stream("POST", "/ask/stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names[0] == "passages" and names[-1] == "answer"
    streamed = events[-1][1]
    direct = api.post("/ask", json=body).json()
    for key in ("answer", "abstained", "citations", "sentences"):
        assert streamed[key] == direct[key]


def test_ask_abstains_when_the_documents_do_not_hold_the_answer(api) -> None:
    payload = api.post(
        "/ask", json={"question": "What is the boiling point of liquid nitrogen on Mars?", "model": "extractive"}
    ).json()
    assert payload["abstained"] and payload["citations"] == []


def test_follow_up_is_rewritten_with_the_conversation(api) -> None:
    history = [{"question": QUESTION, "answer": "529 commune-level military party cells were established [1]."}]
    payload = api.post(
        "/ask", json={"question": "Which party committee directed that?", "model": "extractive", "history": history}
    ).json()
    assert payload["question"] == "Which party committee directed that?"
    assert payload["rewritten_question"] and "military party cells" in payload["rewritten_question"]
    assert not payload["abstained"] and "Party Committee" in payload["answer"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"question": ""}, 400, "empty"),
        ({"question": QUESTION, "model": "nosuchprovider/model"}, 400, "not offered by this server"),
        ({"question": QUESTION, "model": "extractive", "doc_ids": ["nope.md"]}, 400, "nope.md"),
    ],
)
def test_bad_ask_input_is_a_4xx_even_when_streaming(api, body, status, message) -> None:
    for path in ("/ask", "/ask/stream"):
        response = api.post(path, json=body)
        assert response.status_code == status, path
        assert message in response.json()["detail"]


def test_check_verdicts(api) -> None:
    supported = api.post(
        "/check", json={"claim": "529 commune-level military party cells were established.", "doc_id": DOC}
    ).json()
    assert supported["sentences"][0]["citations"][0]["supported"] is True
    answer = {
        "answer": "The Party Committee established 529 military party cells [1]. It also won the football cup [1].",
        "citations": [{"id": 1, "doc_id": DOC}],
    }
    report = api.post("/check", json=answer).json()
    assert [s["status"] for s in report["sentences"]] == ["supported", "unsupported"]


def test_upload_search_fetch_and_delete_a_document(api, live_server) -> None:
    note = b"# Lighthouse keepers\n\nThe Varnholm lighthouse on the northern cape was automated in 1987 after ninety years of keepers.\n"
    created = api.post("/documents", files={"file": ("varnholm.md", note, "text/markdown")})
    assert created.status_code == 201, created.text
    assert created.json()["added"] == ["varnholm.md"] and created.json()["documents"] == 6
    assert (live_server.corpus / "varnholm.md").read_bytes() == note

    hits = api.post("/search", json={"query": "When was the Varnholm lighthouse automated?", "k": 1}).json()["results"]
    assert hits[0]["doc_id"] == "varnholm.md" and "1987" in hits[0]["text"]
    doc = api.get("/documents/varnholm.md").json()
    assert doc["title"] == "Lighthouse keepers" and doc["text"] == note.decode()
    assert "varnholm.md" in {d["doc_id"] for d in api.get("/documents").json()["documents"]}

    deleted = api.delete("/documents/varnholm.md")
    assert deleted.status_code == 200 and deleted.json()["removed"] == ["varnholm.md"]
    assert not (live_server.corpus / "varnholm.md").exists()
    assert api.get("/documents/varnholm.md").status_code == 404
    assert api.delete("/documents/varnholm.md").status_code == 404
    hits = api.post("/search", json={"query": "Varnholm lighthouse automated", "k": 3}).json()["results"]
    assert all(h["doc_id"] != "varnholm.md" for h in hits)


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("../escape.txt", b"Some text about escaping folders.", 400, "invalid file name"),
        ("sub/dir.txt", b"Some text about folders.", 400, "invalid file name"),
        (".hidden.txt", b"Some hidden text.", 400, "invalid file name"),
        ("tool.exe", b"MZ\x90\x00", 400, "unsupported file type"),
        ("blob.txt", b"\x00\x01\x02binary\x00", 400, "binary"),
        ("latin1.txt", "café au lait".encode("latin-1"), 400, "not UTF-8"),
        ("empty.md", b"   \n", 400, "no text"),
        ("huge.txt", b"word " * (TEST_UPLOAD_LIMIT // 5 + 1), 413, "limit"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing_behind(api, live_server, name, data, status, message) -> None:
    before = sorted(p.name for p in live_server.corpus.iterdir())
    response = api.post("/documents", files={"file": (name, data, "application/octet-stream")})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert sorted(p.name for p in live_server.corpus.iterdir()) == before
    assert api.get("/health").json()["documents"] == 5


def test_the_connection_stays_usable_after_refused_requests(api) -> None:
    """Each refusal is a complete HTTP answer: the keep-alive connection serves the next request."""

    def local_port(response: httpx.Response) -> int:
        return response.extensions["network_stream"].get_extra_info("client_addr")[1]

    good = api.post("/search", json={"query": "party cells", "k": 1})
    assert good.status_code == 200
    refused = [
        api.post("/search", content='{"query": "party \\ud800 cells"}', headers={"Content-Type": "application/json"}),
        api.post(
            "/search",
            content=b'{"query": "' + b"x" * TEST_BODY_LIMIT + b'"}',
            headers={"Content-Type": "application/json"},
        ),
        api.post("/search", content=iter([b'{"query": "', b"x" * TEST_BODY_LIMIT, b'"}'])),
        api.post("/search", content=b"{not json", headers={"Content-Type": "application/json"}),
        api.post("/ask", json={"question": QUESTION, "api_base": "http://127.0.0.1:9/v1"}),
    ]
    assert [r.status_code for r in refused] == [400, 413, 413, 422, 400]
    assert all(isinstance(r.json()["detail"], (str, list)) for r in refused)
    after = api.post("/search", json={"query": "party cells", "k": 1})
    assert after.status_code == 200
    assert local_port(after) == local_port(good)  # the same connection throughout


def test_whole_document_page_highlights_the_span(api) -> None:
    page = api.get(f"/view/{DOC}", params={"start": 2702, "end": 2967})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<mark id="span">It coordinated with provincial Party Committees' in page.text
    assert api.get("/view/nope.txt").status_code == 404


def test_search_is_not_held_up_by_an_answer_being_written(api) -> None:
    """While the embedded model writes an answer, a search still returns at once."""
    seen: dict[str, float] = {}
    started = threading.Event()

    def ask() -> None:
        with api.stream("POST", "/ask/stream", json={"question": QUESTION}) as response:
            for line in response.iter_lines():
                if line == "event: passages":
                    started.set()
                elif line == "event: answer":
                    seen["answer"] = time.monotonic()

    thread = threading.Thread(target=ask)
    thread.start()
    assert started.wait(300)
    assert api.post("/search", json={"query": "border guard", "k": 3}).status_code == 200
    seen["search"] = time.monotonic()
    thread.join(300)
    assert seen["search"] < seen["answer"]
