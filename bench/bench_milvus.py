"""The Milvus store against the embedded one, in one run: SciFact nDCG@10 per mode (the
embedded index copied into Milvus with `rag migrate`'s code, so both hold the same vectors),
warm query latency p50/p95 interleaved, and what one document upload costs the store on a
collection of `--chunks` passages (Milvus: that document's rows; embedded: a new segment with
that document's rows, the older segments linked into a new generation).

Milvus is a `milvus-lite server` started here on a free loopback port; load averages are
printed beside each timing since the machine is shared."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from run_all import CACHE_DIR, SCIFACT_DIR, markdown_table, write_section

from rag.config import SEARCH_MODES as MODES
from rag.config import Settings
from rag.eval.beir import BeirDataset, QueryVectors, beir_settings, build_beir_index, evaluate_modes, load_beir
from rag.retrieve.retriever import Retriever
from rag.schema import Chunk
from rag.service import RagService
from rag.stores import open_writer
from rag.stores.base import Changes, DocumentRows, Manifest
from rag.stores.faiss_bm25.store import read_index
from rag.stores.migrate import backend_settings, migrate

FILES_INDEX = CACHE_DIR / "scifact-index"
WORK = CACHE_DIR / "milvus"


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("milvus-lite")),
            "server",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("milvus-lite server did not start")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency(services: dict[str, RagService], queries: list[str], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Milliseconds per search, the stores taking turns query by query (same load for both)."""
    retrievers = {}
    for name, service in services.items():
        vectors = QueryVectors(service.embedder, queries)
        retrievers[name] = Retriever(service.store, vectors, service.settings)  # type: ignore[arg-type]
    times: dict[str, dict[str, list[float]]] = {name: {mode: [] for mode in MODES} for name in services}
    for name in services:  # warm-up
        retrievers[name].search(queries[0], k=10, mode="hybrid")
    for _ in range(rounds):
        for query in queries:
            for mode in MODES:
                for name, retriever in retrievers.items():
                    clock = time.perf_counter()
                    retriever.search(query, k=10, mode=mode)
                    times[name][mode].append((time.perf_counter() - clock) * 1000)
    return times


def scaled_rows(files: Path, chunks: int) -> tuple[list[DocumentRows], Manifest]:
    """SciFact's documents repeated under new ids until they hold `chunks` passages, with their
    real vectors (copies: nothing is embedded)."""
    data = read_index(files)
    manifest = Manifest.model_validate(data.manifest.model_dump(include=set(Manifest.model_fields)))
    out: list[DocumentRows] = []
    total, copy = 0, 0
    while total < chunks:
        for doc_id, doc in data.documents.items():
            rows = data.rows_of(doc_id)
            if not rows:
                continue
            new_id = f"c{copy}-{doc_id}"
            new_chunks = [
                Chunk(
                    chunk_id=f"{new_id}:{chunk.start}-{chunk.end}",
                    doc_id=new_id,
                    start=chunk.start,
                    end=chunk.end,
                    text=chunk.text,
                )
                for chunk in (data.row_chunk(r) for r in rows)
            ]
            out.append(
                DocumentRows(
                    document=doc.model_copy(update={"doc_id": new_id}),
                    chunks=new_chunks,
                    texts=[c.text for c in new_chunks],
                    vectors=np.stack([data.vector(r) for r in rows]),
                    embedding_keys=[f"{copy}-{data.embedding_key(r)}" for r in rows],
                )
            )
            total += len(rows)
            if total >= chunks:
                break
        copy += 1
    return out, manifest


def upload_cost(settings: Settings, files: Path, chunks: int) -> list[list[object]]:
    rows, manifest = scaled_rows(files, chunks)
    upload, rows = rows[-1], rows[:-1]
    stored = sum(len(r.chunks) for r in rows)
    results = []
    for backend in ("faiss", "milvus"):
        target = backend_settings(settings, backend)
        full = manifest.model_copy(update={"documents": len(rows), "chunks": stored, "canonical_chunks": stored})
        clock = time.perf_counter()
        with open_writer(target) as writer:
            writer.apply(Changes(upserted=rows, manifest=full, replace_all=True))
        built = time.perf_counter() - clock
        built_load = load()
        after = full.model_copy(update={"documents": len(rows) + 1, "chunks": stored + len(upload.chunks)})
        clock = time.perf_counter()
        with open_writer(target) as writer:
            writer.apply(Changes(upserted=[upload], manifest=after))
        one = time.perf_counter() - clock
        results.append([backend, f"{stored:,}", f"{built:.1f} (load {built_load})", f"{one:.2f} (load {load()})"])
        print(results[-1], flush=True)
    return results


def subset(dataset: BeirDataset, others: int) -> BeirDataset:
    """Every judged document and the first `others` of the rest: the same claims, fewer distractors."""
    judged = {doc_id for judgements in dataset.qrels.values() for doc_id in judgements}
    rest = [d for d in dataset.documents if d.doc_id not in judged][:others]
    documents = [d for d in dataset.documents if d.doc_id in judged] + rest
    return BeirDataset(name=f"{dataset.name}-subset", documents=documents, queries=dataset.queries, qrels=dataset.qrels)


UPLOAD_HEADERS = ["store", "passages", "initial load (s)", "one upload (s)"]


def upload_only(source: Path, chunks: int) -> None:
    work = CACHE_DIR / "milvus-upload"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server, uri = start_server(work / "data")
    try:
        settings = Settings().replace(index={"dir": work / "scaled-index"}, store={"uri": uri, "collection": "scaled"})
        rows = upload_cost(settings, source, chunks)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(markdown_table(UPLOAD_HEADERS, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--chunks", type=int, default=100_000, help="passages of the collection for the upload cost (0: not measured)"
    )
    parser.add_argument("--latency-queries", type=int, default=50)
    parser.add_argument("--claims", type=int, default=0, help="SciFact test claims evaluated (0: all 300)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--docs",
        type=int,
        default=0,
        help="SciFact subset: every judged document plus this many others (0: the whole corpus)",
    )
    parser.add_argument(
        "--upload-only",
        type=Path,
        metavar="INDEX_DIR",
        help="only the upload cost, on passages repeated from this embedded index",
    )
    args = parser.parse_args(argv)
    if args.upload_only:
        upload_only(args.upload_only, args.chunks)
        return

    dataset = load_beir(SCIFACT_DIR)
    files_index = FILES_INDEX
    if args.docs:
        dataset = subset(dataset, args.docs)
        files_index = CACHE_DIR / f"scifact-subset-{args.docs}-index"
    if args.claims:
        # Milvus Lite answers a SciFact search in about 2.5 s here: a fixed subset keeps the run short.
        kept = sorted(dataset.queries)[: args.claims]
        dataset = BeirDataset(
            name=dataset.name,
            documents=dataset.documents,
            queries={q: dataset.queries[q] for q in kept},
            qrels={q: dataset.qrels[q] for q in kept if q in dataset.qrels},
        )
    files = RagService(beir_settings(Settings(), files_index))
    print(f"index {len(dataset.documents)} SciFact documents into {files_index} (reused when present)", flush=True)
    build_beir_index(files, dataset)

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    server, uri = start_server(WORK / "data")
    try:
        settings = beir_settings(Settings(), files_index).replace(store={"uri": uri, "collection": "scifact"})
        clock = time.perf_counter()
        copied = migrate(settings, "milvus")
        print(f"migrated {copied.chunks} passages in {time.perf_counter() - clock:.1f}s (load {load()})", flush=True)
        milvus = RagService(backend_settings(settings, "milvus"))
        milvus.embedder = files.embedder

        quality = {}
        for name, service in (("embedded (FAISS + bm25s)", files), ("Milvus (milvus-lite server)", milvus)):
            clock = time.perf_counter()
            quality[name] = evaluate_modes(service, dataset)
            print(name, quality[name], f"{time.perf_counter() - clock:.0f}s", flush=True)
        quality_rows = [[name, *(f"{scores[m]['nDCG@10']:.4f}" for m in MODES)] for name, scores in quality.items()]
        names = list(quality)
        quality_rows.append(
            [
                "difference",
                *(f"{quality[names[1]][m]['nDCG@10'] - quality[names[0]][m]['nDCG@10']:+.4f}" for m in MODES),
            ]
        )

        queries = list(dataset.queries.values())[: args.latency_queries]
        before = load()
        times = latency({"embedded": files, "Milvus": milvus}, queries, args.rounds)
        latency_rows = [
            [name, mode, f"{percentile(t, 50):.1f}", f"{percentile(t, 95):.1f}"]
            for name, modes in times.items()
            for mode, t in modes.items()
        ]
        latency_load = f"{before} -> {load()}"
        print(latency_rows, flush=True)

        upload_settings = settings.replace(index={"dir": WORK / "scaled-index"}, store={"collection": "scaled"})
        cost_rows = upload_cost(upload_settings, files_index, args.chunks) if args.chunks else []
    finally:
        server.terminate()
        server.wait(timeout=60)

    corpus = (
        f"a subset of {len(dataset.documents):,} documents (every judged one and {args.docs:,} others)"
        if args.docs
        else "the whole corpus"
    )
    body = (
        f"SciFact test ({len(dataset.queries)} claims{' (the first by id)' if args.claims else ''}) over {corpus}, the embedded index and its copy in Milvus "
        "(same vectors, no re-embedding):\n\n"
        + markdown_table(["store", *(f"{m} nDCG@10" for m in MODES)], quality_rows)
        + f"\n\nWarm search latency (ms, retrieval only, query vectors precomputed), {len(queries)} SciFact claims x "
        f"{args.rounds} rounds, the stores taking turns query by query; load average {latency_load}:\n\n"
        + markdown_table(["store", "mode", "p50", "p95"], latency_rows)
        + (
            ""
            if not cost_rows
            else f"\n\nOne document upload: the store's write (`StoreWriter.apply`) on a collection of about {args.chunks:,} "
            "passages (SciFact's documents repeated under new ids with their real vectors). The embedded store writes a "
            "segment with that document's rows and links the older segments into a new generation; Milvus deletes and "
            "inserts that document's rows. "
            "The pipeline's own work (cleaning, chunking, embedding the document) is the same for both and not included. "
            "Seconds (load average at the end of each step):\n\n" + markdown_table(UPLOAD_HEADERS, cost_rows)
        )
    )
    write_section("bench_milvus", "Milvus store vs embedded store", body)
    print(body)


if __name__ == "__main__":
    main()
