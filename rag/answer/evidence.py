"""Select the evidence an answer is chosen from: every sentence of a deep pool of retrieved
passages, scored against the question at sentence level, the best kept within a word budget.

A sentence's score mixes its embedding similarity to the question, the share of the
question's content words it holds, and a prior for the rank of its passage (the passage as a
whole matched the question). Sentence vectors are cached by text: passages come back question
after question."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from rag.config import EvidenceSettings
from rag.embed.encoder import Embedder
from rag.schema import SearchHit, Span
from rag.text.sentences import sentence_spans
from rag.text.words import content_tokens


@dataclass
class EvidenceSentence:
    passage: int  # position in the hit list (0-based)
    span: Span  # offsets in the document
    text: str
    score: float


class SentenceVectors:
    """Embeddings of sentence texts, kept for the most recently used `capacity` texts."""

    def __init__(self, embedder: Embedder, capacity: int):
        self.embedder = embedder
        self.capacity = capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh = dict(zip(missing, self.embedder.encode(missing))) if missing else {}
        with self._lock:
            self._cache.update(fresh)
            vectors = [fresh[t] if t in fresh else self._cache[t] for t in texts]
            for text in texts:
                self._cache.move_to_end(text)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return np.stack(vectors) if vectors else np.zeros((0, self.embedder.dimension), dtype=np.float32)


def rank_evidence(
    question: str, hits: list[SearchHit], vectors: SentenceVectors, settings: EvidenceSettings
) -> list[EvidenceSentence]:
    """Every sentence of every hit, scored against the question, best first."""
    sentences = [
        EvidenceSentence(i, Span(start=hit.start + s.start, end=hit.start + s.end), hit.text[s.start : s.end], 0.0)
        for i, hit in enumerate(hits)
        for s in sentence_spans(hit.text)
    ]
    if not sentences:
        return []
    similarity = vectors.encode([s.text for s in sentences]) @ vectors.embedder.encode_query(question)
    question_tokens = content_tokens(question)
    for sentence, cosine in zip(sentences, similarity):
        recall = len(question_tokens & content_tokens(sentence.text)) / len(question_tokens) if question_tokens else 0.0
        sentence.score = float(
            settings.cosine_weight * cosine
            + (1 - settings.cosine_weight) * recall
            + settings.passage_prior / (1 + sentence.passage) ** 0.5
        )
    return sorted(sentences, key=lambda s: -s.score)


def select_evidence(ranked: list[EvidenceSentence], count: int, max_words: int) -> list[EvidenceSentence]:
    """The best sentences, at most `count` and `max_words` words in all (the best one always),
    each text once (near-duplicate passages repeat sentences). The budget bounds the prompt:
    on a CPU, reading it is most of the time to the first answer token."""
    chosen: list[EvidenceSentence] = []
    seen: set[str] = set()
    words = 0
    for sentence in ranked:
        key = " ".join(sentence.text.split())
        length = len(key.split())
        if key in seen or (chosen and words + length > max_words):
            continue
        seen.add(key)
        chosen.append(sentence)
        words += length
        if len(chosen) == count:
            break
    return chosen
