"""Find the passages that matter: dense (FAISS) and BM25 candidates fused with reciprocal
rank fusion, optionally reranked by a cross-encoder, optionally restricted to documents.
Near-copies of a passage (rag.dedup) are each searchable and collapse into one result, which
lists the others under `also_in`."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from rag.config import RetrievalSettings, SearchMode, Settings
from rag.dense import search_dense
from rag.embedding import Embedder
from rag.errors import BadInputError
from rag.lexical import lexical_scores
from rag.schema import Chunk, ChunkLocation, SearchHit, SearchResponse
from rag.store import IndexData

MODES: tuple[SearchMode, ...] = ("hybrid", "dense", "bm25")


def validate_query(query: str, settings: RetrievalSettings) -> str:
    query = query.strip()
    if not query:
        raise BadInputError("the question is empty")
    if len(query) > settings.max_query_chars:
        raise BadInputError(f"the question is {len(query)} characters long; the limit is {settings.max_query_chars}")
    return query


def rrf_fuse(rankings: list[tuple[np.ndarray, float]], rrf_k: int) -> dict[int, float]:
    """Reciprocal rank fusion: each ranking (rows best first, weight) adds weight / (rrf_k + rank)."""
    fused: dict[int, float] = {}
    for rows, weight in rankings:
        for rank, row in enumerate(rows.tolist(), start=1):
            fused[row] = fused.get(row, 0.0) + weight / (rrf_k + rank)
    return fused


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k highest positive scores, best first."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > k:
        positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
    return positive[np.argsort(-scores[positive], kind="stable")]


class Retriever:
    def __init__(self, index: IndexData, embedder: Embedder, settings: Settings):
        self.index = index
        self.embedder = embedder
        self.settings = settings

    @cached_property
    def _doc_rows(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        for row, chunk in enumerate(self.index.chunks):
            rows.setdefault(chunk.doc_id, []).append(row)
        return rows

    @cached_property
    def _by_id(self) -> dict[str, Chunk]:
        return {chunk.chunk_id: chunk for chunk in self.index.chunks}

    def _collapse(self, ordered: list[int], k: int) -> list[int]:
        """The best-ranked row of each near-duplicate group, for the first k groups."""
        seen: set[str] = set()
        kept: list[int] = []
        for row in ordered:
            chunk = self.index.chunks[row]
            group = chunk.duplicate_of or chunk.chunk_id
            if group not in seen:
                seen.add(group)
                kept.append(row)
                if len(kept) == k:
                    break
        return kept

    @cached_property
    def _reranker(self):
        from sentence_transformers import CrossEncoder

        from rag.embedding import resolve_model

        name = self.settings.retrieval.rerank_model
        try:
            return CrossEncoder(resolve_model(name), device=self.settings.embedding.device)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"cannot load rerank model '{name}' ({type(exc).__name__})") from None

    def allowed_rows(self, doc_ids: list[str] | None) -> np.ndarray | None:
        if not doc_ids:
            return None
        unknown = [d for d in doc_ids if d not in self.index.documents]
        if unknown:
            raise BadInputError(f"unknown document: {unknown[0]} (see `rag docs`)")
        return np.array(sorted({r for d in doc_ids for r in self._doc_rows.get(d, [])}), dtype=np.int64)

    def search(
        self, query: str, k: int | None = None, mode: SearchMode | None = None, doc_ids: list[str] | None = None
    ) -> SearchResponse:
        cfg = self.settings.retrieval
        query = validate_query(query, cfg)
        k = k or cfg.k
        if k < 1:
            raise BadInputError("k must be at least 1")
        mode = mode or cfg.mode
        if mode not in MODES:
            raise BadInputError(f"unknown search mode '{mode}' (use {', '.join(MODES)})")
        allowed = self.allowed_rows(doc_ids)
        size = len(self.index.chunks)
        if size == 0 or (allowed is not None and len(allowed) == 0):
            return SearchResponse(query=query, mode=mode, results=[])

        depth = max(k, cfg.candidates, cfg.rerank_candidates if cfg.rerank_model else 0)
        query_vector = self.embedder.encode_query(query) if mode != "bm25" else None
        bm25 = lexical_scores(self.index.lexical, query, size) if mode != "dense" else None
        if bm25 is not None and allowed is not None:
            mask = np.zeros(size, dtype=np.float32)
            mask[allowed] = 1.0
            bm25 = bm25 * mask

        rankings: list[tuple[np.ndarray, float]] = []
        if query_vector is not None:
            dense_scores, dense_rows = search_dense(self.index.dense, query_vector, depth, self.settings.index, allowed)
            rankings.append((dense_rows, cfg.dense_weight))
        if bm25 is not None:
            rankings.append((_top(bm25, depth), cfg.bm25_weight))

        if mode == "hybrid":
            fused = rrf_fuse(rankings, cfg.rrf_k)
            ordered = sorted(fused, key=lambda r: (-fused[r], r))
            scores = dict(fused)
        elif mode == "dense":
            ordered = rankings[0][0].tolist()
            scores = dict(zip(ordered, map(float, dense_scores)))
        else:
            ordered = rankings[0][0].tolist()
            scores = {r: float(bm25[r]) for r in ordered}

        if cfg.rerank_model:
            head = ordered[: cfg.rerank_candidates]
            rerank = self._reranker.predict([(query, self.index.chunks[r].text) for r in head])
            scores = {r: float(s) for r, s in zip(head, rerank)}
            ordered = sorted(head, key=lambda r: -scores[r])

        hits = [
            self._hit(rank, row, scores[row], query_vector, bm25)
            for rank, row in enumerate(self._collapse(ordered, k), start=1)
        ]
        return SearchResponse(query=query, mode=mode, results=hits)

    def _hit(
        self, rank: int, row: int, score: float, query_vector: np.ndarray | None, bm25: np.ndarray | None
    ) -> SearchHit:
        chunk = self.index.chunks[row]
        head = self._by_id[chunk.duplicate_of] if chunk.duplicate_of else chunk
        group = [ChunkLocation(chunk_id=head.chunk_id, doc_id=head.doc_id, start=head.start, end=head.end), *head.copies]
        doc = self.index.documents[chunk.doc_id]
        return SearchHit(
            rank=rank,
            score=score,
            chunk_id=chunk.chunk_id,
            doc_id=chunk.doc_id,
            start=chunk.start,
            end=chunk.end,
            text=chunk.text,
            title=doc.display_title,
            dense_score=float(self.index.vectors[row] @ query_vector) if query_vector is not None else None,
            bm25_score=float(bm25[row]) if bm25 is not None else None,
            also_in=[loc for loc in group if loc.chunk_id != chunk.chunk_id],
            **doc.page_fields(chunk.start, chunk.end),
        )
