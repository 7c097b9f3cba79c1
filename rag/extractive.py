"""Sentence-level relevance within retrieved passages: trims passages for the LLM prompt and
composes extractive answers (verbatim sentences, each citing its passage)."""

from __future__ import annotations

from dataclasses import dataclass

from rag.embedding import Embedder
from rag.schema import SearchHit, Span
from rag.sentences import sentence_spans
from rag.verification import content_tokens

# Relevance = mix of embedding similarity and how many question words the sentence holds.
COSINE_WEIGHT = 0.6
# A second sentence joins an extractive answer only if nearly as relevant as the best.
SECOND_SENTENCE_RATIO = 0.85


@dataclass
class ScoredSentence:
    passage: int  # position in the hit list (0-based)
    span: Span  # offsets in the document
    text: str
    score: float


def rank_sentences(question: str, hits: list[SearchHit], embedder: Embedder) -> list[ScoredSentence]:
    """Every sentence of every hit, scored against the question, best first."""
    sentences = [
        ScoredSentence(i, Span(start=hit.start + s.start, end=hit.start + s.end), hit.text[s.start : s.end], 0.0)
        for i, hit in enumerate(hits)
        for s in sentence_spans(hit.text)
    ]
    if not sentences:
        return []
    vectors = embedder.encode([question, *(s.text for s in sentences)])
    question_tokens = content_tokens(question)
    for sentence, vector in zip(sentences, vectors[1:]):
        recall = len(question_tokens & content_tokens(sentence.text)) / len(question_tokens) if question_tokens else 0.0
        sentence.score = COSINE_WEIGHT * float(vector @ vectors[0]) + (1 - COSINE_WEIGHT) * recall
    return sorted(sentences, key=lambda s: -s.score)


def trimmed_passages(hits: list[SearchHit], ranked: list[ScoredSentence], per_passage: int, budget: int) -> list[str]:
    """Each passage cut to its most relevant sentences, kept in reading order: every passage keeps
    its best sentence (so the passage numbers the model sees stay those of `hits`), and the rest
    of the `budget` goes to the best sentences overall, at most `per_passage` from one passage.
    Fewer, better sentences make the prompt faster to read and leave a small model less to
    confuse the answer with."""
    chosen: dict[int, list[ScoredSentence]] = {}
    for sentence in ranked:  # best first, so each passage's first sentence is its best
        if sentence.passage not in chosen:
            chosen[sentence.passage] = [sentence]
    total = len(chosen)
    for sentence in ranked:
        if total >= budget:
            break
        group = chosen[sentence.passage]
        if sentence not in group and len(group) < per_passage:
            group.append(sentence)
            total += 1
    return [
        " … ".join(s.text for s in sorted(chosen[i], key=lambda s: s.span.start)) if i in chosen else hit.text
        for i, hit in enumerate(hits)
    ]


def extractive_answer(ranked: list[ScoredSentence], max_sentences: int, min_score: float) -> str | None:
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


def cited(sentence: ScoredSentence) -> str:
    """The sentence verbatim (whitespace collapsed), followed by its passage marker."""
    return f"{' '.join(sentence.text.split())} [{sentence.passage + 1}]"
