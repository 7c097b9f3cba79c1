"""`rag index --cluster`: the ingest stages on a Dask cluster (`pip install cited-rag[cluster]`).

The same stage functions as the local pipeline run as Dask tasks over batches of documents or
passages; the steps that need the whole corpus run once, on the client, between them:

  documents -> normalised lines per document (tasks) -> repeated lines (global)
            -> clean + chunk per document (tasks)
            -> MinHash signature per passage (tasks) -> near-copy groups (global)
            -> embeddings (tasks, on workers holding the model: `EmbedderPlugin`)

`rag.ingest.pipeline.update_index` still decides what changed and hands the store its
`Changes`, so the index equals the local one and reuses stored vectors the same way. Tasks are
pure functions of their arguments (the model is the only worker state, and a plugin rebuilds it
on any worker), so Dask reruns the tasks of a worker that dies on the others. An error aborts
the run before the store applies anything: the previous index stays as it was."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from rag.config import EmbeddingSettings, Settings
from rag.errors import RagError
from rag.ingest.cleaning import document_blocks, document_lines, repeated_among
from rag.ingest.dedup import _shingles, group_duplicates
from rag.ingest.pipeline import EmbedProgress, IndexReport, document_chunks, update_index
from rag.schema import Chunk, Document

if TYPE_CHECKING:
    from distributed import Client, Future

try:
    from distributed import WorkerPlugin
except ImportError:  # the extra is missing: `cluster_client` says how to install it
    WorkerPlugin = object  # type: ignore[assignment,misc]

INSTALL_HINT = "rag index --cluster needs Dask: pip install cited-rag[cluster]"

T = TypeVar("T")


@contextmanager
def cluster_client(settings: Settings) -> Iterator[Client]:
    """A client of the scheduler at `ingest.scheduler_address`, or of a local cluster of worker
    processes bound to 127.0.0.1, started for the run and stopped after it."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise RagError(INSTALL_HINT) from None
    # Dask narrates start, stop and retries at INFO and WARNING (a worker killed at a normal
    # shutdown included); a user sees errors only, as exceptions of the run.
    dask_log = logging.getLogger("distributed")
    level = dask_log.level
    dask_log.setLevel(logging.ERROR)
    try:
        with _client(settings) as client:
            yield client
    finally:
        dask_log.setLevel(level)


@contextmanager
def _client(settings: Settings) -> Iterator[Client]:
    from distributed import Client, LocalCluster

    ingest = settings.ingest
    if ingest.scheduler_address:
        try:
            client = Client(ingest.scheduler_address, timeout="30s")
        except OSError as exc:
            raise RagError(f"cannot reach the Dask scheduler at {ingest.scheduler_address}: {exc}") from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            host="127.0.0.1",
            dashboard_address=None,
            n_workers=ingest.local_workers,
            threads_per_worker=ingest.local_threads_per_worker,
            processes=True,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def update_index_on_cluster(
    settings: Settings,
    paths: list[Path] | None = None,
    remove: list[str] | None = None,
    rebuild: bool = False,
    progress: EmbedProgress | None = None,
    documents: list[Document] | None = None,
    engine: DaskEngine | None = None,
) -> IndexReport:
    """`update_index` with its stages on the cluster of `settings.ingest` (or on `engine`'s)."""
    if engine is not None:
        return update_index(
            settings,
            paths=paths,
            remove=remove,
            rebuild=rebuild,
            progress=progress,
            documents=documents,
            embedder_factory=engine.embedder,
            engine=engine,
        )
    with cluster_client(settings) as client:
        return update_index_on_cluster(
            settings, paths, remove, rebuild, progress, documents, DaskEngine(client, settings)
        )


def _batches(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# Tasks: pure functions of their arguments, so Dask may run each on any worker, or twice.


def _lines_task(docs: list[Document]) -> dict[str, set[str]]:
    # PDF and Word documents come with their reader's blocks: no part of the page statistics.
    return {doc.doc_id: document_lines(doc) for doc in docs if doc.blocks is None}


def _chunks_task(docs: list[Document], boilerplate: set[str], settings: Settings) -> list[tuple[Document, list[Chunk]]]:
    return [document_chunks(doc, document_blocks(doc, boilerplate, settings.cleaning), settings) for doc in docs]


def _signatures_task(chunks: list[Chunk], num_perm: int) -> dict[str, object]:
    from datasketch import MinHash

    signatures = MinHash.bulk([_shingles(c.text) for c in chunks], num_perm=num_perm)
    return {c.chunk_id: s for c, s in zip(chunks, signatures)}


def _embed_task(texts: list[str], plugin_name: str) -> np.ndarray:
    from distributed import get_worker

    return get_worker().plugins[plugin_name].embedder.encode(texts)


class EmbedderPlugin(WorkerPlugin):
    """Loads the embedding model once per worker, on every worker that joins, even later."""

    idempotent = True  # registered again by a later run with the same settings: keep the loaded model

    def __init__(self, settings: EmbeddingSettings):
        self.settings = settings
        self.embedder = None

    def setup(self, worker) -> None:
        from rag.embed.encoder import Embedder

        self.embedder = Embedder(self.settings)


def plugin_name(settings: EmbeddingSettings) -> str:
    """One plugin per embedding configuration, so runs with other settings do not share a model."""
    return "cited-rag-embedder-" + hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:12]


class DaskEngine:
    """The ingest stages as Dask tasks (see the module docstring); `seconds` times each step,
    the global ones apart."""

    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings
        self.seconds: dict[str, float] = {}
        self._timer = time.perf_counter()

    def _time(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - self._timer
        self._timer = now

    def _run(self, futures: list[Future], done: Callable[[int], None] | None = None) -> list:
        """The results in submission order; `done(i)` as each future completes. Any failed task
        raises here, after Dask's own retries of tasks lost with a worker."""
        from distributed import as_completed

        results: list = [None] * len(futures)
        position = {future.key: i for i, future in enumerate(futures)}
        for future, result in as_completed(futures, with_results=True):
            i = position[future.key]
            results[i] = result
            if done:
                done(i)
        return results

    def chunks(self, docs: MutableMapping[str, Document], settings: Settings) -> list[Chunk]:
        size = settings.ingest.task_size
        self._timer = time.perf_counter()
        batches = self.client.scatter(_batches([docs[d] for d in sorted(docs)], size))
        self._time("scatter")
        boilerplate: set[str] = set()
        if settings.cleaning.enabled:
            doc_lines: dict[str, set[str]] = {}
            for part in self._run(self.client.map(_lines_task, batches)):
                doc_lines.update(part)
            self._time("lines")
            boilerplate = repeated_among(doc_lines, settings.cleaning)
            self._time("repeated_lines (global)")
        [shared] = self.client.scatter([boilerplate], broadcast=True)
        chunks: list[Chunk] = []
        for part in self._run(self.client.map(_chunks_task, batches, boilerplate=shared, settings=settings)):
            for doc, doc_chunks in part:
                docs[doc.doc_id] = doc
                chunks.extend(doc_chunks)
        self._time("clean_chunk")
        return chunks

    def group(self, chunks: list[Chunk], settings: Settings) -> list[Chunk]:
        num_perm = settings.index.dedup_num_perm
        self._timer = time.perf_counter()
        signatures: dict = {}
        futures = self.client.map(_signatures_task, _batches(chunks, settings.ingest.task_size), num_perm=num_perm)
        for part in self._run(futures):
            signatures.update(part)
        self._time("signatures")
        grouped = group_duplicates(chunks, settings.index.dedup_threshold, num_perm, known=signatures)
        self._time("dedup grouping (global)")
        return grouped

    def embedder(self) -> ClusterEmbedder:
        """The `embedder_factory` of `update_index`: called only when there are texts to embed."""
        return ClusterEmbedder(self)


class ClusterEmbedder:
    """Embeds on the workers, in tasks of `ingest.task_size` texts; what the pipeline asks of
    an `Embedder` (`dimension`, `encode`)."""

    def __init__(self, engine: DaskEngine):
        self.engine = engine
        settings = engine.settings
        self.name = plugin_name(settings.embedding)
        engine.client.register_plugin(EmbedderPlugin(settings.embedding), name=self.name)
        resource = settings.ingest.worker_resources
        self.resources = {resource: 1} if resource else None
        self.dimension = int(self._submit([["dimension"]])[0].result().shape[1])

    def _submit(self, batches: list[list[str]]) -> list[Future]:
        return [
            self.engine.client.submit(_embed_task, batch, self.name, resources=self.resources, pure=False)
            for batch in batches
        ]

    def encode(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Unit-length float32 vectors in the order of `texts`; `progress(n)` as tasks finish."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        self.engine._timer = time.perf_counter()
        # Longest first, as the local embedder orders them, so each task's batches pad alike.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        slices = _batches(order, self.engine.settings.ingest.task_size)
        futures = self._submit([[texts[i] for i in rows] for rows in slices])
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        done = (lambda i: progress(len(slices[i]))) if progress else None
        for rows, vectors in zip(slices, self.engine._run(futures, done)):
            out[rows] = vectors
        self.engine._time("embed")
        return out
