"""Where the index lives, chosen by `store.backend`: `open_store` for reading, `open_writer`
for one update."""

from __future__ import annotations

from contextlib import AbstractContextManager

from rag.config import Settings
from rag.stores.base import Store, StoreWriter


def open_store(settings: Settings) -> Store:
    """The index the settings name, refused when they would build it otherwise."""
    from rag.embed.encoder import embedding_fingerprint

    fingerprint = embedding_fingerprint(settings.embedding)
    if settings.store.backend == "milvus":
        from rag.stores.milvus.store import open_milvus_store

        return open_milvus_store(settings, fingerprint)
    from rag.stores.faiss_bm25.store import open_store as open_files

    return open_files(settings, fingerprint)


def open_writer(settings: Settings, verify: bool = False) -> AbstractContextManager[StoreWriter]:
    """The index the settings name, opened for one update (under its writer lock); `verify`:
    check every stored chunk first (a store that reads chunks lazily checks them as read)."""
    if settings.store.backend == "milvus":
        from rag.stores.milvus.store import open_milvus_writer

        return open_milvus_writer(settings)
    from rag.stores.faiss_bm25.store import open_writer as open_files_writer

    return open_files_writer(settings.index.dir, settings.index, verify)
