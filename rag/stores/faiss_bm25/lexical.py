"""BM25 over the chunks (Snowball stemming, English stop words), kept in segments.

An index is a list of segments written once each (the chunks one update added) plus the rows
later updates deleted. BM25 weighs a term by statistics of the whole collection (document
frequency, average length), so a segment stores raw term frequencies and the score is
computed at query time from the statistics of all live rows: an index updated in segments
scores exactly like one built at once. The formula, its constants and its float32 rounding are
bm25s's default ("lucene" variant), which this index replaced, so scores did not change."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.text.words import tokenize

# bm25s's defaults.
K1 = 1.5
B = 0.75
VOCAB = "vocab.json"
ARRAYS = ("indptr", "rows", "tf", "lengths")


@dataclass
class LexicalSegment:
    """Term frequencies of some chunks, by term (CSC): the rows holding term t are
    rows[indptr[t]:indptr[t + 1]], with counts tf[...]; lengths[r] = tokens of row r."""

    vocab: dict[str, int]
    indptr: np.ndarray
    rows: np.ndarray
    tf: np.ndarray
    lengths: np.ndarray

    @property
    def size(self) -> int:
        return len(self.lengths)

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        column = self.vocab.get(term)
        if column is None:
            return None
        start, end = self.indptr[column], self.indptr[column + 1]
        return self.rows[start:end], self.tf[start:end]


def _from_postings(
    vocab: dict[str, int], terms: np.ndarray, rows: np.ndarray, tf: np.ndarray, lengths: np.ndarray
) -> LexicalSegment:
    """A segment from unordered (term, row, count) postings, one per distinct pair."""
    order = np.lexsort((rows, terms))
    indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
    np.cumsum(np.bincount(terms, minlength=len(vocab)), out=indptr[1:])
    return LexicalSegment(vocab, indptr, rows[order].astype(np.int32), tf[order].astype(np.float32), lengths)


def build_lexical_index(texts: list[str]) -> LexicalSegment:
    """One segment over `texts`, row i being texts[i]."""
    token_lists = tokenize(texts) if texts else []
    n = max(len(token_lists), 1)
    vocab: dict[str, int] = {}
    lengths = np.array([len(tokens) for tokens in token_lists], dtype=np.int32)
    terms = np.array([vocab.setdefault(t, len(vocab)) for tokens in token_lists for t in tokens], dtype=np.int64)
    rows = np.repeat(np.arange(len(token_lists), dtype=np.int64), lengths)
    # Count each (term, row) pair once.
    pairs, counts = np.unique(terms * n + rows, return_counts=True)
    return _from_postings(vocab, pairs // n, pairs % n, counts, lengths)


def merge_lexical_segments(parts: list[tuple[LexicalSegment, np.ndarray]]) -> LexicalSegment:
    """One segment of the rows `keep` (indexes, in order) of each segment, in order, without
    tokenizing again (compaction)."""
    vocab: dict[str, int] = {}
    terms, rows, tf, lengths = [], [], [], []
    offset = 0
    for segment, keep in parts:
        new_row = np.full(segment.size, -1, dtype=np.int64)
        new_row[keep] = np.arange(offset, offset + len(keep))
        column_to_term = np.array([vocab.setdefault(t, len(vocab)) for t in segment.vocab], dtype=np.int64)
        posting_terms = np.repeat(column_to_term, np.diff(np.asarray(segment.indptr)))
        mapped = new_row[np.asarray(segment.rows)]
        live = mapped >= 0
        terms.append(posting_terms[live])
        rows.append(mapped[live])
        tf.append(np.asarray(segment.tf)[live])
        lengths.append(np.asarray(segment.lengths)[keep])
        offset += len(keep)
    if not parts:
        return build_lexical_index([])
    return _from_postings(
        vocab, np.concatenate(terms), np.concatenate(rows), np.concatenate(tf), np.concatenate(lengths).astype(np.int32)
    )


def save_lexical_index(segment: LexicalSegment, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / VOCAB).write_text(json.dumps(list(segment.vocab)), encoding="utf-8")
    for name in ARRAYS:
        np.save(path / f"{name}.npy", getattr(segment, name))


def load_lexical_index(path: Path) -> LexicalSegment:
    """A saved segment; its arrays stay on disk (memory-mapped), paged in as queries touch them."""
    vocab = {term: column for column, term in enumerate(json.loads((path / VOCAB).read_text(encoding="utf-8")))}
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    return LexicalSegment(vocab, **arrays)


def lexical_size(segment: LexicalSegment) -> int:
    """Rows the segment holds."""
    return segment.size


def bm25_scores(query: str, parts: list[tuple[LexicalSegment, np.ndarray | None, int]], size: int) -> np.ndarray:
    """BM25 score of every row (0 where no query term occurs) over segments given as
    (segment, live-row mask or None for all, offset of its first row); dead rows neither
    count in the statistics nor score."""
    scores = np.zeros(size, dtype=np.float32)
    live_rows = sum(int(live.sum()) if live is not None else s.size for s, live, _ in parts)
    if live_rows == 0:
        return scores
    total_length = sum(int(s.lengths[live].sum()) if live is not None else int(s.lengths.sum()) for s, live, _ in parts)
    average_length = np.float64(total_length) / live_rows
    for term in tokenize([query])[0]:
        if not term:
            continue
        found = []
        for segment, live, offset in parts:
            postings = segment.postings(term)
            if postings is None:
                continue
            rows, tf = postings
            if live is not None:
                keep = live[rows]
                rows, tf = rows[keep], tf[keep]
            found.append((segment, rows, tf, offset))
        df = sum(len(rows) for _, rows, _, _ in found)
        if df == 0:
            continue
        idf = np.float64(np.float32(math.log(1 + (live_rows - df + 0.5) / (df + 0.5))))
        for segment, rows, tf, offset in found:
            lengths = segment.lengths[rows].astype(np.float64)
            tfc = tf / (K1 * ((1 - B) + B * lengths / average_length) + tf)
            scores[offset + rows] += (idf * tfc).astype(np.float32)
    return scores


def lexical_scores(index: LexicalSegment, query: str, size: int) -> np.ndarray:
    """BM25 score of every row of one segment."""
    return bm25_scores(query, [(index, None, 0)], size)[:size]
