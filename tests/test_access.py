"""The server's edge, in process (Starlette's TestClient on the real app over the seed index):
API keys and roles, the login cookie, origins, security headers, body and text limits,
client-chosen models and the answer queue. `rag serve`'s refusals run the real command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from conftest import ADMIN_KEY, READ_KEY, ROOT, make_service, make_settings
from fastapi.testclient import TestClient

from rag.answer import pipeline as answering
from rag.config import Settings
from rag.errors import BadInputError
from rag.serve.access import (
    APP_POLICY,
    DOCS_POLICY,
    PAGE_POLICY,
    SESSION_COOKIE,
    is_loopback,
    load_keys,
)
from rag.serve.api import create_api
from rag.serve.app import create_app

pytestmark = pytest.mark.slow

ALLOWED_ORIGIN = "https://app.example.org"
QUESTION = "How many commune-level military party cells were established?"
DOC = "000_c1a45aa062b469e9.txt"
READ = {"Authorization": f"Bearer {READ_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def service_with(seed_service, embedder, **server: object):
    """A service over the seed index (read only) with these server settings."""
    return make_service(make_settings(seed_service.settings.index.dir, server=server), embedder)


@pytest.fixture(scope="module")
def keyed(seed_service, embedder):
    """The whole app (API, pages, Gradio) with a read-only and an admin key."""
    service = service_with(
        seed_service,
        embedder,
        api_keys=[READ_KEY],
        admin_keys=[ADMIN_KEY],
        cors_origins=[ALLOWED_ORIGIN],
        max_body_bytes=50_000,
    )
    with TestClient(create_app(service)) as client:
        yield client


@pytest.fixture(scope="module")
def open_api(seed_service, embedder):
    """The API without keys, as on loopback by default."""
    settings = make_settings(
        seed_service.settings.index.dir, server={"max_body_bytes": 50_000}, verification={"max_check_chars": 300}
    )
    service = make_service(settings, embedder)
    with TestClient(create_api(service)) as client:
        yield client


ROUTES = [
    ("GET", "/documents", None),
    ("GET", f"/documents/{DOC}", None),
    ("POST", "/search", {"query": "party cells"}),
    ("POST", "/ask", {"question": QUESTION, "model": "extractive"}),
    ("POST", "/ask/stream", {"question": QUESTION, "model": "extractive"}),
    ("POST", "/check", {"claim": "529 cells were established.", "doc_id": DOC}),
    ("DELETE", f"/documents/{DOC}", None),
    ("GET", f"/view/{DOC}", None),
    ("GET", "/openapi.json", None),
    ("GET", "/gradio_api/info", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer not-a-key-at-all-0000000"}, {"Authorization": f"Basic {READ_KEY}"}]
)
def test_without_a_valid_key_every_route_is_401(keyed, method, path, body, headers) -> None:
    response = keyed.request(method, path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert "API key" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_uploads_without_a_key_are_401(keyed) -> None:
    for path in ("/documents", "/gradio_api/upload"):
        response = keyed.post(path, files={"file": ("note.txt", b"Some words.", "text/plain")})
        assert response.status_code == 401, path


def test_health_is_public_but_tells_only_the_status(keyed) -> None:
    assert keyed.get("/health").json() == {"status": "ok"}
    assert keyed.get("/health", headers=READ).json()["documents"] == 5


@pytest.mark.parametrize(("method", "path", "body"), [r for r in ROUTES if r[0] != "DELETE"])
def test_a_read_only_key_may_search_ask_check_and_read(keyed, method, path, body) -> None:
    response = keyed.request(method, path, json=body, headers=READ)
    assert response.status_code == 200, response.text


def test_a_read_only_key_may_not_change_documents(keyed) -> None:
    upload = {"file": ("note.txt", b"The Varnholm lighthouse was automated in 1987.", "text/plain")}
    for response in (
        keyed.post("/documents", files=upload, headers=READ),
        keyed.post("/gradio_api/upload", files={"files": upload["file"]}, headers=READ),
        keyed.delete(f"/documents/{DOC}", headers=READ),
    ):
        assert response.status_code == 403, response.text
        assert "admin key" in response.json()["detail"]
    assert keyed.get("/health", headers=READ).json()["documents"] == 5


def test_an_admin_key_reaches_the_document_routes(keyed) -> None:
    # Bad input and unknown ids, so the shared seed index stays as it is.
    assert (
        keyed.post("/documents", files={"file": ("../x.txt", b"Words.", "text/plain")}, headers=ADMIN).status_code
        == 400
    )
    assert keyed.delete("/documents/nope.txt", headers=ADMIN).status_code == 404
    assert (
        keyed.post("/gradio_api/upload", files={"files": ("a.txt", b"Words.", "text/plain")}, headers=ADMIN).status_code
        == 200
    )
    too_long = "n" * 252 + ".txt"
    response = keyed.post("/documents", files={"file": (too_long, b"Words.", "text/plain")}, headers=ADMIN)
    assert response.status_code == 400 and "too long" in response.json()["detail"]


def test_a_browser_logs_in_and_gets_an_http_only_strict_cookie(keyed) -> None:
    browser = TestClient(keyed.app, follow_redirects=False)
    page = browser.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert '<form method="post" action="/login">' in browser.get("/login").text
    assert browser.post("/login", data={"key": "wrong-key-0000000000000"}).status_code == 401
    login = browser.post("/login", data={"key": READ_KEY})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert READ_KEY not in cookie
    assert browser.get("/").status_code == 200  # the interface
    assert browser.get("/documents").status_code == 200
    assert browser.delete(f"/documents/{DOC}").status_code == 403  # a read-only login
    logout = browser.get("/logout")
    assert logout.status_code == 303 and logout.headers["location"] == "/login"
    assert f'{SESSION_COOKIE}=""' in logout.headers["set-cookie"] and "Max-Age=0" in logout.headers["set-cookie"]
    assert browser.get("/documents").status_code == 401
    browser.cookies.set(SESSION_COOKIE, "0" * 64)
    assert browser.get("/documents").status_code == 401


def test_requests_from_other_sites_are_refused(keyed) -> None:
    evil = {"Origin": "https://evil.example"}
    assert keyed.post("/search", json={"query": "party cells"}, headers=READ | evil).status_code == 403
    # A form posted by another site's page: refused before any key or body is looked at.
    upload = keyed.post("/documents", files={"file": ("x.txt", b"Planted text.", "text/plain")}, headers=ADMIN | evil)
    assert upload.status_code == 403 and "evil.example" in upload.json()["detail"]
    assert (
        keyed.post(
            "/gradio_api/upload", files={"files": ("x.txt", b"Planted.", "text/plain")}, headers=ADMIN | evil
        ).status_code
        == 403
    )
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    assert keyed.options("/search", headers=evil | preflight).status_code == 403
    assert keyed.post("/search", json={"query": "party cells"}, headers=READ | {"Origin": "null"}).status_code == 403


def test_the_own_origin_and_listed_origins_are_served(keyed) -> None:
    assert (
        keyed.post("/search", json={"query": "party cells"}, headers=READ | {"Origin": "http://testserver"}).status_code
        == 200
    )
    allowed = keyed.post("/search", json={"query": "party cells"}, headers=READ | {"Origin": ALLOWED_ORIGIN})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    preflight = keyed.options(
        "/search",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]


def test_every_response_carries_security_headers(keyed) -> None:
    for response, policy in (
        (keyed.get("/health"), APP_POLICY),
        (keyed.get("/documents"), APP_POLICY),  # a 401
        (keyed.get("/", headers=READ), APP_POLICY),
        (keyed.get(f"/view/{DOC}", headers=READ), PAGE_POLICY),
        (keyed.get("/login"), PAGE_POLICY),
        (keyed.get("/docs", headers=READ), DOCS_POLICY),
    ):
        assert response.headers["content-security-policy"] == policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"
        assert "frame-ancestors 'none'" in policy
    assert "script-src" not in PAGE_POLICY and "default-src 'none'" in PAGE_POLICY


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/search", '{"query": "party \\ud800 cells"}', "query"),
        ("/ask", '{"question": "party \\udfff cells", "model": "extractive"}', "question"),
        ("/ask/stream", '{"question": "party \\ud800 cells", "model": "extractive"}', "question"),
        ("/ask", '{"question": "Who?", "history": [{"question": "x \\ud800", "answer": "y"}]}', "history[0].question"),
        ("/check", '{"answer": "529 cells \\ud800 [1].", "citations": [{"id": 1, "doc_id": "d"}]}', "answer"),
        ("/search", '{"query": "cells", "mode": "\\ud800"}', "mode"),
    ],
)
def test_text_with_a_lone_surrogate_is_400_naming_the_field(open_api, path, body, field) -> None:
    response = open_api.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(f"{field}: not valid Unicode")


def test_bodies_over_the_limit_are_413_by_length_and_by_what_arrives(open_api) -> None:
    big = json.dumps({"query": "cells " * 10_000}).encode()  # 60 kB, limit 50 kB
    declared = open_api.post("/search", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "server.max_body_bytes" in declared.json()["detail"]
    streamed = open_api.post(
        "/search", content=iter([big[:30_000], big[30_000:]]), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413 and "server.max_body_bytes" in streamed.json()["detail"]
    small = open_api.post(
        "/search", content=iter([b'{"query": ', b'"party cells"}']), headers={"Content-Type": "application/json"}
    )
    assert small.status_code == 200


def test_check_input_is_capped(open_api) -> None:
    response = open_api.post("/check", json={"claim": "cells " * 60})
    assert response.status_code == 400 and "verification.max_check_chars" in response.json()["detail"]
    assert open_api.post("/check", json={"claim": "529 cells were established.", "doc_id": DOC}).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "openai/gpt-4o-mini"}, "not offered by this server"),
        ({"model": "extractive", "api_base": "http://169.254.169.254/v1"}, "api_base is not accepted"),
    ],
)
def test_clients_get_only_the_models_the_server_offers(open_api, body, message) -> None:
    for path in ("/ask", "/ask/stream"):
        response = open_api.post(path, json={"question": QUESTION, **body})
        assert response.status_code == 400 and message in response.json()["detail"], path


def test_listed_client_models_and_api_base_are_let_through(seed_service, embedder) -> None:
    service = service_with(seed_service, embedder, allow_client_models=["*"], allow_client_api_base=True)
    with TestClient(create_api(service)) as client:
        unknown = client.post("/ask", json={"question": QUESTION, "model": "nosuchprovider/model"})
        assert unknown.status_code == 400 and "unknown model" in unknown.json()["detail"]  # routed, not refused
        assert (
            client.post(
                "/ask", json={"question": QUESTION, "model": "extractive", "api_base": "http://127.0.0.1:9/v1"}
            ).status_code
            == 200
        )


def test_answers_beyond_the_queue_get_503_with_retry_after(seed_service, embedder, monkeypatch) -> None:
    service = service_with(seed_service, embedder, allow_client_models=["openai/scripted"], max_queued_answers=0)
    writing, finish = threading.Event(), threading.Event()

    def slow_model(messages, **kwargs):
        writing.set()
        finish.wait(60)
        yield "529 commune-level military party cells were established [1]."

    monkeypatch.setattr(answering, "stream_completion", slow_model)
    body = {"question": QUESTION, "model": "openai/scripted"}
    with TestClient(create_api(service)) as client:
        first: dict = {}
        thread = threading.Thread(target=lambda: first.update(response=client.post("/ask", json=body)))
        thread.start()
        assert writing.wait(60)
        try:
            for path in ("/ask", "/ask/stream"):
                busy = client.post(path, json=body)
                assert busy.status_code == 503 and busy.headers["retry-after"].isdigit(), path
                assert "try again" in busy.json()["detail"]
            assert client.post("/ask", json={"question": QUESTION, "model": "extractive"}).status_code == 200
        finally:
            finish.set()
            thread.join(60)
        assert first["response"].status_code == 200
        assert client.post("/ask", json=body).status_code == 200  # the place was given back


def test_keys_come_from_settings_the_environment_and_a_key_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RAG_SERVER__API_KEYS", f"{READ_KEY}, second-read-key-0000000000")
    monkeypatch.setenv("RAG_SERVER__ADMIN_KEYS", ADMIN_KEY)
    settings = Settings()
    assert settings.server.api_keys == [READ_KEY, "second-read-key-0000000000"] and settings.server.admin_keys == [
        ADMIN_KEY
    ]
    key_file = tmp_path / "keys"
    key_file.write_text("# readers\nfile-read-key-00000000000\n\nadmin: file-admin-key-000000000\n")
    keys = load_keys(settings.replace(server={"api_key_file": key_file}).server)
    roles = {
        key: keys.key_role(key)
        for key in (READ_KEY, ADMIN_KEY, "file-read-key-00000000000", "file-admin-key-000000000")
    }
    assert [role.name for role in roles.values()] == ["READ", "ADMIN", "READ", "ADMIN"]
    assert keys.key_role("file-read-key-0000000000") is None and keys.key_role("") is None
    with pytest.raises(BadInputError, match="at least 16"):
        load_keys(settings.replace(server={"api_keys": ["short"]}).server)


# --------------------------------------------------------------------------- the real command


def rag(*args: str | bytes, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    environment.pop("RAG_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "rag.cli", *args],
        cwd=ROOT,
        env=environment,
        input=stdin.encode(),
        capture_output=True,
        timeout=120,
    )


def test_serve_refuses_a_public_address_without_keys_before_binding() -> None:
    # A port held on all addresses: a server that tried to bind it would fail to.
    with socket.create_server(("0.0.0.0", 0)) as holder:
        port = str(holder.getsockname()[1])
        refused = rag("serve", "--host", "0.0.0.0", "--port", port)
        # Had it tried to bind first, it would have said the port is taken.
        assert refused.returncode == 2
        assert refused.stderr.decode().strip().splitlines() == [
            "error: refusing to serve 0.0.0.0 without API keys: set server.api_keys or server.admin_keys (see README, Security), or pass --allow-unauthenticated"
        ]
        for passed in (
            rag("serve", "--host", "0.0.0.0", "--port", port, "--allow-unauthenticated"),
            rag("serve", "--host", "0.0.0.0", "--port", port, env={"RAG_SERVER__ADMIN_KEYS": ADMIN_KEY}),
        ):
            assert passed.returncode == 2 and "cannot listen on 0.0.0.0" in passed.stderr.decode()


def test_serve_refusal_leaves_nothing_listening() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert rag("serve", "--host", "0.0.0.0", "--port", str(port)).returncode == 2
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_cli_arguments_that_are_not_utf8_are_one_line_errors() -> None:
    result = rag("search", b"bad \xff\xfe query")
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == ["error: argument 2 is not UTF-8 text: bad \\xff\\xfe query"]


def test_check_input_from_stdin_is_capped() -> None:
    result = rag(
        "check", "-", env={"RAG_VERIFICATION__MAX_CHECK_CHARS": "100"}, stdin=json.dumps({"answer": "cells " * 50})
    )
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        "error: stdin is over 100 characters (verification.max_check_chars)"
    ]


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("::", False)]
)
def test_loopback_addresses(host, loopback) -> None:
    assert is_loopback(host) is loopback


def test_the_interface_answers_in_the_same_queue_and_changes_documents_only_for_admins(seed_service, embedder) -> None:
    """The interface's event functions as Gradio's API calls them, with each request's key."""
    import gradio as gr

    from rag.serve.api import AnswerQueue
    from ui.app import build_interface

    service = service_with(seed_service, embedder, api_keys=[READ_KEY], admin_keys=[ADMIN_KEY], max_queued_answers=0)
    queue = AnswerQueue(service)
    functions = {f.name: f.fn for f in build_interface(service, load_keys(service.settings.server), queue).fns.values()}
    ask = functions["answer"]
    with queue.place(None):  # the embedded model's one place is taken
        busy = list(ask(QUESTION, [], [], 4, "hybrid", [], ""))
        extractive = list(ask(QUESTION, [], [], 4, "hybrid", [], "extractive"))
    assert "too many answers are waiting" in busy[-1][0][-1]["content"]
    assert 'class="cite"' in extractive[-1][0][-1]["content"]  # needs no model: not queued

    read, admin = (gr.Request(headers={"authorization": f"Bearer {key}"}) for key in (READ_KEY, ADMIN_KEY))
    status = 3  # the status message among the outputs
    assert "needs an admin key" in functions["add_files"](["/nonexistent/x.txt"], read)[status]
    assert "needs an admin key" in functions["remove_document"](DOC, read)[status]
    assert functions["add_files"](None, admin)[status] == "Choose one or more files first."
    assert functions["remove_document"](None, admin)[status] == "Choose a document to remove."
    assert len(service.documents()) == 5
