"""Stand-ins for the real models in the fast test tier."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from rag.text.words import tokenize


class HashEmbedder:
    """A tiny deterministic embedder: each stemmed word maps to a fixed random direction and a
    text is the normalised sum of its words. Texts sharing words are close, so dense search
    behaves sensibly on small corpora, with no model to load."""

    name = "hash-embedder"
    fingerprint = "hash-embedder"

    def __init__(self, dimension: int = 384):
        self.dimension = dimension

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)

    def encode(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, words in enumerate(tokenize(texts) if texts else []):
            for word in words:
                out[row] += self._word(word)
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
        if progress:
            progress(len(texts))
        return out

    def encode_query(self, query: str) -> np.ndarray:
        return self.encode([query])[0]
