"""Updates that cost what changed: the incremental cleaning statistics and near-copy groups
agree with a fresh computation, and an index updated document by document equals one built
from scratch on the final corpus."""

from __future__ import annotations

import shutil

import pytest
from conftest import SEEDS, make_service, make_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.config import CleaningSettings
from rag.ingest.arrays import Part
from rag.ingest.cleaning import document_lines, repeated_lines
from rag.ingest.dedup import group_duplicates
from rag.ingest.incremental import ChunkSketches, LineStats
from rag.schema import Chunk, Document
from rag.stores.faiss_bm25 import store
from rag.stores.faiss_bm25.store import read_index

# A small pool, so that lines recur across documents and some documents share most lines.
POOL = [
    "Share this article",
    "Comment (0)",
    "Recent news",
    "The border guard patrols the coast every night.",
    "Engineers installed forty-two solar panels.",
    "Home | About | Contact",
    "Copyright 2025 Example News",
    "A long line " + "with many words " * 10,
    "Fishing boats returned before the storm.",
    "The festival drew thousands of visitors.",
]


def doc(doc_id: str, lines: list[int]) -> Document:
    text = "\n".join(POOL[i] for i in lines)
    return Document(doc_id=doc_id, path=doc_id, root="/", text=text, sha256=str(hash(text)))


# Each operation: a document number, its lines, and whether the changes are folded into the arrays after it.
operations = st.lists(
    st.tuples(st.integers(0, 7), st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=6), st.booleans()),
    min_size=1,
    max_size=25,
)


def fold(parts: list[Part]) -> None:
    for part in parts:
        part.compact()


@settings(max_examples=60, deadline=None)
@given(operations, st.integers(1, 3))
def test_line_statistics_kept_incrementally_equal_a_fresh_count(ops, min_docs) -> None:
    cleaning = CleaningSettings(repeated_line_min_docs=min_docs, repeated_line_max_words=8)
    stats = LineStats(min_docs, 8)
    docs: dict[str, Document] = {}
    for n, lines, folded in ops:
        doc_id = f"d{n}"
        before = {d: stats.boilerplate_of(docs[d]) for d in docs}
        # An empty line list stands for removal, half of the time.
        if doc_id in docs and len(lines) == 1 and lines[0] % 2:
            del docs[doc_id]
            recleaned = stats.update([doc_id], [])
        else:
            docs[doc_id] = doc(doc_id, lines)
            recleaned = stats.update([doc_id] if doc_id in before else [], [docs[doc_id]])
        if folded:
            fold(stats.parts())
        fresh = repeated_lines(list(docs.values()), cleaning)
        every_line = {line for d in docs.values() for line in document_lines(d)}
        assert {line for line in every_line if stats.is_repeated(line)} == fresh
        # Every document whose boilerplate changed, other than the one updated, is named.
        changed = {d for d in before if d in docs and d != doc_id and before[d] != stats.boilerplate_of(docs[d])}
        assert changed <= recleaned


BASE = "the provincial armed forces deployed more than personnel and vehicles to remedy disaster consequences"
VARIANTS = [
    BASE,
    BASE + " today",
    BASE.replace("more", "many"),
    "training drills exercises and combat readiness at all levels of command",
    "a completely different paragraph about fishing boats and storms near the coast",
]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.lists(st.integers(0, len(VARIANTS) - 1), max_size=3), st.booleans()),
        min_size=1,
        max_size=15,
    )
)
def test_near_copy_groups_kept_incrementally_equal_a_fresh_grouping(ops) -> None:
    sketches = ChunkSketches(0.8, 128)
    grouped: dict[str, Chunk] = {}
    by_doc: dict[str, list[Chunk]] = {}
    for n, variants, folded in ops:
        doc_id = f"d{n}"
        new = [
            Chunk(
                chunk_id=f"{doc_id}:{i * 1000}-{i * 1000 + len(VARIANTS[v])}",
                doc_id=doc_id,
                start=i * 1000,
                end=i * 1000 + len(VARIANTS[v]),
                text=VARIANTS[v],
            )
            for i, v in enumerate(variants)
        ]
        old = by_doc.pop(doc_id, [])
        by_doc[doc_id] = new
        component = sketches.update([c.chunk_id for c in old], new)
        if folded:
            fold(sketches.parts())
        for c in old:
            grouped.pop(c.chunk_id, None)
        current = {c.chunk_id: c for chunks in by_doc.values() for c in chunks}
        regrouped = group_duplicates([current[i] for i in component], 0.8, 128, sketches.signatures)
        grouped.update({c.chunk_id: c for c in regrouped})
        fresh = group_duplicates(list(current.values()), 0.8, 128)
        assert [grouped[c.chunk_id] for c in fresh] == fresh


# --------------------------------------------------------------------------- the real index

# A sentence that reads as content in one page and is site furniture once a second page has it:
# adding harbour.txt must clean and chunk lighthouse.txt again.
FURNITURE = "Subscribe to our weekly letter to receive the latest reports about the province, its coast guard and the fishing fleet."
NEW_DOCS = {
    "lighthouse.txt": "\n\n".join(
        [
            "Hòn Dấu lighthouse",
            "The lighthouse keeper of Hòn Dấu island reported that the new solar panels now supply all of the station's power.",
            "Engineers installed forty-two panels during the dry season of 2025, and the diesel generator is kept only as a reserve.",
            FURNITURE,
            "The keeper said that the batteries last for three cloudy days before the generator has to be started again.",
        ]
    )
    + "\n",
    "harbour.txt": "\n\n".join(
        [
            "Harbour news",
            "Fishing boats returned to the harbour before the storm, and the border guard helped fishermen secure their vessels.",
            "The harbour master counted more than two hundred boats sheltering behind the breakwater on Tuesday night.",
            FURNITURE,
            "No injuries were reported, although several nets and two small wooden boats were lost to the waves.",
        ]
    )
    + "\n",
}
QUERIES = [
    "solar panels lighthouse",
    "border guard fishermen storm",
    "How many commune-level military party cells were established?",
    "22,700 personnel and 800 vehicles",
]


def snapshot(service) -> dict:
    data = read_index(service.settings.index.dir)
    hits = {
        (query, mode): service.search(query, k=10, mode=mode).results
        for query in QUERIES
        for mode in ("hybrid", "dense", "bm25")
    }
    results = {key: [(h.chunk_id, [loc.chunk_id for loc in h.also_in]) for h in found] for key, found in hits.items()}
    scores = [h.score for found in hits.values() for h in found]
    documents = {d: doc.model_dump(exclude={"mtime_ns"}) for d, doc in data.documents.items()}
    return {
        "chunks": sorted(c.model_dump_json() for c in data.chunks),
        "documents": documents,
        "results": results,
        "scores": scores,
        "counts": (data.manifest.documents, data.manifest.chunks, data.manifest.canonical_chunks),
    }


@pytest.mark.slow
@pytest.mark.parametrize("max_segments", [2, store.MAX_SEGMENTS], ids=["merging", "default"])
def test_an_index_updated_document_by_document_equals_a_fresh_build(
    tmp_path, embedder, monkeypatch, max_segments
) -> None:
    monkeypatch.setattr(store, "MAX_SEGMENTS", max_segments)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    service = make_service(make_settings(tmp_path / "updated", corpus), embedder)
    seeds = sorted(SEEDS.iterdir())
    for path in seeds:  # one upload at a time
        shutil.copy(path, corpus / path.name)
        report = service.update(paths=[corpus])
        assert report.added == [path.name]
    for name, text in NEW_DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
        report = service.update(paths=[corpus])
        # Only new passages: the new page's, and lighthouse.txt's once harbour.txt makes its
        # FURNITURE line boilerplate (two passages of each).
        assert report.added == [name] and report.embedded <= 4
    assert not any(FURNITURE in c.text for c in read_index(tmp_path / "updated").chunks)
    edited = corpus / seeds[2].name
    edited.write_text(edited.read_text(encoding="utf-8").replace("Party", "party"), encoding="utf-8")
    assert service.update(paths=[corpus]).updated == [seeds[2].name]
    (corpus / seeds[0].name).unlink()
    assert service.update(paths=[corpus]).removed == [seeds[0].name]
    service.update(remove=["harbour.txt"])
    (corpus / "harbour.txt").unlink()
    segments = read_index(tmp_path / "updated").manifest.segments
    # Each update wrote one segment; they merge past the limit (or when many rows are deleted).
    assert len(segments) <= max_segments + 1

    fresh = make_service(make_settings(tmp_path / "fresh", corpus), embedder)
    fresh.update(paths=[corpus])
    updated, built = snapshot(service), snapshot(fresh)
    # Vectors embedded in other batches differ in the last float bits: scores within 1e-5.
    assert updated.pop("scores") == pytest.approx(built.pop("scores"), abs=1e-5)
    assert updated == built
