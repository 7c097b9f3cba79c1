"""Extractive answers: the evidence sentences most relevant to the question, verbatim, each
citing its passage. No model, instant, and the fallback when a model fails."""

from __future__ import annotations

from rag.answer.evidence import EvidenceSentence

# A second sentence joins an extractive answer only if nearly as relevant as the best.
SECOND_SENTENCE_RATIO = 0.85


def extractive_answer(ranked: list[EvidenceSentence], max_sentences: int, min_score: float) -> str | None:
    """The most relevant sentences verbatim, each followed by its passage marker; None when no
    sentence is relevant enough to answer."""
    if not ranked or ranked[0].score < min_score:
        return None
    chosen = [ranked[0]]
    for sentence in ranked[1:]:
        if len(chosen) >= max_sentences or sentence.score < SECOND_SENTENCE_RATIO * ranked[0].score:
            break
        if all(sentence.text != c.text for c in chosen):
            chosen.append(sentence)
    return " ".join(map(cited, chosen))


def cited(sentence: EvidenceSentence) -> str:
    """The sentence verbatim (whitespace collapsed), followed by its passage marker."""
    return f"{' '.join(sentence.text.split())} [{sentence.passage + 1}]"
