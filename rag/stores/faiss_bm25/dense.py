"""FAISS inner-product index over unit vectors (cosine similarity): exact by default,
HNSW or IVF for large collections, their vectors optionally compressed (SQ8: one byte per
dimension; PQ: `ivf_pq_m` bytes per vector). Row ids are positions in the segment's chunks."""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from rag.config import IndexSettings

# IVF needs about this many training points per list to place centroids well.
IVF_POINTS_PER_LIST = 39
# PQ trains 256 centroids per sub-vector, on about as many points each.
PQ_TRAINING_POINTS = 256 * IVF_POINTS_PER_LIST
# IVF's k-means runs on a sample of this many points per list: FAISS would take up to 256 per
# list, most of a million-vector build (recall with the sample: bench/RESULTS.md).
IVF_TRAINING_POINTS_PER_LIST = 64
# faiss_type "auto": a segment up to this many rows is searched exactly (flat), a larger one
# with ivf-sq8: the fastest types that kept recall@10 >= 0.95 at those sizes (bench/RESULTS.md).
AUTO_EXACT_ROWS = 100_000
# A doc-id filter this selective is searched exactly over its rows: an approximate index
# searched with a selector visits only some lists or graph nodes and may miss all of them.
EXACT_FILTER_ROWS = 20_000


def factory_string(settings: IndexSettings, n: int, dim: int) -> str | None:
    """The FAISS index_factory string for `n` vectors, None for exact search."""
    kind = settings.faiss_type
    if kind == "auto":
        kind = "flat" if n <= AUTO_EXACT_ROWS else "ivf-sq8"
    if kind.startswith("hnsw"):
        return f"HNSW{settings.hnsw_m}" + ("_SQ8" if kind == "hnsw-sq8" else ",Flat")
    if kind.startswith("ivf") and n >= IVF_POINTS_PER_LIST * 2 and (kind != "ivf-pq" or n >= PQ_TRAINING_POINTS):
        nlist = settings.ivf_nlist or max(1, min(int(4 * math.sqrt(n)), n // IVF_POINTS_PER_LIST))
        code = {"ivf": "Flat", "ivf-sq8": "SQ8", "ivf-pq": f"PQ{settings.ivf_pq_m}"}[kind]
        return f"IVF{nlist},{code}"
    # Too few vectors to train IVF or PQ: exact search is both right and fast here.
    return None


def build_dense_index(vectors: np.ndarray, settings: IndexSettings) -> faiss.Index:
    n, dim = vectors.shape
    factory = factory_string(settings, n, dim)
    if factory is None:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained and n:
            index.train(training_sample(vectors, index))
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efConstruction = settings.hnsw_ef_construction
    if n:
        index.add(vectors)
    return index


def training_sample(vectors: np.ndarray, index: faiss.Index) -> np.ndarray:
    """The vectors an index trains on: all of them, or for IVF a fixed random sample of
    IVF_TRAINING_POINTS_PER_LIST per list (and enough for PQ)."""
    if not isinstance(index, faiss.IndexIVF):
        return vectors
    limit = max(IVF_TRAINING_POINTS_PER_LIST * index.nlist, PQ_TRAINING_POINTS)
    if len(vectors) <= limit:
        return vectors
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), size=limit, replace=False))
    return np.ascontiguousarray(vectors[rows])


def save_dense_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load_dense_index(path: Path) -> faiss.Index:
    """A saved index, read into memory."""
    return faiss.read_index(str(path))


def live_selector(live: np.ndarray) -> faiss.IDSelector:
    """A selector of the rows whose `live` flag is set (one bit per row, built once per load)."""
    bitmap = np.packbits(live, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(live), faiss.swig_ptr(bitmap))
    selector.bitmap_array = bitmap  # the selector reads the array: keep it alive with it
    return selector


def search_dense(
    index: faiss.Index,
    query: np.ndarray,
    k: int,
    settings: IndexSettings,
    allowed_rows: np.ndarray | None = None,
    selector: faiss.IDSelector | None = None,
    vectors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows), restricted to `allowed_rows` when given, else to `selector`'s;
    a selective `allowed_rows` is searched exactly in `vectors` (the index's rows)."""
    if index.ntotal == 0 or k <= 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    if allowed_rows is not None and vectors is not None and len(allowed_rows) <= EXACT_FILTER_ROWS:
        scores = np.asarray(vectors[allowed_rows], dtype=np.float32) @ query.astype(np.float32)
        best = np.argsort(-scores, kind="stable")[:k]
        return scores[best], allowed_rows[best]
    if allowed_rows is not None:
        selector = faiss.IDSelectorBatch(allowed_rows.astype(np.int64))
    if isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(settings.hnsw_ef_search, k))
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=settings.ivf_nprobe)
    else:
        params = faiss.SearchParameters(sel=selector)
    scores, rows = index.search(query.reshape(1, -1).astype(np.float32), min(k, index.ntotal), params=params)
    keep = rows[0] >= 0
    return scores[0][keep], rows[0][keep]
