"""Embedding backends on the CPU: raw fp32 `SentenceTransformer.encode`, `rag index` with the torch
(fp32) and the onnx-int8 backend, and LlamaIndex (`VectorStoreIndex` + `HuggingFaceEmbedding` of
the same local model folder + `FaissVectorStore`, its default chunking) on the first SciFact
abstracts; then SciFact test nDCG@10 (hybrid, dense) and warm hybrid query latency per backend.

Speed on this shared 2-core machine is only comparable within one run: every round times each
system once, back to back, in a rotating order, with the 1-minute load average noted; ratios are
taken within a round. LlamaIndex comes from bench/requirements-llamaindex.txt (not a package
dependency); without it its row is skipped."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from statistics import median

import numpy as np
from bench_index import TextRecorder, bench_service, raw_encode, scifact_documents
from bench_query import latencies
from run_all import CACHE_DIR, SCIFACT_DIR, markdown_table, rich_table, write_section

from rag.config import EmbeddingBackend, Settings
from rag.embed.encoder import Embedder, resolve_model
from rag.eval.beir import (
    BeirDataset,
    beir_settings,
    build_beir_index,
    evaluate_modes,
    load_beir,
)
from rag.schema import Document
from rag.service import RagService

# onnx-int8 becomes the default only if its index build is this much faster than fp32 torch ...
TARGET_SPEEDUP = 1.5
# ... and SciFact nDCG@10 (hybrid and dense) stays within this of fp32.
QUALITY_TOLERANCE = 0.005
BACKENDS: tuple[EmbeddingBackend, ...] = ("torch", "onnx-int8")
QUALITY_MODES = ("hybrid", "dense")


def backend_settings(backend: EmbeddingBackend) -> Settings:
    settings = Settings()
    return settings.model_copy(update={"embedding": settings.embedding.model_copy(update={"backend": backend})})


def llamaindex_builder(model_dir: str, batch_size: int) -> Callable[[list[Document]], int] | None:
    """Builds an in-memory LlamaIndex index and returns how many nodes it embedded."""
    try:
        import faiss
        from llama_index.core import Document as LlamaDocument
        from llama_index.core import StorageContext, VectorStoreIndex
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        from llama_index.vector_stores.faiss import FaissVectorStore
    except ImportError:
        return None
    model = HuggingFaceEmbedding(model_name=model_dir, device="cpu", embed_batch_size=batch_size, normalize=True)
    dimension = len(model.get_text_embedding("dimension probe"))

    def build(documents: list[Document]) -> int:
        store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(dimension))
        VectorStoreIndex.from_documents(
            [LlamaDocument(text=d.text, doc_id=d.doc_id, metadata={"title": d.title or ""}) for d in documents],
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=model,
        )
        return store.client.ntotal

    return build


def rag_index_builder(embedder: Embedder | TextRecorder, settings: Settings) -> Callable[[list[Document]], int]:
    """A fresh `rag index` of the documents (what `update(documents=...)` runs), in a temp dir."""

    def build(documents: list[Document]) -> int:
        with tempfile.TemporaryDirectory(prefix="rag-bench-backend-") as tmp:
            return bench_service(Path(tmp), embedder, settings).update(documents=documents).canonical_chunks

    return build


def speed_rounds(systems: dict[str, Callable[[], int]], rounds: int, console) -> dict[str, list[dict[str, float]]]:
    """Each round runs every system once, the order rotated by one each round."""
    names = list(systems)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            load = os.getloadavg()[0]
            clock = time.perf_counter()
            embedded = systems[name]()
            runs[name].append({"seconds": time.perf_counter() - clock, "load": load, "embedded": embedded})
            console.print(f"  round {round_ + 1} {name}: {runs[name][-1]['seconds']:.1f} s (load {load:.2f})")
    return runs


def round_ratios(runs: dict[str, list[dict[str, float]]], slow: str, fast: str) -> list[float]:
    return [a["seconds"] / b["seconds"] for a, b in zip(runs[slow], runs[fast])]


def judged_subset(dataset: BeirDataset, others: int) -> BeirDataset:
    """Every document judged for a test claim plus the first `others` unjudged ones (0 = all):
    a smaller corpus for when the whole one cannot be embedded twice in the time at hand."""
    if not others:
        return dataset
    judged = {doc_id for docs in dataset.qrels.values() for doc_id in docs}
    unjudged = [d for d in dataset.documents if d.doc_id not in judged][:others]
    return replace(dataset, documents=[d for d in dataset.documents if d.doc_id in judged] + unjudged)


def quality_and_latency(
    queries: int, others: int, console
) -> tuple[BeirDataset, dict[str, dict], dict[str, np.ndarray]]:
    """SciFact test scores per backend (each index persists in bench/.cache/), then warm hybrid
    query latency, the backends alternating in blocks so both see the same load."""
    dataset = judged_subset(load_beir(SCIFACT_DIR), others)
    claims = list(dataset.queries.values()) + list(load_beir(SCIFACT_DIR, split="train").queries.values())
    services, scores = {}, {}
    for backend in BACKENDS:
        # The whole-corpus torch index is bench_scifact's.
        name = "scifact-index" + (f"-judged+{others}" if others else "") + ("" if backend == "torch" else f"-{backend}")
        service = RagService(beir_settings(backend_settings(backend), CACHE_DIR / name))
        console.print(f"SciFact index and evaluation, {backend} ...")
        build_beir_index(service, dataset)
        scores[backend] = evaluate_modes(service, dataset, QUALITY_MODES)
        services[backend] = service
    blocks = 4
    timings: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
    for block in range(blocks):
        for backend in BACKENDS:
            offset = block * queries // blocks
            timings[backend] += latencies(
                services[backend], claims[offset:] + claims[:offset], "hybrid", queries // blocks
            )
    return dataset, scores, {backend: np.array(ms) for backend, ms in timings.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1000, help="SciFact abstracts indexed in the speed rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200, help="timed hybrid queries per backend")
    parser.add_argument(
        "--quality-others",
        type=int,
        default=0,
        help="SciFact quality on the judged abstracts plus this many others (0 = the whole corpus)",
    )
    args = parser.parse_args(argv)

    from rich.console import Console

    logging.getLogger("rag.ingest.cleaning").setLevel(logging.ERROR)
    console = Console(width=200)
    documents = scifact_documents(args.docs)
    settings = {backend: backend_settings(backend) for backend in BACKENDS}
    loads = {}
    embedders = {}
    for backend in BACKENDS:
        clock = time.perf_counter()
        embedders[backend] = Embedder(settings[backend].embedding)
        loads[backend] = time.perf_counter() - clock
    torch_embedder = embedders["torch"]
    recorder = TextRecorder(torch_embedder.dimension)
    rag_index_builder(recorder, settings["torch"])(documents)  # a dry build learns the indexed texts
    texts = recorder.texts

    systems: dict[str, Callable[[], int]] = {
        "raw fp32 encode": lambda: len(raw_encode(torch_embedder, texts)),
        "rag index, torch fp32": lambda: rag_index_builder(torch_embedder, settings["torch"])(documents),
        "rag index, onnx-int8": lambda: rag_index_builder(embedders["onnx-int8"], settings["onnx-int8"])(documents),
    }
    llamaindex = llamaindex_builder(
        resolve_model(settings["torch"].embedding.model), settings["torch"].embedding.batch_size
    )
    if llamaindex:
        systems["LlamaIndex (HuggingFaceEmbedding fp32)"] = lambda: llamaindex(documents)
    else:
        console.print(
            "LlamaIndex is not installed (pip install -r bench/requirements-llamaindex.txt): its row is skipped"
        )
    console.print("warm-up ...")
    warm = documents[:32]
    for build in (rag_index_builder(e, settings[b]) for b, e in embedders.items()):
        build(warm)
    if llamaindex:
        llamaindex(warm)
    console.print(f"{args.rounds} interleaved rounds on {len(documents)} SciFact abstracts ...")
    runs = speed_rounds(systems, args.rounds, console)

    reference = "rag index, torch fp32"
    headers = [
        "system",
        "passages embedded",
        "median s",
        "docs/s",
        "per round s (1-min load avg)",
        "speed vs fp32 index (per round)",
    ]
    rows = []
    for name, measured in runs.items():
        seconds = median(r["seconds"] for r in measured)
        ratios = round_ratios(runs, reference, name)
        rows.append(
            [
                name,
                int(measured[0]["embedded"]),
                f"{seconds:.1f}",
                f"{len(documents) / seconds:.1f}",
                ", ".join(f"{r['seconds']:.1f} ({r['load']:.1f})" for r in measured),
                f"{median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})",
            ]
        )
    console.print(rich_table(f"Index speed, first {len(documents)} SciFact abstracts", headers, rows))

    dataset, scores, timings = quality_and_latency(args.queries, args.quality_others, console)
    quality_headers = [
        "backend",
        *[f"{mode} nDCG@10" for mode in QUALITY_MODES],
        *[f"{mode} Recall@100" for mode in QUALITY_MODES],
        "hybrid query p50 ms",
        "hybrid query p95 ms",
        "model load s",
    ]
    quality_rows = [
        [
            backend,
            *[f"{scores[backend][m]['nDCG@10']:.4f}" for m in QUALITY_MODES],
            *[f"{scores[backend][m]['Recall@100']:.4f}" for m in QUALITY_MODES],
            f"{np.percentile(timings[backend], 50):.1f}",
            f"{np.percentile(timings[backend], 95):.1f}",
            f"{loads[backend]:.1f}",
        ]
        for backend in BACKENDS
    ]
    console.print(rich_table("SciFact test (300 queries) and warm hybrid latency", quality_headers, quality_rows))

    speedup = median(round_ratios(runs, reference, "rag index, onnx-int8"))
    drops = {m: scores["torch"][m]["nDCG@10"] - scores["onnx-int8"][m]["nDCG@10"] for m in QUALITY_MODES}
    verdicts = [
        f"- onnx-int8 index vs torch fp32 index: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x): "
        + ("met" if speedup >= TARGET_SPEEDUP else "MISSED"),
        *[
            f"- {m} nDCG@10 fp32 - int8 = {d:+.4f} (target within {QUALITY_TOLERANCE}): "
            + ("met" if abs(d) <= QUALITY_TOLERANCE else "MISSED")
            for m, d in drops.items()
        ],
    ]
    if llamaindex:
        versus = median(round_ratios(runs, "LlamaIndex (HuggingFaceEmbedding fp32)", "rag index, onnx-int8"))
        verdicts.append(
            f"- onnx-int8 index vs LlamaIndex, docs/s: {versus:.2f}x (target >= {TARGET_SPEEDUP}x): "
            + ("met" if versus >= TARGET_SPEEDUP else "MISSED")
        )
    console.print("\n".join(verdicts))
    write_section(
        "bench_embed_backends",
        "Embedding backends: fp32 torch vs onnx-int8 (and LlamaIndex)",
        f"Speed: the first {len(documents)} SciFact abstracts, {args.rounds} rounds; each round times every system once, "
        "back to back, the order rotated by one per round; the 1-minute load average at each start is in brackets "
        "(this 2-core machine is shared, so only ratios within a round compare). `rag index` = a fresh index with "
        "default settings (cleaning on, chunks of 150/220/25 words, batch "
        f"{settings['torch'].embedding.batch_size}, flat FAISS, BM25, written to disk); raw fp32 encode = "
        "`SentenceTransformer.encode` of the same indexed texts, normalised; LlamaIndex = `VectorStoreIndex.from_documents` "
        "with its default chunking, `HuggingFaceEmbedding` of the same model folder (fp32 torch) and an in-memory "
        f"`FaissVectorStore` (flat inner product). Models loaded once ({', '.join(f'{b} {s:.1f} s' for b, s in loads.items())}; "
        "onnx-int8 includes the one-time export when its cache was empty) and warmed up.\n\n"
        + markdown_table(headers, rows)
        + f"\n\nQuality and latency: BEIR SciFact test split (300 claims) over {len(dataset.documents):,} abstracts"
        + (
            f" (the {len(dataset.documents) - args.quality_others} judged for a test claim plus the first {args.quality_others} others, "
            "not the whole corpus: scores are higher than the SciFact section's and compare only with each other)"
            if args.quality_others
            else ""
        )
        + " through `rag.eval.beir` as in the SciFact section (cleaning off, default retrieval settings), each backend with its own index; warm hybrid "
        f"`RagService.search` latency over {args.queries} claims per backend, the backends alternating in 4 blocks.\n\n"
        + markdown_table(quality_headers, quality_rows)
        + "\n\n"
        + "\n".join(verdicts),
    )


if __name__ == "__main__":
    main()
