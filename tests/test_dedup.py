from rag.dedup import group_duplicates
from rag.schema import Chunk

BASE = (
    "The provincial armed forces deployed more than 22,700 personnel and 800 vehicles to remedy "
    "disaster consequences and quickly stabilize people's lives in the affected districts this year."
)


def chunk(doc_id: str, start: int, text: str) -> Chunk:
    return Chunk(chunk_id=f"{doc_id}:{start}-{start + len(text)}", doc_id=doc_id, start=start, end=start + len(text), text=text)


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
