import shutil

import pytest
from conftest import SEEDS, make_service, make_settings

from rag.ingest.dedup import group_duplicates
from rag.schema import Chunk

BASE = (
    "The provincial armed forces deployed more than 22,700 personnel and 800 vehicles to remedy "
    "disaster consequences and quickly stabilize people's lives in the affected districts this year."
)


def chunk(doc_id: str, start: int, text: str) -> Chunk:
    return Chunk(
        chunk_id=f"{doc_id}:{start}-{start + len(text)}", doc_id=doc_id, start=start, end=start + len(text), text=text
    )


def test_near_duplicates_fold_into_the_first_copy_and_record_locations() -> None:
    variant = BASE.replace("this year", "this year.")  # punctuation-level scrape difference
    other = "A completely different paragraph about training drills, exercises and combat readiness at all levels."
    chunks = [chunk("b.txt", 0, variant), chunk("a.txt", 100, BASE), chunk("a.txt", 0, other)]
    grouped = group_duplicates(chunks, threshold=0.8, num_perm=128)
    by_id = {c.chunk_id: c for c in grouped}
    canonical = by_id[f"a.txt:100-{100 + len(BASE)}"]
    copy = by_id[f"b.txt:0-{len(variant)}"]
    assert canonical.duplicate_of is None and copy.duplicate_of == canonical.chunk_id
    assert [loc.doc_id for loc in canonical.copies] == ["b.txt"]
    assert by_id[f"a.txt:0-{len(other)}"].duplicate_of is None
    assert [c.doc_id for c in grouped] == ["a.txt", "a.txt", "b.txt"]


def test_grouping_is_recomputed_from_scratch_each_time() -> None:
    chunks = [chunk("a.txt", 0, BASE), chunk("b.txt", 0, BASE)]
    once = group_duplicates(chunks, 0.8, 128)
    twice = group_duplicates(once, 0.8, 128)
    assert [len(c.copies) for c in twice] == [1, 0]


# --------------------------------------------------------------------------- nothing unsearchable

PAIR = "22,700 personnel and 800 vehicles"


@pytest.fixture(scope="module")
def variant_service(tmp_path_factory, embedder):
    """The seeds plus a third scrape of 001's article that differs in one word."""
    root = tmp_path_factory.mktemp("variant")
    shutil.copytree(SEEDS, root / "corpus")
    original = (SEEDS / "001_da832dcbec278d94.txt").read_text(encoding="utf-8")
    assert original.count("800 vehicles") == 1
    (root / "corpus" / "005_variant.txt").write_text(
        original.replace("800 vehicles", "800 zeppelins"), encoding="utf-8"
    )
    service = make_service(make_settings(root / "index", root / "corpus"), embedder)
    service.update(paths=[root / "corpus"])
    return service


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_seed_copies_collapse_into_one_result(seed_service, mode) -> None:
    hits = seed_service.search(PAIR, k=5, mode=mode).results
    holding = [h for h in hits if PAIR in h.text]
    assert len(holding) == 1, [h.doc_id for h in hits]
    others = {"001_da832dcbec278d94.txt", "003_254c39c735b64e9a.txt"} - {holding[0].doc_id}
    assert [a.doc_id for a in holding[0].also_in] == sorted(others)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hybrid", "bm25"])
def test_a_word_only_one_near_copy_holds_is_found(variant_service, mode) -> None:
    variant = next(c for c in variant_service.store.data.chunks if "zeppelins" in c.text)
    assert variant.duplicate_of is not None  # it is a near-copy of 001's paragraph
    hit = variant_service.search("zeppelins", k=3, mode=mode).results[0]
    assert hit.doc_id == "005_variant.txt" and "800 zeppelins" in hit.text
    assert {a.doc_id for a in hit.also_in} == {"001_da832dcbec278d94.txt", "003_254c39c735b64e9a.txt"}
    index = variant_service.store.data
    assert index.documents[hit.doc_id].text[hit.start : hit.end] == hit.text


@pytest.mark.slow
def test_near_copies_still_show_once(variant_service) -> None:
    hits = variant_service.search("personnel and vehicles deployed to remedy disaster consequences", k=5).results
    assert sum("22,700 personnel" in h.text for h in hits) == 1
