"""The index in a Milvus server (or a Milvus Lite file): `store.backend = "milvus"`."""
