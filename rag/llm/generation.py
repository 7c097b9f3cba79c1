"""The one door to LLMs: litellm, streaming. Errors come out as one-line RagErrors: a model
string litellm cannot route or a missing key is bad input; a timeout or a failing server is a
GenerationError, which the answerer may answer with its extractive fallback."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rag.errors import BadInputError, RagError
from rag.llm.provider import LOCAL_MODEL_PARAM, as_rag_error, is_local_model, load_litellm, register_local_provider

if TYPE_CHECKING:
    from rag.llm.local import LocalModel


class GenerationError(RagError):
    """The model was reachable in principle but failed this time (timeout, server error)."""


@dataclass
class LLMUsage:
    """One model call's throughput: `prompt` is a single forward pass over the prompt (the
    numbered choice; tokens = prompt tokens, over the whole call), `generate` a streamed reply
    (tokens = streamed pieces after the first, over the time from the first to the last)."""

    model: str
    phase: str  # prompt | generate
    tokens: int
    seconds: float


# Called after every model call that could be measured (the server's metrics listen here).
usage_observers: list[Callable[[LLMUsage], None]] = []


def _report(usage: LLMUsage) -> None:
    if usage.tokens > 0 and usage.seconds > 0:
        for observe in usage_observers:
            observe(usage)


UNKNOWN_MODEL = (
    "unknown model '{model}': use a litellm model string such as openai/gpt-4o-mini, ollama/llama3, "
    "local/qwen2.5-1.5b-instruct, or extractive"
)


def check_model(model: str, api_base: str | None) -> None:
    """Refuse a model string litellm cannot route, before any work is done for it."""
    if is_local_model(model):
        return
    litellm = load_litellm()
    try:
        litellm.get_llm_provider(model=model, api_base=api_base)
    except Exception:  # litellm raises several types here, all meaning "cannot route"
        raise BadInputError(UNKNOWN_MODEL.format(model=model)) from None


def first_token_probabilities(
    messages: list[dict[str, str]],
    model: str,
    api_base: str | None,
    timeout_s: float,
    local_model: LocalModel | None = None,
    top: int = 20,
) -> dict[str, float]:
    """The model's probabilities for the first token of its reply ({token text: p}, its `top`
    likeliest tokens): one forward pass over the prompt, nothing generated. {} when the
    provider returns no logprobs (the embedded model and OpenAI-compatible servers do).
    `local_model` answers `local/...` models."""
    with _llm_errors(model, timeout_s):
        started = time.perf_counter()
        response = _completion(
            messages,
            model,
            api_base,
            local_model,
            temperature=0.0,
            max_tokens=1,
            timeout=timeout_s,
            stream=False,
            logprobs=True,
            top_logprobs=top,
        )
        usage = getattr(response, "usage", None)
        _report(LLMUsage(model, "prompt", getattr(usage, "prompt_tokens", None) or 0, time.perf_counter() - started))
        logprobs = response.choices[0].logprobs if response.choices else None
        content = (logprobs.get("content") if isinstance(logprobs, dict) else getattr(logprobs, "content", None)) or []
        if not content:
            return {}
        first = content[0]
        alternatives = first.get("top_logprobs") if isinstance(first, dict) else first.top_logprobs
        probabilities: dict[str, float] = {}
        for item in alternatives or []:
            token, logprob = (item["token"], item["logprob"]) if isinstance(item, dict) else (item.token, item.logprob)
            probabilities[token] = probabilities.get(token, 0.0) + math.exp(logprob)
        return probabilities


def stream_completion(
    messages: list[dict[str, str]],
    model: str,
    api_base: str | None,
    temperature: float,
    max_tokens: int,
    timeout_s: float,
    local_model: LocalModel | None = None,
    logit_bias: object | None = None,
) -> Iterator[str]:
    """Yield the answer text piece by piece. `local_model` answers `local/...` models;
    `logit_bias` is passed on as the provider takes it."""
    with _llm_errors(model, timeout_s):
        stream = _completion(
            messages,
            model,
            api_base,
            local_model,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=timeout_s,
            stream=True,
            **({"logit_bias": logit_bias} if logit_bias is not None else {}),
        )
        pieces, first = 0, 0.0
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                pieces += 1
                first = first or time.perf_counter()
                yield delta
        # Streams send about one token per piece; the first piece's wait is prompt time.
        _report(LLMUsage(model, "generate", pieces - 1, time.perf_counter() - first if first else 0.0))


def _completion(
    messages: list[dict[str, str]], model: str, api_base: str | None, local_model: LocalModel | None, **options: object
):
    litellm = load_litellm()
    if is_local_model(model):
        if local_model is None:
            raise RagError("no LocalModel was given to answer it (RagService provides one)")
        register_local_provider()  # the first call in the process registers it; later ones find it
        options[LOCAL_MODEL_PARAM] = local_model
    return litellm.completion(
        model=model,
        messages=messages,
        api_base=api_base,
        # OpenAI-compatible local servers take any key; litellm insists on one.
        api_key="not-needed"
        if api_base and model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY")
        else None,
        **options,
    )


@contextmanager
def _llm_errors(model: str, timeout_s: float) -> Iterator[None]:
    """Provider failures as one-line RagErrors: bad credentials or an unknown model are bad
    input; everything else is this call's failure (GenerationError)."""
    litellm = load_litellm()
    try:
        yield
    except (litellm.exceptions.AuthenticationError, litellm.exceptions.PermissionDeniedError) as exc:
        raise BadInputError(f"model '{model}' refused the credentials: {_first_line(exc)}") from None
    except (litellm.exceptions.NotFoundError, litellm.exceptions.BadRequestError) as exc:
        if "provider" in str(exc).lower() or isinstance(exc, litellm.exceptions.NotFoundError):
            raise BadInputError(UNKNOWN_MODEL.format(model=model)) from None
        raise GenerationError(f"model '{model}' rejected the request: {_first_line(exc)}") from None
    except litellm.exceptions.Timeout:
        raise GenerationError(f"model '{model}' did not answer within {timeout_s:g} s") from None
    except (BadInputError, GenerationError):
        raise
    except Exception as exc:  # every other provider failure is this call's failure, not the user's
        error = as_rag_error(exc)
        if isinstance(error, BadInputError):
            raise error from None
        raise GenerationError(f"model '{model}' failed: {error}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].removeprefix("litellm.") if text else type(exc).__name__
