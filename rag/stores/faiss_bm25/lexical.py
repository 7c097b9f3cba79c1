"""BM25 over the chunks (bm25s, Snowball stemming, English stop words)."""

from __future__ import annotations

import logging
from pathlib import Path

import bm25s
import numpy as np

from rag.text.words import tokenize

# bm25s logs routine steps ("Building index from tokens") at warning level.
logging.getLogger("bm25s").setLevel(logging.ERROR)


def build_lexical_index(texts: list[str]) -> bm25s.BM25:
    index = bm25s.BM25()
    # An empty corpus still yields a loadable index that matches nothing.
    index.index(tokenize(texts) if texts else [[""]], show_progress=False)
    return index


def save_lexical_index(index: bm25s.BM25, path: Path) -> None:
    index.save(str(path), show_progress=False)


def load_lexical_index(path: Path) -> bm25s.BM25:
    return bm25s.BM25.load(str(path), show_progress=False)


def lexical_size(index: bm25s.BM25) -> int:
    """Rows the index holds; the placeholder row of an empty corpus (only the empty term) does not count."""
    rows = int(index.scores["num_docs"])
    return 0 if rows == 1 and set(index.vocab_dict) == {""} else rows


def lexical_scores(index: bm25s.BM25, query: str, size: int) -> np.ndarray:
    """BM25 score of every row (0 where no query term occurs)."""
    tokens = [t for t in tokenize([query])[0] if t and t in index.vocab_dict]
    if not tokens:
        return np.zeros(size, dtype=np.float32)
    return np.asarray(index.get_scores(tokens), dtype=np.float32)[:size]
