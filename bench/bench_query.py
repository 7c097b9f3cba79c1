"""Warm query latency per mode (bm25, dense, hybrid) on the seeds index and the SciFact index:
models and indexes loaded, a warm-up round discarded, then N timed `RagService.search` calls
per mode with the default k and candidate depth.

Both indexes persist in bench/.cache/ (the SciFact one is shared with bench_scifact.py), so
only a first run pays for embedding."""

from __future__ import annotations

import argparse
import time

import numpy as np
from run_all import (
    CACHE_DIR,
    SCIFACT_DIR,
    SEEDS_DIR,
    markdown_table,
    rich_table,
    write_section,
)

from rag.config import SEARCH_MODES as MODES
from rag.config import Settings
from rag.eval.beir import beir_settings, build_beir_index, load_beir
from rag.service import RagService
from rag.text.sentences import sentence_spans

WARMUP = 20


def seeds_service() -> tuple[RagService, list[str]]:
    """The seeds index; queries are sentences taken from the seed documents (real wording,
    varied length), since the seeds come without a question set."""
    settings = Settings()
    settings = settings.model_copy(
        update={"index": settings.index.model_copy(update={"dir": CACHE_DIR / "seeds-index"})}
    )
    service = RagService(settings)
    service.update(paths=[SEEDS_DIR])
    queries = [
        doc.text[span.start : span.end]
        for doc in service.store.documents.values()
        for span in sentence_spans(doc.text)
        if 5 <= len(doc.text[span.start : span.end].split()) <= 40
    ]
    return service, queries


def scifact_service() -> tuple[RagService, list[str]]:
    """The SciFact index of bench_scifact.py; queries are the SciFact claims (test first)."""
    dataset = load_beir(SCIFACT_DIR)
    service = RagService(beir_settings(Settings(), CACHE_DIR / "scifact-index"))
    build_beir_index(service, dataset)
    test = list(dataset.queries.values())
    train = list(load_beir(SCIFACT_DIR, split="train").queries.values())
    return service, test + train


def latencies(service: RagService, queries: list[str], mode: str, n: int) -> list[float]:
    for query in queries[:WARMUP]:
        service.search(query, mode=mode)
    out = []
    for i in range(n):
        query = queries[(WARMUP + i) % len(queries)]
        clock = time.perf_counter()
        service.search(query, mode=mode)
        out.append((time.perf_counter() - clock) * 1000)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=200, help="timed queries per mode and index")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console(width=200)
    rows = []
    for name, make in (("seeds", seeds_service), ("SciFact", scifact_service)):
        console.print(f"loading the {name} index ...")
        service, queries = make()
        manifest = service.store.manifest
        for mode in MODES:
            ms = np.array(latencies(service, queries, mode, args.queries))
            rows.append(
                [
                    f"{name} ({manifest.documents} docs, {manifest.canonical_chunks} chunks)",
                    mode,
                    len(ms),
                    f"{np.percentile(ms, 50):.1f}",
                    f"{np.percentile(ms, 95):.1f}",
                    f"{ms.mean():.1f}",
                    f"{ms.max():.1f}",
                ]
            )
            console.print(f"  {mode}: p50 {rows[-1][3]} ms, p95 {rows[-1][4]} ms")

    headers = ["index", "mode", "queries", "p50 ms", "p95 ms", "mean ms", "max ms"]
    console.print(rich_table("Warm query latency (RagService.search)", headers, rows))
    settings = Settings()
    write_section(
        "bench_query",
        "Warm query latency",
        f"`RagService.search(query, mode=...)` with default k={settings.retrieval.k} and "
        f"candidates={settings.retrieval.candidates}, flat FAISS, no reranker; {WARMUP} warm-up queries per mode "
        "discarded. Seeds queries: sentences of the seed documents; SciFact queries: the claims.\n\n"
        + markdown_table(headers, rows),
    )


if __name__ == "__main__":
    main()
