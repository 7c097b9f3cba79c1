"""Follow-up questions: "when did it start?" is rewritten into a standalone question before
retrieval, so a conversation keeps its context while every search stays self-contained."""

from __future__ import annotations

import re

from rag.answer.prompts import rewrite_messages
from rag.config import EXTRACTIVE, Settings
from rag.llm.generation import GenerationError, stream_completion
from rag.llm.local import LocalModel
from rag.requests import Turn
from rag.verify.citations import strip_markers

# Words that only make sense with what was said before. A question without any of them is
# already standalone and is searched as it is (no LLM call, no added latency).
REFERRING = re.compile(
    r"\b(?:it|its|they|them|their|theirs|he|him|his|she|her|hers|this|that|these|those|there|then|"
    r"the same|the other|which one|what about|how about|and what|also|else|former|latter)\b",
    re.IGNORECASE,
)
SHORT_FOLLOW_UP_WORDS = 3
# Turns of history given to the rewriter; older ones rarely hold the referent and cost prompt time.
HISTORY_TURNS = 3
REWRITE_MAX_TOKENS = 60


def needs_context(question: str) -> bool:
    return bool(REFERRING.search(question)) or len(question.split()) <= SHORT_FOLLOW_UP_WORDS


def standalone_question(
    question: str,
    history: list[Turn],
    model: str,
    settings: Settings,
    api_base: str | None = None,
    local_model: LocalModel | None = None,
) -> str:
    """The question to search for. With the extractive model (no LLM) or when the LLM fails,
    the previous question is prepended, which gives retrieval the missing referent.
    `local_model` answers `local/...` models."""
    if not history or not needs_context(question):
        return question
    turns = [(t.question, strip_markers(t.answer)) for t in history[-HISTORY_TURNS:]]
    fallback = f"{history[-1].question} {question}"
    if model == EXTRACTIVE:
        return fallback
    cfg = settings.answer
    try:
        text = "".join(
            stream_completion(
                rewrite_messages(question, turns),
                model=model,
                api_base=api_base or cfg.api_base,
                temperature=0.0,
                max_tokens=REWRITE_MAX_TOKENS,
                timeout_s=cfg.timeout_s,
                local_model=local_model,
            )
        )
    except GenerationError:
        return fallback
    rewritten = " ".join(text.strip().strip('"').split())
    # A small model sometimes answers instead of rewriting; a question is what we need.
    if not rewritten or len(rewritten) > 3 * len(fallback) or "?" not in rewritten and "?" in question:
        return fallback
    return rewritten
