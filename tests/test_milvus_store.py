"""The store contract, run against both backends: the embedded FAISS + bm25s files and Milvus
(a real `milvus-lite server` over gRPC on loopback). Offsets, filters, incremental updates
without stale rows, near-copies, manifest refusal; then Milvus's own failures."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import make_service, make_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pymilvus.exceptions import MilvusException

from rag.config import SEARCH_MODES, Settings
from rag.errors import IncompatibleIndexError, StoreSettingsError, StoreUnavailableError
from rag.service import RagService
from rag.stores.milvus.connection import PLACEHOLDER, milvus_errors, one_of

pytestmark = pytest.mark.slow

MODES = SEARCH_MODES


def paragraph(topic: str, detail: str) -> str:
    """A paragraph of 30+ words, so that chunking keeps it as one passage."""
    return (
        f"The {topic} is described in the records of the regional archive. {detail} "
        f"Visitors who come to see the {topic} are told the same story by every guide, and the "
        f"local school teaches it to children in their third year."
    )


SHARED = paragraph("Varnholm lighthouse", "It was automated in 1987 after ninety years of keepers living on the cape.")
FILES = {
    "lighthouse.txt": "Lighthouses of the north\n\n"
    + SHARED
    + "\n\n"
    + paragraph("keeper's cottage", "Its roof was rebuilt with slate from the Brennick quarry in 1911."),
    "bees.md": "# Bees\n\n"
    + paragraph("apiary of Kestwick", "Its forty hives produce heather honey every August.")
    + "\n\n"
    + paragraph("queen rearing shed", "Swarms are caught in straw skeps hung beneath the eaves."),
    "copy.txt": "Reprinted notes\n\n"
    + SHARED
    + "\n\n"
    + paragraph("harbour crane", "A steam crane of 1893 still lifts the ferry gangway on festival days."),
}


def write_corpus(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def settings_for(
    backend: str, tmp_path: Path, corpus: Path, request: pytest.FixtureRequest, collection: str | None = None
) -> Settings:
    settings = make_settings(tmp_path / f"index-{uuid.uuid4().hex[:6]}", corpus)
    if backend == "milvus":
        server = request.getfixturevalue("milvus_server")
        settings = settings.replace(
            store={"backend": "milvus", "uri": server.uri, "collection": collection or f"t_{uuid.uuid4().hex[:12]}"}
        )
    return settings


@pytest.fixture(params=["faiss", "milvus"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", FILES)


def indexed(backend: str, tmp_path: Path, corpus: Path, request, embedder) -> RagService:
    service = make_service(settings_for(backend, tmp_path, corpus, request), embedder)
    service.update(paths=[corpus])
    return service


def test_results_reproduce_their_offsets_in_every_mode_and_honour_filters(
    backend, tmp_path, corpus, request, embedder
) -> None:
    service = indexed(backend, tmp_path, corpus, request, embedder)
    assert sorted(service.store.documents) == sorted(FILES)
    for mode in MODES:
        hits = service.search("When was the Varnholm lighthouse automated?", k=5, mode=mode).results
        assert hits and "1987" in hits[0].text, mode
        for hit in hits:
            assert service.document(hit.doc_id).text[hit.start : hit.end] == hit.text
        only = service.search("lighthouse automated honey", k=5, mode=mode, doc_ids=["bees.md"]).results
        assert only and {h.doc_id for h in only} == {"bees.md"}, mode
    assert service.document("bees.md").text == FILES["bees.md"]


def test_near_copies_are_searchable_and_shown_once(backend, tmp_path, corpus, request, embedder) -> None:
    service = indexed(backend, tmp_path, corpus, request, embedder)
    counts = {info.doc_id: (info.chunks, info.duplicate_chunks) for info in service.documents()}
    # The first copy in (doc_id, start) order stands for the group.
    assert counts["lighthouse.txt"][1] == 1 and counts["copy.txt"][1] == 0
    assert service.store.distinct_chunks == service.store.chunk_total - 1
    hits = service.search("Varnholm lighthouse automated 1987", k=5, mode="bm25").results
    assert sum("1987" in h.text for h in hits) == 1
    top = next(h for h in hits if "1987" in h.text)
    assert {loc.doc_id for loc in top.also_in} == {"lighthouse.txt", "copy.txt"} - {top.doc_id}


def results(service: RagService, query: str) -> dict[str, list[tuple[str, int, int]]]:
    return {
        mode: [(h.chunk_id, h.start, h.end) for h in service.search(query, k=10, mode=mode).results] for mode in MODES
    }


def test_incremental_updates_equal_a_fresh_build_with_no_stale_rows(
    backend, tmp_path, corpus, request, embedder
) -> None:
    service = indexed(backend, tmp_path, corpus, request, embedder)
    (corpus / "bees.md").write_text(
        "# Bees\n\n" + paragraph("apiary of Kestwick", "A zeppelin once landed beside its hives.")
    )
    (corpus / "copy.txt").unlink()
    (corpus / "ferry.txt").write_text(paragraph("night ferry to Osterby", "It sails at midnight with the mail sacks."))
    report = service.update(paths=[corpus])
    assert (report.added, report.updated, report.removed) == (["ferry.txt"], ["bees.md"], ["copy.txt"])
    assert report.reused_vectors >= 2 and report.embedded <= 2

    assert sorted(service.store.documents) == ["bees.md", "ferry.txt", "lighthouse.txt"]
    counts = service.store.chunk_counts()
    assert service.store.chunk_total == sum(c.chunks for c in counts.values())
    assert counts["lighthouse.txt"].duplicates == 0  # its copy is gone
    for mode in MODES:
        assert all(
            h.doc_id != "copy.txt" for h in service.search("harbour steam crane gangway", k=10, mode=mode).results
        )
    assert not service.search("straw skeps swarms eaves", k=10, mode="bm25").results  # the old paragraph of bees.md
    assert service.search("zeppelin", k=1, mode="bm25").results[0].doc_id == "bees.md"

    fresh = make_service(settings_for(backend, tmp_path, corpus, request), embedder)
    fresh.update(paths=[corpus])
    for query in ("Varnholm lighthouse automated", "heather honey hives zeppelin", "midnight ferry mail"):
        assert results(service, query) == results(fresh, query), query


def test_an_index_built_otherwise_is_refused_and_rebuilt(backend, tmp_path, corpus, request, embedder) -> None:
    service = indexed(backend, tmp_path, corpus, request, embedder)
    other = service.settings.replace(chunking={"target_words": 60, "max_words": 90, "min_words": 10})
    changed = make_service(other, embedder)
    with pytest.raises(
        IncompatibleIndexError, match=r"was built with other chunking settings: run `rag index` to rebuild it"
    ):
        changed.search("lighthouse", k=1)
    report = changed.update(paths=[corpus], rebuild=True)
    assert report.written and "--rebuild" in report.rebuilt_because
    assert changed.search("lighthouse automated", k=1).results[0].text.count("1987") == 1


def test_the_backends_rank_alike(tmp_path, corpus, request, embedder) -> None:
    files = indexed("faiss", tmp_path, corpus, request, embedder)
    milvus = indexed("milvus", tmp_path, corpus, request, embedder)
    for query in ("When was the lighthouse automated?", "heather honey", "steam crane ferry gangway"):
        for mode in MODES:
            a, b = files.search(query, k=4, mode=mode).results, milvus.search(query, k=4, mode=mode).results
            assert [h.chunk_id for h in a] == [h.chunk_id for h in b], (query, mode)
            assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-3), (query, mode)


def test_a_missing_collection_and_an_unreachable_server_are_one_line_errors(
    tmp_path, corpus, request, embedder
) -> None:
    service = make_service(settings_for("milvus", tmp_path, corpus, request, collection="never_built"), embedder)
    with pytest.raises(
        Exception,
        match=r"^no index in Milvus collection never_built at http://127\.0\.0\.1:\d+ yet: run `rag index` first$",
    ):
        service.search("lighthouse")
    settings = settings_for("milvus", tmp_path, corpus, request).replace(
        store={"uri": "http://127.0.0.1:9"}
    )  # nothing listens
    with pytest.raises(StoreUnavailableError, match=r"^cannot reach Milvus at http://127\.0\.0\.1:9 \(store\.uri\)"):
        make_service(settings, embedder).search("lighthouse")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("auth check failure, please check username and password are correct", StoreSettingsError),
        ("collection not loaded", StoreUnavailableError),
    ],
)
def test_refused_credentials_are_bad_settings_and_other_failures_a_failing_server(message, error) -> None:
    # Milvus Lite has no authentication, so Milvus's answer to a wrong token is made here.
    settings = Settings().store
    with pytest.raises(error) as caught, milvus_errors(settings):
        raise MilvusException(code=1800, message=message + "\nsecond line")
    assert "\n" not in str(caught.value) and settings.uri in str(caught.value)


def test_doctor_checks_the_milvus_index(tmp_path, corpus, request, embedder) -> None:
    from pymilvus import MilvusClient

    from rag.doctor import check_index

    service = indexed("milvus", tmp_path, corpus, request, embedder)
    healthy = check_index(service.settings)
    assert not healthy.problems and "documents" in healthy.detail and "Milvus collection" in healthy.detail
    store = service.settings.store
    client = MilvusClient(uri=store.uri)
    client.delete(f"{store.collection}_chunks", filter='doc_id == "bees.md"')
    client.close()
    problems = check_index(service.settings).problems
    assert problems and problems[0].endswith("the manifest says 3 and 6; run `rag index`")


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    names=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=30),
        min_size=1,
        max_size=4,
        unique=True,
    )
)
def test_filter_literals_match_exactly_the_names_given(milvus_filter_collection, names) -> None:
    """Doc ids are file names: quotes, backslashes and newlines in them must not break or widen a filter."""
    client, name = milvus_filter_collection
    client.delete(name, filter='doc_id != ""')
    client.insert(name, [{"doc_id": doc_id, "placeholder": PLACEHOLDER} for doc_id in [*names, "other"] if doc_id])
    found = client.query(name, filter=one_of("doc_id", names), output_fields=["doc_id"])
    assert sorted(r["doc_id"] for r in found) == sorted(names)


@pytest.fixture(scope="module")
def milvus_filter_collection(milvus_server):
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=milvus_server.uri)
    name = f"literals_{uuid.uuid4().hex[:8]}"
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("doc_id", DataType.VARCHAR, is_primary=True, max_length=1024)
    schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=len(PLACEHOLDER))
    index = client.prepare_index_params()
    index.add_index("placeholder", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    yield client, name
    client.drop_collection(name)
    client.close()
