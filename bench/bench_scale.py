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
mapped; then the store and a first search), and one-document uploads through the whole
pipeline (`update_index`, as `rag serve` runs it: the ingest state held in memory; the first
upload builds that state from the stored documents, as for an index written without it; the
last comes after the state was saved and dropped, as after a server restart)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from run_all import BENCH_DIR, CACHE_DIR, markdown_table, write_section

from rag.config import Settings
from rag.embed.encoder import Embedder, embedding_fingerprint
from rag.ingest.incremental import HeldState
from rag.ingest.pipeline import corpus_fingerprint, update_index
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


def derived_rows(vectors: np.ndarray, texts: list[str]) -> list[DocumentRows]:
    """One document of one passage per text, ids p0000000, p0000001, ..."""
    rows = []
    for i, text in enumerate(texts):
        doc = Document(doc_id=f"p{i:07d}", path="derived", root="derived", text=text, sha256=str(i))
        chunk = Chunk(chunk_id=f"p{i:07d}:0-{len(text)}", doc_id=doc.doc_id, start=0, end=len(text), text=text)
        rows.append(DocumentRows(doc, [chunk], [text], vectors[i : i + 1], [f"k{i}"]))
    return rows


def manifest(settings: Settings, rows: list[DocumentRows]) -> Manifest:
    """The manifest `update_index` would write for these settings, so that it updates the
    derived index instead of rebuilding it."""
    return Manifest(
        created_at=new_manifest_time(),
        embedding_model=settings.embedding.model,
        embedding_fingerprint=embedding_fingerprint(settings.embedding),
        embedding_backend=settings.embedding.backend,
        dimension=384,
        include_title=settings.embedding.include_title,
        chunking=settings.chunking,
        cleaning=settings.cleaning,
        faiss_type=settings.index.faiss_type,
        dedup_threshold=settings.index.dedup_threshold,
        corpus_fingerprint=corpus_fingerprint({r.document.doc_id: r.document for r in rows}),
        documents=len(rows),
        chunks=len(rows),
        canonical_chunks=len(rows),
        versions=package_versions(),
    )


# Uploaded documents: new text (no near-copy among the derived passages), two paragraphs.
UPLOAD = (
    "The lighthouse keeper of Hon Dau island reported that the new solar panels now supply all of "
    "the station's power during the dry season, and that the batteries last through the night.\n\n"
    "Engineers installed forty-two panels in {n} days; the diesel generator is kept as a reserve "
    "for long stretches of cloudy weather, and the keeper logs its fuel every morning."
)


def fresh_restart(generation: Path, question: str) -> tuple[float, float, float]:
    """Seconds to open `generation` and answer a first hybrid search, seconds of the opening
    alone, and the RSS they added (MiB); the query vector is in query.npy beside the index."""
    settings = Settings()
    vector = np.load(generation.parent.parent / "query.npy")
    clock, before = time.perf_counter(), rss_mib()
    data = read_generation(generation)
    opened = time.perf_counter() - clock
    FaissBm25Store(data, settings.retrieval, settings.index).search(question, vector, "hybrid", 10, None)
    return time.perf_counter() - clock, opened, rss_mib() - before


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--uploads", type=int, default=3, help="one-document uploads after the first")
    parser.add_argument(
        "--types", default=",".join(TYPES), help="FAISS types to build, comma-separated; ivf-sq8@64: with ivf_nprobe 64"
    )
    parser.add_argument("--restart-of", type=Path, help=argparse.SUPPRESS)  # the restart, in its own process
    parser.add_argument("--question", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.restart_of:
        print(json.dumps(fresh_restart(args.restart_of, args.question)))
        return
    base, texts = real_passages()
    vectors, passage_texts = derived(base, texts, args.passages)
    questions = [
        json.loads(line)["question"] for line in (BENCH_DIR / "questions" / "clapnq_dev.jsonl").read_text().splitlines()
    ][: args.queries]
    embedder = Embedder(Settings().embedding)
    queries = np.stack([embedder.encode_query(q) for q in questions]).astype(np.float32)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        settings = Settings().replace(index={"dir": Path(tmp) / "index"})
        # BM25 once, timed; the store's build below takes this very index instead of tokenizing again.
        clock, before = time.perf_counter(), rss_mib()
        lexical = build_lexical_index(passage_texts)
        bm25_build, bm25_rss = time.perf_counter() - clock, rss_mib() - before
        # The corpus once (FAISS as faiss_type says, BM25, chunks, documents) through the real writer.
        build_load, clock = os.getloadavg()[0], time.perf_counter()
        files_store.build_lexical_index = lambda texts, built=lexical: built
        dense_builds: list[float] = []

        def timed_dense(*args: object) -> object:
            started = time.perf_counter()
            built = build_dense_index(*args)
            dense_builds.append(time.perf_counter() - started)
            return built

        files_store.build_dense_index = timed_dense
        with open_writer(settings.index.dir, settings.index) as writer:
            upserted = derived_rows(vectors, passage_texts)
            writer.apply(Changes(upserted=upserted, manifest=manifest(settings, upserted)))
        files_store.build_lexical_index, files_store.build_dense_index = build_lexical_index, build_dense_index
        # The type the default (auto) chose for this segment is searched as the store built it.
        default_kind = type(read_generation(current_generation(settings.index.dir)).segments[0].dense).__name__

        del upserted, writer, lexical
        store_build = time.perf_counter() - clock
        generation = current_generation(settings.index.dir)
        disk = {p.name: p.stat().st_size for p in next(generation.glob("seg-*")).rglob("*") if p.is_file()}
        bm25_disk = sum(disk.get(f"{name}.npy", 0) for name in ("indptr", "rows", "tf", "lengths")) + disk.get(
            "vocab.json", 0
        )
        # Restart: a new process opens the generation and answers a first search.
        np.save(Path(tmp) / "query.npy", queries[0])
        restart_load = os.getloadavg()[0]
        fresh = subprocess.run(
            [sys.executable, __file__, "--restart-of", str(generation), "--question", questions[0]],
            capture_output=True,
            text=True,
            check=True,
        )
        restart, opened, restart_rss = json.loads(fresh.stdout.splitlines()[-1])
        print(
            f"bm25 {bm25_build:.1f}s, store {store_build:.1f}s, restart {restart:.2f}s ({opened:.2f}s open)", flush=True
        )

        # One document through the store's writer alone: open, apply, open the new generation.
        store_load, clock = os.getloadavg()[0], time.perf_counter()
        with open_writer(settings.index.dir, settings.index) as writer:
            writer_open = time.perf_counter() - clock
            extra = Document(doc_id="extra", path="extra", root="extra", text=passage_texts[0], sha256="extra")
            chunk = Chunk(
                chunk_id=f"extra:0-{len(extra.text)}", doc_id="extra", start=0, end=len(extra.text), text=extra.text
            )
            writer.apply(
                Changes(
                    upserted=[DocumentRows(extra, [chunk], [extra.text], vectors[:1], ["extra"])],
                    removed=["p0000001"],
                    manifest=manifest(settings, derived_rows(vectors[:1], passage_texts[:1])).model_copy(
                        update={"documents": args.passages, "chunks": args.passages, "canonical_chunks": args.passages}
                    ),
                )
            )
        applied = time.perf_counter() - clock
        read_generation(current_generation(settings.index.dir))
        store_upload = (time.perf_counter() - clock, writer_open, applied - writer_open, store_load)
        print("store upload", store_upload, flush=True)

        # Uploads through the pipeline, then the new generation opened as the server does after one.
        held, uploads, flushed = HeldState(), [], None

        def upload(n: int, label: str) -> None:
            path = Path(tmp) / "uploads" / f"upload-{n}.txt"
            path.parent.mkdir(exist_ok=True)
            path.write_text(UPLOAD.format(n=n + 2), encoding="utf-8")
            load, clock, before = os.getloadavg()[0], time.perf_counter(), rss_mib()
            report = update_index(settings, paths=[path], embedder_factory=lambda: embedder, held_state=held)
            reopened = time.perf_counter()
            read_generation(current_generation(settings.index.dir))
            stages = {**report.seconds, "reopen": time.perf_counter() - reopened}
            total = time.perf_counter() - clock - stages.get("embed", 0.0)
            stages["RSS added MiB"] = rss_mib() - before
            uploads.append((label, total, stages, load, report.added == [path.name] and report.embedded > 0))
            print("upload", label, f"{total:.2f}s", stages, flush=True)

        if args.uploads:
            upload(0, "first (ingest state built from the stored documents)")
            for n in range(1, args.uploads + 1):
                upload(n, f"#{n} (state held)")
            # A server closing writes the state; after a restart the next upload maps it from its files.
            flush_load, clock = os.getloadavg()[0], time.perf_counter()
            held.flush()
            flushed = (time.perf_counter() - clock, flush_load)
            held = HeldState()
            upload(args.uploads + 1, "after a restart (saved state mapped)")
        data = read_generation(current_generation(settings.index.dir))
        segment = data.segments[0]
        exact_top = (vectors @ queries.T).argsort(axis=0)[::-1][:10].T
        built = {"IndexFlatIP": "flat", "IndexIVFScalarQuantizer": "ivf-sq8"}.get(default_kind)
        built_indexes = {built: (segment.dense, dense_builds[0])} if built else {}
        for entry in args.types.split(","):
            kind, _, nprobe = entry.partition("@")  # "ivf-sq8@64": with ivf_nprobe 64
            settings = settings.replace(index={"faiss_type": kind, **({"ivf_nprobe": int(nprobe)} if nprobe else {})})
            load, before, clock = os.getloadavg()[0], rss_mib(), time.perf_counter()
            if kind not in built_indexes:  # "ivf-sq8@64" searches the index built for ivf-sq8
                built_indexes = {kind: (build_dense_index(vectors, settings.index), time.perf_counter() - clock)}
            segment.dense, build = built_indexes[kind]
            path = Path(tmp) / f"{entry}.faiss"
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
                    entry,
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
            path.unlink()
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
    stage_names = ["load", "clean_chunk", "dedup", "write", "reopen"]
    upload_table = markdown_table(
        [
            "upload",
            "seconds (embedding excluded)",
            *(f"{name} s" for name in stage_names),
            "embed s",
            "RSS added MiB",
            "load avg",
        ],
        [
            [
                label,
                f"{total:.2f}",
                *(f"{stages.get(name, 0.0):.2f}" for name in stage_names),
                f"{stages.get('embed', 0.0):.2f}",
                f"{stages['RSS added MiB']:.0f}",
                f"{load:.1f}",
            ]
            for label, total, stages, load, _ in uploads
        ],
    )
    later = [total for _, total, *_ in uploads[1:]]
    assert all(ok for *_, ok in uploads), "an upload did not add its document"
    pipeline = (
        f"**One-document uploads** (`update_index` of one new text file, as `rag serve` runs it, then the new "
        f"generation opened as the server does next; seconds without embedding the document's passages): median "
        f"{statistics.median(later):.2f} s once the ingest state is held or saved. Writing the state when the server "
        f"closes: {flushed[0]:.2f} s (load avg {flushed[1]:.1f}).\n\n{upload_table}\n\n"
        if later
        else "One-document uploads through the whole pipeline were not run at this size (`--uploads 0`).\n\n"
    )
    write_section(
        f"bench_scale_{args.passages}",
        f"{args.passages:,} passages: FAISS types, BM25, restart, one-document uploads",
        f"{args.passages:,} derived passages (vectors mixed from {len(base)} real ClapNQ passage embeddings, see the script's "
        f"docstring), {len(questions)} real ClapNQ questions. Latency: the store's search (FAISS + BM25 + fusion), query "
        f"already embedded; hybrid asks each half for {settings.retrieval.candidates} candidates. Command: "
        f"`python bench/bench_scale.py --passages {args.passages} --types {args.types} --uploads {args.uploads}`.\n\n{table}\n\n"
        f"BM25: built in {bm25_build:.1f} s (RSS +{bm25_rss:.0f} MiB), {bm25_disk / 2**20:.0f} MiB on disk; bm25 search "
        f"p50 / p95 {bm25_p50:.1f} / {bm25_p95:.1f} ms. Whole store written (default faiss_type, BM25, chunks, "
        f"documents, vectors, row columns) in {store_build:.1f} s (load avg {build_load:.1f}), "
        f"{sum(disk.values()) / 2**20:.0f} MiB on disk.\n\n"
        f"**Restart**: {restart:.2f} s to the first answered search (of which {opened:.2f} s opening the generation: "
        f"checksums of every file, counts, arrays mapped, chunks left unparsed), RSS +{restart_rss:.0f} MiB "
        f"(load avg {restart_load:.1f}).\n\n"
        f"**One document through the store's writer** (one added, one removed; embedding and the pipeline's "
        f"own stages not included): {store_upload[0]:.2f} s: writer opened {store_upload[1]:.2f} s, segment written "
        f"and published {store_upload[2]:.2f} s, new generation opened {store_upload[0] - store_upload[1] - store_upload[2]:.2f} s "
        f"(load avg {store_upload[3]:.1f}).\n\n{pipeline}"
        f"Peak RSS of the run {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB.\n",
        script="bench_scale",
    )


if __name__ == "__main__":
    main()
