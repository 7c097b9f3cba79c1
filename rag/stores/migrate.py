"""`rag migrate`: copy the index from one store to the other (the files in `index.dir` to
Milvus, or back), vectors included, so nothing is embedded again. The copy replaces whatever
the target held; the source is left as it was."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rag.config import Settings
from rag.embed.encoder import embedding_key
from rag.errors import IndexDamagedError, IndexMissingError
from rag.stores import open_writer
from rag.stores.base import Changes, DocumentRows, Manifest, StoreWriter, embedding_text
from rag.stores.faiss_bm25.store import POINTER


@dataclass
class MigrateReport:
    source: str
    target: str
    documents: int
    chunks: int


def backend_settings(settings: Settings, backend: str) -> Settings:
    """`settings` with `store.backend` set to `backend`."""
    return settings.replace(store={"backend": backend})


def location(settings: Settings) -> str:
    if settings.store.backend == "milvus":
        from rag.stores.milvus.connection import where

        return where(settings.store)
    return f"{settings.index.dir}/"


def _rows(source: StoreWriter, manifest: Manifest, where: str) -> list[DocumentRows]:
    """Every stored document with its chunks, their lexical texts, vectors and keys."""
    rows = []
    for doc_id, doc in source.documents.items():
        chunks = source.chunks_of(doc_id)
        texts = [embedding_text(chunk, doc, manifest.include_title) for chunk in chunks]
        keys = [embedding_key(manifest.embedding_fingerprint, text) for text in texts]
        stored = source.vectors_for(keys)
        if len(stored) != len(set(keys)):
            raise IndexDamagedError(
                where, [f"{len(set(keys)) - len(stored)} passage(s) of {doc_id} have no stored vector"]
            )
        vectors = np.array([stored[key] for key in keys], dtype=np.float32).reshape(len(keys), manifest.dimension)
        rows.append(DocumentRows(document=doc, chunks=chunks, texts=texts, vectors=vectors, embedding_keys=keys))
    return rows


def migrate(settings: Settings, to: str) -> MigrateReport:
    """Copy the index of the other backend into the `to` backend ("faiss" or "milvus")."""
    source_settings = backend_settings(settings, "milvus" if to == "faiss" else "faiss")
    target_settings = backend_settings(settings, to)
    if to == "milvus" and not (settings.index.dir / POINTER).is_file():
        raise IndexMissingError(f"no index in {location(source_settings)} to copy: run `rag index` first")
    with open_writer(source_settings) as source:
        if source.problems:
            raise IndexDamagedError(location(source_settings), source.problems)
        if source.manifest is None:
            raise IndexMissingError(f"no index in {location(source_settings)} to copy: run `rag index` first")
        # The store-neutral manifest (the embedded store's adds its own format and files).
        manifest = Manifest.model_validate(source.manifest.model_dump(include=set(Manifest.model_fields)))
        rows = _rows(source, manifest, location(source_settings))
    with open_writer(target_settings) as target:
        target.apply(Changes(upserted=rows, manifest=manifest, replace_all=True))
    return MigrateReport(
        source=location(source_settings),
        target=location(target_settings),
        documents=len(rows),
        chunks=sum(len(r.chunks) for r in rows),
    )
