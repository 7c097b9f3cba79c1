"""FAISS inner-product index over unit vectors (cosine similarity): exact by default,
HNSW or IVF for large collections. Row ids are positions in the chunk list."""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from rag.config import IndexSettings

# IVF needs about this many training points per list to place centroids well.
IVF_POINTS_PER_LIST = 39


def build_dense_index(vectors: np.ndarray, settings: IndexSettings) -> faiss.Index:
    n, dim = vectors.shape
    if settings.faiss_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif settings.faiss_type == "ivf" and n >= IVF_POINTS_PER_LIST * 2:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // IVF_POINTS_PER_LIST))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    else:
        # Too few vectors to train IVF: exact search is both right and fast here.
        index = faiss.IndexFlatIP(dim)
    if n:
        index.add(vectors)
    return index


def save_dense_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_dense_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def search_dense(
    index: faiss.Index,
    query: np.ndarray,
    k: int,
    settings: IndexSettings,
    allowed_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows), restricted to `allowed_rows` when given."""
    if index.ntotal == 0 or k <= 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    selector = faiss.IDSelectorBatch(allowed_rows.astype(np.int64)) if allowed_rows is not None else None
    if isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(settings.hnsw_ef_search, k))
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=settings.ivf_nprobe)
    else:
        params = faiss.SearchParameters(sel=selector)
    scores, rows = index.search(query.reshape(1, -1).astype(np.float32), min(k, index.ntotal), params=params)
    keep = rows[0] >= 0
    return scores[0][keep], rows[0][keep]
