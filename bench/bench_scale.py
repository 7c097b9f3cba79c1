"""Large collections: every FAISS type of `[index] faiss_type` and BM25 on N passages
(`--passages`, 1,000,000 for issue 13's table), searched through the real store.

Vectors are derived from real embeddings, not embedded: embedding a million texts on this
2-core machine would take hours. Each derived passage is a random mix of three real passage
embeddings of the cached ClapNQ index (bench/.cache or the main worktree's), plus a little
noise, normalised: the vectors span the real embeddings' subspace instead of clustering
around a few hundred points. Its text is one of those passages' texts with a variant number,
so BM25 sees a real vocabulary. Queries are real: ClapNQ dev questions embedded by the model.
Recall@10 is the dense top 10 of each type against exact search (flat) on the same vectors.

Also measured on the same index: a restart (open the generation: checksums, counts, arrays
mapped; then the store and a first search) and one document uploaded through the store's
writer (open, apply, open the new generation)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from run_all import BENCH_DIR, CACHE_DIR, markdown_table, write_section

from rag.config import Settings
from rag.embed.encoder import Embedder
from rag.schema import Chunk, Document
from rag.stores.base import Changes, DocumentRows, Manifest, new_manifest_time, package_versions
from rag.stores.faiss_bm25 import store as files_store
from rag.stores.faiss_bm25.dense import build_dense_index, save_dense_index
from rag.stores.faiss_bm25.lexical import build_lexical_index
from rag.stores.faiss_bm25.store import FaissBm25Store, current_generation, open_writer, read_generation

TYPES = ["flat", "hnsw", "hnsw-sq8", "ivf", "ivf-sq8", "ivf-pq"]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def real_passages() -> tuple[np.ndarray, list[str]]:
    """Embeddings and texts of the cached ClapNQ index (built by bench_clapnq.py)."""
    for root in (CACHE_DIR / "clapnq", Path("/work/main/bench/.cache/clapnq")):
        for generation in sorted(root.glob("beir/clapnq/gen-*"), reverse=True):
            if (generation / "vectors.npy").is_file():
                chunks = [
                    json.loads(line)["text"]
                    for line in (generation / "chunks.jsonl").read_text().splitlines()
                    if line.strip()
                ]
                return np.load(generation / "vectors.npy"), chunks
    raise SystemExit("no cached ClapNQ index: run bench/bench_clapnq.py first")


def derived(base: np.ndarray, texts: list[str], n: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(13)
    picks = rng.integers(0, len(base), size=(n, 3))
    weights = rng.dirichlet([1.0, 1.0, 1.0], size=n).astype(np.float32)
    vectors = (
        np.einsum("nk,nkd->nd", weights, base[picks])
        + rng.standard_normal((n, base.shape[1])).astype(np.float32) * 0.01
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), [f"{texts[p]} (variant {i})" for i, p in enumerate(picks[:, 0])]


def derived_rows(vectors: np.ndarray, texts: list[str], first: int = 0) -> list[DocumentRows]:
    """One document of one passage per text, ids p0000000, p0000001, ..."""
    rows = []
    for i, text in enumerate(texts, start=first):
        doc = Document(doc_id=f"p{i:07d}", path="derived", root="derived", text=text, sha256=str(i))
        chunk = Chunk(chunk_id=f"p{i:07d}:0-{len(text)}", doc_id=doc.doc_id, start=0, end=len(text), text=text)
        rows.append(DocumentRows(doc, [chunk], [text], vectors[i - first : i - first + 1], [f"k{i}"]))
    return rows


def manifest(settings: Settings, n: int) -> Manifest:
    return Manifest(
        created_at=new_manifest_time(),
        embedding_model=settings.embedding.model,
        embedding_fingerprint="derived",
        dimension=384,
        include_title=False,
        chunking=settings.chunking,
        cleaning=settings.cleaning,
        faiss_type="flat",
        dedup_threshold=settings.index.dedup_threshold,
        corpus_fingerprint=str(n),
        documents=n,
        chunks=n,
        canonical_chunks=n,
        versions=package_versions(),
    )


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--types", default=",".join(TYPES), help="FAISS types to build, comma-separated")
    args = parser.parse_args(argv)
    types = args.types.split(",")
    base, texts = real_passages()
    vectors, passage_texts = derived(base, texts, args.passages)
    questions = [
        json.loads(line)["question"] for line in (BENCH_DIR / "questions" / "clapnq_dev.jsonl").read_text().splitlines()
    ][: args.queries]
    embedder = Embedder(Settings().embedding)
    queries = np.stack([embedder.encode_query(q) for q in questions]).astype(np.float32)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        settings = Settings()
        settings = settings.model_copy(update={"index": settings.index.model_copy(update={"dir": Path(tmp) / "index"})})
        # BM25 once, timed; the store's build below takes this very index instead of tokenizing again.
        clock, before = time.perf_counter(), rss_mib()
        lexical = build_lexical_index(passage_texts)
        bm25_build, bm25_rss = time.perf_counter() - clock, rss_mib() - before
        # The corpus once (flat FAISS, BM25, chunks, documents) through the real writer.
        load, clock = os.getloadavg()[0], time.perf_counter()
        files_store.build_lexical_index = lambda texts, built=lexical: built
        with open_writer(settings.index.dir, settings.index) as writer:
            upserted = derived_rows(vectors, passage_texts)
            writer.apply(Changes(upserted=upserted, manifest=manifest(settings, args.passages)))
        files_store.build_lexical_index = build_lexical_index
        del upserted, writer, lexical
        store_build = time.perf_counter() - clock
        generation = current_generation(settings.index.dir)
        disk = {p.name: p.stat().st_size for p in next(generation.glob("seg-*")).rglob("*") if p.is_file()}
        bm25_disk = sum(disk.get(f"{name}.npy", 0) for name in ("indptr", "rows", "tf", "lengths")) + disk.get(
            "vocab.json", 0
        )
        # Restart: the generation opened (checksums, counts, arrays mapped), the store, a first search.
        restart_load, clock, before = os.getloadavg()[0], time.perf_counter(), rss_mib()
        data = read_generation(generation)
        opened = time.perf_counter() - clock
        FaissBm25Store(data, settings.retrieval, settings.index).search(questions[0], queries[0], "hybrid", 10, None)
        restart = time.perf_counter() - clock
        restart_rss = rss_mib() - before
        # One more document through the writer: open it, apply, open the new generation.
        upload_load, clock = os.getloadavg()[0], time.perf_counter()
        with open_writer(settings.index.dir, settings.index) as writer:
            writer_open = time.perf_counter() - clock
            extra = derived_rows(vectors[:1], [f"{passage_texts[0]} (uploaded)"], first=args.passages)
            writer.apply(Changes(upserted=extra, manifest=manifest(settings, args.passages + 1)))
        applied = time.perf_counter() - clock
        read_generation(current_generation(settings.index.dir))
        upload = time.perf_counter() - clock
        segment = data.segments[0]
        exact_top = (vectors @ queries.T).argsort(axis=0)[::-1][:10].T
        for kind in types:
            settings = settings.replace(index={"faiss_type": kind})
            load, before, clock = os.getloadavg()[0], rss_mib(), time.perf_counter()
            segment.dense = build_dense_index(vectors, settings.index) if kind != "flat" else segment.dense
            build = time.perf_counter() - clock if kind != "flat" else store_build
            path = Path(tmp) / f"{kind}.faiss"
            save_dense_index(segment.dense, path)
            store = FaissBm25Store(data, settings.retrieval, settings.index)
            recall, dense_times, hybrid_times = [], [], []
            for question, query, exact in zip(questions, queries, exact_top):
                clock = time.perf_counter()
                found = store.search(question, query, "dense", 10, None)
                dense_times.append(time.perf_counter() - clock)
                recall.append(
                    len({c.chunk.chunk_id for c in found} & {data.row_chunk(int(r)).chunk_id for r in exact}) / 10
                )
                clock = time.perf_counter()
                store.search(question, query, "hybrid", settings.retrieval.candidates, None)
                hybrid_times.append(time.perf_counter() - clock)
            dense_p50, dense_p95 = percentiles(dense_times)
            hybrid_p50, hybrid_p95 = percentiles(hybrid_times)
            rows.append(
                [
                    kind,
                    f"{build:.1f}",
                    f"{max(rss_mib() - before, 0):.0f}",
                    f"{path.stat().st_size / 2**20:.0f}",
                    f"{statistics.mean(recall):.3f}",
                    f"{dense_p50:.1f} / {dense_p95:.1f}",
                    f"{hybrid_p50:.1f} / {hybrid_p95:.1f}",
                    f"{load:.1f}",
                ]
            )
            print(rows[-1], flush=True)
        bm25_times = []
        for question in questions:
            clock = time.perf_counter()
            store.search(question, None, "bm25", settings.retrieval.candidates, None)
            bm25_times.append(time.perf_counter() - clock)
        bm25_p50, bm25_p95 = percentiles(bm25_times)
    table = markdown_table(
        [
            "faiss_type",
            "build s",
            "RSS added MiB",
            "FAISS file MiB",
            "recall@10 vs exact",
            "dense p50 / p95 ms",
            "hybrid p50 / p95 ms",
            "load avg",
        ],
        rows,
    )
    write_section(
        "bench_scale",
        f"{args.passages:,} passages: FAISS types, BM25, restart",
        f"{args.passages:,} derived passages (vectors mixed from {len(base)} real ClapNQ passage embeddings, see the script's "
        f"docstring), {len(questions)} real ClapNQ questions. Latency: the store's search (FAISS + BM25 + fusion), query "
        f"already embedded; hybrid asks each half for {settings.retrieval.candidates} candidates.\n\n{table}\n\n"
        f"BM25: built in {bm25_build:.1f} s (RSS +{bm25_rss:.0f} MiB), {bm25_disk / 2**20:.0f} MiB on disk; bm25 search "
        f"p50 / p95 {bm25_p50:.1f} / {bm25_p95:.1f} ms. Whole store written (flat, BM25, chunks, documents, vectors, "
        f"row columns) in {store_build:.1f} s, {sum(disk.values()) / 2**20:.0f} MiB on disk.\n\n"
        f"**Restart**: {restart:.1f} s to the first answered search (of which {opened:.1f} s opening the generation: "
        f"checksums of every file, counts, arrays mapped, chunks left unparsed), RSS +{restart_rss:.0f} MiB "
        f"(load avg {restart_load:.1f}).\n\n"
        f"**One document uploaded through the store's writer**: {upload:.2f} s in all: writer opened {writer_open:.2f} s, "
        f"segment written and published {applied - writer_open:.2f} s, new generation opened {upload - applied:.2f} s "
        f"(load avg {upload_load:.1f}). The pipeline's own part of an upload (cleaning statistics, near-copy "
        f"LSH) is not in this figure: see the one-document update table.\n\n"
        f"Peak RSS of the run {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB.\n",
    )


if __name__ == "__main__":
    main()
