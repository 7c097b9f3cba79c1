"""Retrieval quality on a BEIR-format dataset, measured through the real service.

A BEIR folder holds `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`)
and `qrels/<split>.tsv` (header row, then `query-id corpus-id score`). Every corpus record
becomes a Document and goes through the same clean -> chunk -> dedup -> embed -> index path
as user files, so the figures describe what `rag search` returns. Documents are ranked by
their best passage (MaxP), and near-duplicate passages credit every document that holds them."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.config import SEARCH_MODES, SearchMode, Settings
from rag.embed.encoder import Embedder
from rag.errors import BadInputError
from rag.ingest.pipeline import IndexReport
from rag.jsonl import read_json_lines
from rag.retrieve.retriever import Retriever
from rag.schema import Document
from rag.service import RagService

# (stage, done, total); stage is "embed", "search:<mode>" or "search-deep:<mode>".
Progress = Callable[[str, int, int], None]


@dataclass
class BeirDataset:
    name: str
    documents: list[Document]
    queries: dict[str, str]  # only the queries that have judgements in the split
    qrels: dict[str, dict[str, int]]


def _jsonl(path: Path) -> Iterator[tuple[bytes, dict]]:
    """(the line's bytes, its record) for each record of a BEIR file."""
    missing = f"no {path.name} in {path.parent} (not a BEIR dataset folder)"
    for number, line, record in read_json_lines(path, missing=missing):
        if not isinstance(record, dict):
            raise BadInputError(f"{path}:{number}: not a JSON object")
        yield line.encode("utf-8"), record


def _record_id(record: dict, path: Path) -> str:
    if "_id" not in record:
        raise BadInputError(f"a record in {path} has no '_id'")
    return str(record["_id"])


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise BadInputError(f"no qrels file {path}")
    qrels: dict[str, dict[str, int]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines[1:], start=2):  # line 1 is the header
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise BadInputError(f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score'")
        query_id, doc_id, score = parts
        try:
            grade = int(score)
        except ValueError:
            raise BadInputError(f"{path}:{number}: score '{score}' is not an integer") from None
        # Grade 0 marks a judged non-relevant document: not relevant, so not a qrel.
        if grade > 0:
            qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


def load_beir(dataset_dir: Path, split: str = "test") -> BeirDataset:
    """Documents carry the BEIR `_id` as doc_id and the BEIR title as title; chunk offsets
    point into the BEIR text alone, as for any loaded file."""
    dataset_dir = dataset_dir.resolve()
    corpus = dataset_dir / "corpus.jsonl"
    documents = [
        Document(
            doc_id=_record_id(record, corpus),
            path=str(corpus),
            root=str(dataset_dir),
            text=record.get("text") or "",
            title=record.get("title") or None,
            # The record's own bytes: an edited record re-indexes, an untouched one is reused.
            sha256=hashlib.sha256(raw).hexdigest(),
            size=len(raw),
        )
        for raw, record in _jsonl(corpus)
    ]
    qrels = load_qrels(dataset_dir / "qrels" / f"{split}.tsv")
    queries_file = dataset_dir / "queries.jsonl"
    queries = {q: r.get("text") or "" for _, r in _jsonl(queries_file) if (q := _record_id(r, queries_file)) in qrels}
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise BadInputError(f"{len(missing)} judged queries are missing from queries.jsonl (first: {missing[0]})")
    return BeirDataset(name=dataset_dir.name, documents=documents, queries=queries, qrels=qrels)


def beir_settings(settings: Settings, index_dir: Path) -> Settings:
    """BEIR text is already clean prose: cleaning off (it would only risk dropping judged text)."""
    return settings.model_copy(
        update={
            "cleaning": settings.cleaning.model_copy(update={"enabled": False}),
            "index": settings.index.model_copy(update={"dir": index_dir}),
        }
    )


def build_beir_index(service: RagService, dataset: BeirDataset, progress: Progress | None = None) -> IndexReport:
    """Index the corpus into the service's index dir; vectors of unchanged passages are reused."""
    embed_progress = (lambda done, total: progress("embed", done, total)) if progress else None
    return service.update(documents=dataset.documents, progress=embed_progress)


class QueryVectors:
    """The embedder as the Retriever sees it, with every benchmark query embedded in one batch
    up front: one-at-a-time query encoding dominated evaluation time (about 1 s a query on a
    busy 2-core machine) and each query is searched several times."""

    def __init__(self, embedder: Embedder, queries: Iterable[str]):
        self.embedder = embedder
        texts = list(dict.fromkeys(q.strip() for q in queries))
        self.vectors = dict(zip(texts, embedder.encode(texts)))

    def encode_query(self, query: str) -> np.ndarray:
        vector = self.vectors.get(query)
        return self.embedder.encode_query(query) if vector is None else vector


def run_queries(
    retriever: Retriever,
    queries: dict[str, str],
    mode: SearchMode,
    passages: int,
    k: int,
    progress: Progress | None = None,
    stage: str = "search",
) -> dict[str, dict[str, float]]:
    """Top-k documents per query from the first `passages` search results, each document
    ranked by its best passage (MaxP)."""
    run: dict[str, dict[str, float]] = {}
    for done, (query_id, text) in enumerate(queries.items(), start=1):
        ranked: dict[str, None] = {}  # insertion-ordered set
        for hit in retriever.search(text, k=passages, mode=mode).results:
            ranked.update(dict.fromkeys([hit.doc_id, *(loc.doc_id for loc in hit.also_in)]))
        # Scores from the rank order: ranx sorts by score, and copies of one passage must not tie.
        run[query_id] = {doc_id: float(k - rank) for rank, doc_id in enumerate(list(ranked)[:k])}
        if progress:
            progress(f"{stage}:{mode}", done, len(queries))
    return run


def score_run(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], metrics: list[str]
) -> dict[str, float]:
    """Means over every judged query (ranx metric names, e.g. "ndcg@10")."""
    from ranx import Qrels, Run, evaluate

    # ranx rejects empty rankings; a query with no results scores 0 on every metric anyway.
    scored = {q: docs for q, docs in run.items() if docs}
    if not scored:
        return dict.fromkeys(metrics, 0.0)
    # make_comparable adds the judged queries missing from the run, so means are over all of them.
    means = evaluate(Qrels(qrels), Run(scored), metrics, make_comparable=True)
    if not isinstance(means, dict):  # ranx returns a bare number for a single metric
        means = {metrics[0]: means}
    return {metric: float(means[metric]) for metric in metrics}


def evaluate_modes(
    service: RagService,
    dataset: BeirDataset,
    modes: Iterable[SearchMode] = SEARCH_MODES,
    k: int = 100,
    progress: Progress | None = None,
) -> dict[str, dict[str, float]]:
    """Per mode: nDCG@10, Recall@10 and MRR@10 of the ranking a user gets (the service's own candidate
    depth), and Recall@k of a search deep enough that k documents are reachable despite
    multi-passage ones. One deep search would do for both, but deeper candidate lists change
    hybrid's top ranks."""
    modes = tuple(modes)
    store = service.store
    embedder = QueryVectors(service.embedder, dataset.queries.values()) if set(modes) - {"bm25"} else service.embedder
    retriever = Retriever(store, embedder, service.settings)  # type: ignore[arg-type]  # duck-typed embedder
    head_depth = max(10, service.settings.retrieval.candidates)
    deep_depth = k * max(1, math.ceil(store.distinct_chunks / max(1, len(store.documents))))
    results = {}
    for mode in modes:
        head = run_queries(retriever, dataset.queries, mode, head_depth, k, progress)
        deep = (
            head
            if deep_depth <= head_depth
            else run_queries(retriever, dataset.queries, mode, deep_depth, k, progress, stage="search-deep")
        )
        scores = score_run(dataset.qrels, head, ["ndcg@10", "recall@10", "mrr@10"]) | score_run(
            dataset.qrels, deep, [f"recall@{k}"]
        )
        results[mode] = {
            "nDCG@10": scores["ndcg@10"],
            "Recall@10": scores["recall@10"],
            f"Recall@{k}": scores[f"recall@{k}"],
            "MRR@10": scores["mrr@10"],
        }
    return results


def evaluate_beir(
    dataset_dir: Path,
    settings: Settings,
    modes: Iterable[SearchMode] = SEARCH_MODES,
    k: int = 100,
    split: str = "test",
    index_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, dict[str, float]]:
    """{mode: {"nDCG@10", "Recall@10", "Recall@<k>", "MRR@10"}} over the judged queries of `split`.

    The index persists in `index_dir` (default: `<settings.index.dir>/beir/<dataset>`, apart
    from the live index), so a second run embeds nothing."""
    dataset = load_beir(Path(dataset_dir), split)
    index_dir = index_dir or settings.index.dir / "beir" / dataset.name
    service = RagService(beir_settings(settings, index_dir))
    build_beir_index(service, dataset, progress)
    return evaluate_modes(service, dataset, modes, k, progress)
