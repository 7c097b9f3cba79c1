"""The litellm provider `local/`: chat completions (plain, streaming, async) from a llama.cpp
server inside this process.

litellm's provider table (`litellm.custom_provider_map`) is global to the process, so the
provider is registered once and holds no server or settings of its own: each call names the
`LocalModel` that answers it in an extra completion parameter,

    litellm.completion(model="local/qwen2.5-1.5b-instruct", messages=..., local_model=model)

and the provider starts that model's server if needed and sends the request there. Two models
with different settings thus answer side by side, neither restarting the other. The name after
`local/` is a label only: whatever GGUF the LocalModel serves answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from rag.config import LocalLLMSettings
from rag.errors import RagError

if TYPE_CHECKING:
    from types import ModuleType

    from rag.llm.local import LocalModel

LOCAL_PROVIDER = "local"
BUNDLED_MODEL_NAME = "qwen2.5-1.5b-instruct"
DEFAULT_LOCAL_MODEL = f"{LOCAL_PROVIDER}/{BUNDLED_MODEL_NAME}"
# The completion parameter that carries the LocalModel to answer with.
LOCAL_MODEL_PARAM = "local_model"


def is_local_model(model: str) -> bool:
    """Whether a litellm model string names the embedded model (`local/...`)."""
    return model.startswith(f"{LOCAL_PROVIDER}/")


def load_litellm() -> ModuleType:
    """litellm, quiet and offline. Its first import fetches a model price map over the network
    unless LITELLM_LOCAL_MODEL_COST_MAP is set, so the variable is set here, just before that
    import, rather than when this package is imported (a caller's own value is kept)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # litellm otherwise prints "Give Feedback / Get Help" banners and provider lists to stdout.
    litellm.suppress_debug_info = True
    return litellm


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


def _fill_response(model_response: Any, data: dict, model: str, local_model: LocalModel) -> Any:
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
        local_model.last_timings = data["timings"]
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
        return {
            "text": "",
            "is_finished": True,
            "finish_reason": self.finish_reason or "stop",
            "usage": _usage_block(self.usage),
            "index": 0,
            "tool_use": None,
        }


def _usage_block(data: dict | None) -> dict | None:
    if not data:
        return None
    return {
        "prompt_tokens": int(data.get("prompt_tokens", 0)),
        "completion_tokens": int(data.get("completion_tokens", 0)),
        "total_tokens": int(data.get("total_tokens", 0)),
    }


def _local_model(optional_params: dict) -> LocalModel:
    """The LocalModel a call names; every `local/` call must name one."""
    local_model = optional_params.get(LOCAL_MODEL_PARAM)
    if local_model is None:
        raise RagError(
            f"a '{LOCAL_PROVIDER}/' model answers through a LocalModel: pass {LOCAL_MODEL_PARAM}=LocalModel(...) "
            "to the completion call (RagService does)"
        )
    return local_model


@functools.cache  # one provider per process: stateless, since each call names its LocalModel
def _provider() -> Any:
    import httpx
    from litellm import CustomLLM

    litellm = load_litellm()

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

    def completion_result(response: Any, model_response: Any, model: str, local_model: LocalModel) -> Any:
        if response.status_code != 200:
            raise RagError(_error_message(response.status_code, response.text))
        return _fill_response(model_response, response.json(), model, local_model)

    def stream_done(state: _StreamState, local_model: LocalModel) -> dict:
        if state.timings:
            local_model.last_timings = state.timings
        return state.final()

    class LocalLLMProvider(CustomLLM):
        """litellm provider `local/...`: chat completions from the LocalModel each call names.
        litellm passes every argument by keyword; those not needed here are ignored."""

        def completion(self, model, messages, model_response, optional_params, timeout=None, **_: Any) -> Any:
            local_model = _local_model(optional_params)
            server = local_model.server()
            body = _request_body(messages, optional_params, server.settings, stream=False)
            limit = _httpx_timeout(timeout, server.settings)
            with server.slots, transport_errors(model, limit):
                response = httpx.post(
                    f"{server.base_url}/v1/chat/completions",
                    json=body,
                    headers=server.headers,
                    timeout=limit,
                    trust_env=False,
                )
            return completion_result(response, model_response, model, local_model)

        def streaming(self, model, messages, optional_params, timeout=None, **_: Any) -> Iterator[dict]:
            local_model = _local_model(optional_params)
            server = local_model.server()
            body = _request_body(messages, optional_params, server.settings, stream=True)
            limit = _httpx_timeout(timeout, server.settings)
            overall = getattr(limit, "read", None)

            def lines() -> Iterator[str]:
                with server.slots:  # wait for a free slot: the answer's clock starts after
                    started = time.monotonic()
                    try:
                        with httpx.stream(
                            "POST",
                            f"{server.base_url}/v1/chat/completions",
                            json=body,
                            headers=server.headers,
                            timeout=limit,
                            trust_env=False,
                        ) as response:
                            if response.status_code != 200:
                                raise RagError(
                                    _error_message(response.status_code, response.read().decode(errors="replace"))
                                )
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
            yield stream_done(state, local_model)

        async def acompletion(self, model, messages, model_response, optional_params, timeout=None, **_: Any) -> Any:
            local_model = _local_model(optional_params)
            server = await asyncio.to_thread(local_model.server)
            body = _request_body(messages, optional_params, server.settings, stream=False)
            limit = _httpx_timeout(timeout, server.settings)
            with transport_errors(model, limit):
                async with httpx.AsyncClient(timeout=limit, trust_env=False) as http:
                    response = await http.post(
                        f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers
                    )
            return completion_result(response, model_response, model, local_model)

        async def astreaming(self, model, messages, optional_params, timeout=None, **_: Any) -> AsyncIterator[dict]:
            local_model = _local_model(optional_params)
            server = await asyncio.to_thread(local_model.server)
            body = _request_body(messages, optional_params, server.settings, stream=True)
            limit = _httpx_timeout(timeout, server.settings)
            started = time.monotonic()
            overall = getattr(limit, "read", None)
            state = _StreamState()
            try:
                async with httpx.AsyncClient(timeout=limit, trust_env=False) as http:
                    async with http.stream(
                        "POST", f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers
                    ) as response:
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
            yield stream_done(state, local_model)

    return LocalLLMProvider()


_registration_lock = threading.Lock()


def register_local_provider() -> Any:
    """Make `local/<name>` a litellm model, once per process; later calls find the provider in
    litellm's table and return it (one that was replaced there is put back)."""
    litellm = load_litellm()
    with _registration_lock:
        provider = _provider()
        # litellm takes the last entry for a provider name.
        ours = [e for e in litellm.custom_provider_map if e.get("provider") == LOCAL_PROVIDER]
        if ours and ours[-1].get("custom_handler") is provider:
            return provider
        entries = [e for e in litellm.custom_provider_map if e.get("provider") != LOCAL_PROVIDER]
        litellm.custom_provider_map = [*entries, {"provider": LOCAL_PROVIDER, "custom_handler": provider}]
        return provider


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
