"""Sentence boundaries with character offsets (sentencex: rule-based, fast, many languages)."""

from __future__ import annotations

import sentencex

from rag.schema import Span


def sentence_spans(text: str, start: int = 0, end: int | None = None, language: str = "en") -> list[Span]:
    """Sentences of text[start:end] as spans into `text`, trimmed of surrounding whitespace."""
    end = len(text) if end is None else end
    spans: list[Span] = []
    for part in sentencex.get_sentence_boundaries(language, text[start:end]):
        s, e = part["start_index"], part["end_index"]
        segment = text[start + s : start + e]
        stripped = segment.strip()
        if not stripped:
            continue
        lead = len(segment) - len(segment.lstrip())
        spans.append(Span(start=start + s + lead, end=start + s + lead + len(stripped)))
    return spans
