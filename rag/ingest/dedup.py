"""Group near-identical chunks (MinHash LSH over word 3-shingles, datasketch).

Every chunk stays in the indexes, since a near-copy may hold a word the others lack and must
remain findable; the groups only collapse search results. The first chunk of a group in
(doc_id, start) order records where its copies live and each copy names it in `duplicate_of`,
so a result list shows a passage once and still names every document that holds it."""

from __future__ import annotations

import re
from collections.abc import Mapping

from datasketch import LeanMinHash, MinHash, MinHashLSH

from rag.schema import Chunk, ChunkLocation

TOKEN = re.compile(r"\w+")
SHINGLE = 3


def _shingles(text: str) -> set[bytes]:
    words = TOKEN.findall(text.lower())
    if len(words) < SHINGLE:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)}


def group_duplicates(
    chunks: list[Chunk], threshold: float, num_perm: int, known: Mapping[str, LeanMinHash] | None = None
) -> list[Chunk]:
    """Return the chunks in (doc_id, start) order with `duplicate_of` / `copies` filled in
    (`known`: signatures already computed, by chunk id)."""
    ordered = sorted(chunks, key=lambda c: (c.doc_id, c.start))
    if known is not None:
        signatures: list[LeanMinHash] = [known[c.chunk_id] for c in ordered]
    else:
        signatures = MinHash.bulk([_shingles(c.text) for c in ordered], num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    canonical_chunks: dict[str, tuple[Chunk, LeanMinHash]] = {}
    out: list[Chunk] = []
    for chunk, signature in zip(ordered, signatures):
        chunk = chunk.model_copy(update={"duplicate_of": None, "copies": []})
        # LSH proposes candidates; the estimated Jaccard similarity decides.
        matches = [
            canonical_chunks[key][0]
            for key in lsh.query(signature)
            if signature.jaccard(canonical_chunks[key][1]) >= threshold
        ]
        if matches:
            canonical = min(matches, key=lambda c: (c.doc_id, c.start))
            chunk.duplicate_of = canonical.chunk_id
            canonical.copies.append(
                ChunkLocation(chunk_id=chunk.chunk_id, doc_id=chunk.doc_id, start=chunk.start, end=chunk.end)
            )
        else:
            lsh.insert(chunk.chunk_id, signature)
            canonical_chunks[chunk.chunk_id] = (chunk, signature)
        out.append(chunk)
    return out
