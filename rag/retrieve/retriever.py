"""Find the passages that matter: the store's dense, BM25 or fused hybrid candidates,
optionally reranked by a cross-encoder, optionally restricted to documents.
Near-copies of a passage (rag.ingest.dedup) are each searchable and collapse into one result, which
lists the others under `also_in`."""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property

from rag.config import SEARCH_MODES, RetrievalSettings, SearchMode, Settings
from rag.embed.encoder import Embedder
from rag.errors import BadInputError
from rag.schema import ChunkLocation, Document, SearchHit, SearchResponse
from rag.stores.base import Candidate, Store


def validate_query(query: str, settings: RetrievalSettings) -> str:
    query = query.strip()
    if not query:
        raise BadInputError("the question is empty")
    if len(query) > settings.max_query_chars:
        raise BadInputError(f"the question is {len(query)} characters long; the limit is {settings.max_query_chars}")
    return query


class Retriever:
    def __init__(self, store: Store, embedder: Embedder, settings: Settings):
        self.store = store
        self.embedder = embedder
        self.settings = settings

    def _collapse(self, candidates: list[Candidate], k: int) -> list[Candidate]:
        """The best-ranked candidate of each near-duplicate group, for the first k groups."""
        seen: set[str] = set()
        kept: list[Candidate] = []
        for candidate in candidates:
            group = candidate.chunk.duplicate_of or candidate.chunk.chunk_id
            if group not in seen:
                seen.add(group)
                kept.append(candidate)
                if len(kept) == k:
                    break
        return kept

    @cached_property
    def _reranker(self):
        from sentence_transformers import CrossEncoder

        from rag.embed.encoder import resolve_model

        name = self.settings.retrieval.rerank_model
        try:
            return CrossEncoder(resolve_model(name), device=self.settings.embedding.device)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"cannot load rerank model '{name}' ({type(exc).__name__})") from None

    def search(
        self, query: str, k: int | None = None, mode: SearchMode | None = None, doc_ids: list[str] | None = None
    ) -> SearchResponse:
        cfg = self.settings.retrieval
        query = validate_query(query, cfg)
        k = k or cfg.k
        if k < 1:
            raise BadInputError("k must be at least 1")
        mode = mode or cfg.mode
        if mode not in SEARCH_MODES:
            raise BadInputError(f"unknown search mode '{mode}' (use {', '.join(SEARCH_MODES)})")
        unknown = [d for d in doc_ids or [] if d not in self.store.documents]
        if unknown:
            raise BadInputError(f"unknown document: {unknown[0]} (see `rag docs`)")
        depth = max(k, cfg.candidates, cfg.rerank_candidates if cfg.rerank_model else 0)
        query_vector = self.embedder.encode_query(query) if mode != "bm25" else None
        candidates = self.store.search(query, query_vector, mode, depth, doc_ids or None)
        if cfg.rerank_model:
            head = candidates[: cfg.rerank_candidates]
            rerank = self._reranker.predict([(query, c.chunk.text) for c in head])
            candidates = [replace(c, score=float(s)) for c, s in sorted(zip(head, rerank), key=lambda pair: -pair[1])]
        shown = self._collapse(candidates, k)
        # One read for all hits' documents: a remote store (Milvus) answers it in one request.
        documents = self.store.documents_for(c.chunk.doc_id for c in shown)
        hits = [
            self._hit(rank, candidate, documents[candidate.chunk.doc_id]) for rank, candidate in enumerate(shown, 1)
        ]
        return SearchResponse(query=query, mode=mode, results=hits)

    def _hit(self, rank: int, candidate: Candidate, doc: Document) -> SearchHit:
        chunk = candidate.chunk
        head = self.store.chunk(chunk.duplicate_of) if chunk.duplicate_of else chunk
        group = [
            ChunkLocation(chunk_id=head.chunk_id, doc_id=head.doc_id, start=head.start, end=head.end),
            *head.copies,
        ]
        return SearchHit(
            rank=rank,
            score=candidate.score,
            chunk_id=chunk.chunk_id,
            doc_id=chunk.doc_id,
            start=chunk.start,
            end=chunk.end,
            text=chunk.text,
            title=doc.display_title,
            dense_score=candidate.dense_score,
            bm25_score=candidate.bm25_score,
            also_in=[loc for loc in group if loc.chunk_id != chunk.chunk_id],
            **doc.page_fields(chunk.start, chunk.end),
        )
