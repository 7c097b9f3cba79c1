"""Every FAISS index type of `[index] faiss_type`: nearest passages found, doc-id filters
honoured exactly, deleted documents never returned; the real store on real FAISS files."""

from __future__ import annotations

import numpy as np
import pytest

from rag.config import Settings
from rag.schema import Chunk, Document
from rag.stores.base import Changes, DocumentRows, Manifest, new_manifest_time, package_versions
from rag.stores.faiss_bm25.dense import AUTO_EXACT_ROWS, PQ_TRAINING_POINTS, factory_string
from rag.stores.faiss_bm25.store import FaissBm25Store, open_writer, read_index

pytestmark = pytest.mark.slow

DIMENSION = 384
PER_DOC = 21
# 10,500 passages train IVF-PQ; 3,150 make every other type approximate (IVF: > 78 vectors).
DOCS = {"ivf-pq": 500}
WORDS = ["harbour", "storm", "panel", "guard", "river", "bridge", "school", "market", "forest", "village"]


def rows_of(doc_number: int, vectors: np.ndarray, settings: Settings) -> DocumentRows:
    doc_id = f"doc{doc_number:04d}.txt"
    sentences = [
        f"{WORDS[(doc_number + i) % 10]} {WORDS[i % 10]} report {doc_number} part {i}." for i in range(PER_DOC)
    ]
    text = " ".join(sentences)
    chunks, start = [], 0
    for sentence in sentences:
        chunks.append(
            Chunk(
                chunk_id=f"{doc_id}:{start}-{start + len(sentence)}",
                doc_id=doc_id,
                start=start,
                end=start + len(sentence),
                text=sentence,
            )
        )
        start += len(sentence) + 1
    document = Document(doc_id=doc_id, path=doc_id, root="/", text=text, sha256=str(doc_number))
    keys = [f"key-{doc_id}-{i}" for i in range(PER_DOC)]
    return DocumentRows(document, chunks, sentences, vectors, keys)


def manifest(settings: Settings, documents: int) -> Manifest:
    return Manifest(
        created_at=new_manifest_time(),
        embedding_model="stand-in",
        embedding_fingerprint="stand-in",
        dimension=DIMENSION,
        include_title=False,
        chunking=settings.chunking,
        cleaning=settings.cleaning,
        faiss_type=settings.index.faiss_type,
        dedup_threshold=settings.index.dedup_threshold,
        corpus_fingerprint=str(documents),
        documents=documents,
        chunks=documents * PER_DOC,
        canonical_chunks=documents * PER_DOC,
        versions=package_versions(),
    )


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    found = np.random.default_rng(7).standard_normal((500 * PER_DOC, DIMENSION)).astype(np.float32)
    assert len(found) >= PQ_TRAINING_POINTS
    return found / np.linalg.norm(found, axis=1, keepdims=True)


@pytest.mark.parametrize("faiss_type", ["auto", "flat", "hnsw", "hnsw-sq8", "ivf", "ivf-sq8", "ivf-pq"])
def test_each_faiss_type_finds_filters_and_forgets(tmp_path, vectors, faiss_type) -> None:
    settings = Settings().replace(index={"dir": tmp_path / "index", "faiss_type": faiss_type})
    docs = DOCS.get(faiss_type, 150)
    with open_writer(settings.index.dir, settings.index) as writer:
        rows = [rows_of(d, vectors[d * PER_DOC : (d + 1) * PER_DOC], settings) for d in range(docs)]
        writer.apply(Changes(upserted=rows, manifest=manifest(settings, docs)))
    data = read_index(settings.index.dir)
    index_class = type(data.segments[0].dense).__name__
    assert (
        index_class
        == {
            "auto": "IndexFlatIP",  # a segment this small is searched exactly
            "flat": "IndexFlatIP",
            "hnsw": "IndexHNSWFlat",
            "hnsw-sq8": "IndexHNSWSQ",
            "ivf": "IndexIVFFlat",
            "ivf-sq8": "IndexIVFScalarQuantizer",
            "ivf-pq": "IndexIVFPQ",
        }[faiss_type]
    )
    store = FaissBm25Store(data, settings.retrieval, settings.index)
    noise = np.random.default_rng(1).standard_normal(DIMENSION).astype(np.float32) * 0.01

    # Unfiltered: a passage's own vector (slightly moved) finds that passage first.
    target = 1234
    query = vectors[target] + noise
    found = store.search("", query, "dense", 10, None)
    assert found[0].chunk.chunk_id == data.row_chunk(target).chunk_id

    # Filtered to two documents: only their passages, the nearest of them first (exactly).
    allowed = ["doc0003.txt", "doc0140.txt"]
    found = store.search("harbour report", query, "hybrid", 10, allowed)
    assert found and {c.chunk.doc_id for c in found} <= set(allowed)
    dense = store.search("", query, "dense", 10, allowed)
    allowed_rows = [r for d in allowed for r in data.rows_of(d)]
    nearest = max(allowed_rows, key=lambda r: float(vectors[r] @ query))
    assert dense[0].chunk.chunk_id == data.row_chunk(nearest).chunk_id and len(dense) == 10

    # A removed document is never found again, filtered or not.
    removed = data.row_chunk(target).doc_id
    with open_writer(settings.index.dir, settings.index) as writer:
        writer.apply(Changes(removed=[removed], manifest=manifest(settings, docs - 1)))
    store = FaissBm25Store(read_index(settings.index.dir), settings.retrieval, settings.index)
    assert all(c.chunk.doc_id != removed for c in store.search("harbour report", query, "hybrid", 50, None))
    assert store.search("", query, "dense", 10, [removed]) == []


def test_auto_searches_small_segments_exactly_and_large_ones_with_ivf_sq8() -> None:
    settings = Settings().index
    assert settings.faiss_type == "auto"
    assert factory_string(settings, AUTO_EXACT_ROWS, DIMENSION) is None
    assert factory_string(settings, AUTO_EXACT_ROWS + 1, DIMENSION) == factory_string(
        settings.model_copy(update={"faiss_type": "ivf-sq8"}), AUTO_EXACT_ROWS + 1, DIMENSION
    )
    assert factory_string(settings, 1_000_000, DIMENSION).endswith(",SQ8")
