"""Talking to Milvus: the client, the collections' schemas, filter literals, and pymilvus
errors turned into the library's one-line errors."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice

import grpc
from pymilvus import DataType, Function, FunctionType, MilvusClient
from pymilvus.exceptions import ConnectionConfigException, MilvusException

from rag.config import StoreSettings
from rag.errors import StoreSettingsError, StoreUnavailableError

# pymilvus logs every failed call with its traceback on its own stderr handler; the failure
# reaches the user as one line through the errors below instead.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)

# Milvus's longest VARCHAR, in bytes of UTF-8. Longer document texts are stored in parts.
MAX_VARCHAR_BYTES = 65_535
# Characters per stored part of a document's text: 4 bytes of UTF-8 at most per character.
TEXT_PART_CHARS = MAX_VARCHAR_BYTES // 4
# Doc ids are file names (255 bytes at most); chunk ids add their offsets.
MAX_ID_BYTES = 1_024
# Milvus requires a vector field in every collection; documents and metadata carry this small
# constant one, never searched.
PLACEHOLDER_DIM = 2
PLACEHOLDER = [0.0] * PLACEHOLDER_DIM
# bm25s's defaults, the embedded store's BM25.
BM25_K1 = 1.5
BM25_B = 0.75
# pymilvus pings every 10 s, even between calls; a server with gRPC's default ping policy (Milvus
# Lite's) answers with GOAWAY "too_many_pings" and drops the connection, failing calls. Pinging
# during calls only, at most every 10 minutes, suits it and Milvus alike.
# When a call finds the server gone, pymilvus recovers by opening a fresh channel
# (GrpcHandler.reconnect); in gRPC's process-wide subchannel pool that channel would reuse the
# old connection, still waiting out its reconnect backoff (up to 2 minutes), and fail at once
# after the server is back. A channel's own pool makes the fresh channel really reconnect.
GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 600_000,
    "grpc.keepalive_permit_without_calls": False,
    "grpc.use_local_subchannel_pool": 1,
}
# Rows per insert, and ids per `in [...]` filter.
BATCH = 500


def collection_names(settings: StoreSettings) -> tuple[str, str, str]:
    """The chunks, documents and metadata collections."""
    return f"{settings.collection}_chunks", f"{settings.collection}_documents", f"{settings.collection}_meta"


def where(settings: StoreSettings) -> str:
    """The store as messages name it."""
    return f"Milvus collection {settings.collection} at {settings.uri}"


class CollectionReleasedError(StoreUnavailableError):
    """A collection the server holds but has not loaded (Milvus Lite releases every collection
    when it restarts): loading it again cures it."""


def first_line(exc: MilvusException) -> str:
    return (exc.message or type(exc).__name__).splitlines()[0]


@contextmanager
def milvus_errors(settings: StoreSettings) -> Iterator[None]:
    """pymilvus failures as one line: refused credentials are bad settings (exit 2), anything
    else a failing server (exit 1); both are 503 in the API."""
    try:
        yield
    except MilvusException as exc:
        message = first_line(exc)
        lowered = message.lower()
        if any(word in lowered for word in ("auth", "credential", "password", "token", "permission denied")):
            raise StoreSettingsError(f"{settings.uri} refused the credentials of store.token: {message}") from None
        if "released" in lowered or "not loaded" in lowered:
            raise CollectionReleasedError(f"Milvus at {settings.uri} failed: {message}") from None
        raise StoreUnavailableError(f"Milvus at {settings.uri} failed: {message}") from None
    except grpc.RpcError as exc:  # pymilvus passes some gRPC failures on unwrapped (a missed deadline)
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise StoreUnavailableError(
                f"Milvus at {settings.uri} did not answer within store.timeout_s ({settings.timeout_s:g} s)"
            ) from None
        raise StoreUnavailableError(
            f"Milvus at {settings.uri} failed: {code.name if code else type(exc).__name__}"
        ) from None


def connect(settings: StoreSettings) -> MilvusClient:
    """A client for `settings.uri`; a server that cannot be reached is a one-line error."""
    if not settings.uri.strip():
        raise StoreSettingsError("setting store.uri is empty: give http://host:19530 or a path ending in .db")
    try:
        return MilvusClient(
            uri=settings.uri, token=settings.token, timeout=settings.timeout_s, grpc_options=GRPC_OPTIONS
        )
    except ConnectionConfigException as exc:
        raise StoreSettingsError(f"setting store.uri {settings.uri!r} is not usable: {first_line(exc)}") from None
    except MilvusException as exc:
        raise StoreUnavailableError(f"cannot reach Milvus at {settings.uri} (store.uri): {first_line(exc)}") from None


def literal(value: str) -> str:
    """`value` as a string literal of a Milvus filter expression."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def one_of(field: str, values: list[str]) -> str:
    """A filter keeping rows whose `field` is one of `values`."""
    return f"{field} in [{', '.join(map(literal, values))}]"


def batches(items: Iterable, size: int = BATCH) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def create_collections(client: MilvusClient, settings: StoreSettings, dimension: int) -> None:
    """The three collections, indexed and loaded. Chunks: offsets, text, the lexical tokens
    that Milvus's BM25 function turns into a sparse vector, the dense vector, near-copy
    annotations and the embedding key (vectors are reused by it)."""
    chunks, documents, meta = collection_names(settings)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_ID_BYTES)
    schema.add_field("start", DataType.INT64)
    schema.add_field("end", DataType.INT64)
    # Empty when the chunk's text is over MAX_VARCHAR_BYTES: then it is read from its document.
    schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
    # The chunk's BM25 tokens (rag.text.words.tokenize: Snowball stems, no stop words) joined by
    # spaces, so that Milvus's standard analyzer finds exactly the embedded store's terms.
    schema.add_field(
        "lexical",
        DataType.VARCHAR,
        max_length=MAX_VARCHAR_BYTES,
        enable_analyzer=True,
        analyzer_params={"tokenizer": "standard"},
    )
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field("duplicate_of", DataType.VARCHAR, max_length=MAX_ID_BYTES)
    schema.add_field("copies", DataType.JSON)
    schema.add_field("embedding_key", DataType.VARCHAR, max_length=128)
    schema.add_function(
        Function(
            name="bm25", function_type=FunctionType.BM25, input_field_names=["lexical"], output_field_names=["sparse"]
        )
    )
    index = client.prepare_index_params()
    index.add_index("vector", index_type=settings.index_type, metric_type="IP", params=dict(settings.index_params))
    index.add_index(
        "sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25", params={"bm25_k1": BM25_K1, "bm25_b": BM25_B}
    )
    index.add_index("doc_id", index_type="INVERTED")
    index.add_index("embedding_key", index_type="INVERTED")
    client.create_collection(chunks, schema=schema, index_params=index, consistency_level="Strong")

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("part_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_ID_BYTES)
    schema.add_field("part", DataType.INT64)
    # The Document without its text, on part 0 (with the number of parts); {} on the others.
    schema.add_field("record", DataType.JSON)
    schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
    schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=PLACEHOLDER_DIM)
    index = client.prepare_index_params()
    index.add_index("placeholder", index_type="FLAT", metric_type="L2")
    index.add_index("doc_id", index_type="INVERTED")
    client.create_collection(documents, schema=schema, index_params=index, consistency_level="Strong")

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("value", DataType.JSON)
    schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=PLACEHOLDER_DIM)
    index = client.prepare_index_params()
    index.add_index("placeholder", index_type="FLAT", metric_type="L2")
    client.create_collection(meta, schema=schema, index_params=index, consistency_level="Strong")


def drop_collections(client: MilvusClient, settings: StoreSettings) -> None:
    for name in collection_names(settings):
        if client.has_collection(name):
            client.drop_collection(name)
