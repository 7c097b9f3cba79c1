"""An update costs what it changes: a one-document upload reads only the stored documents it
touches, a server keeps the ingest state in memory between updates, and the corpus
fingerprint moves by the changed documents alone (fast tier: a hashing embedder)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import SEEDS, make_service, make_settings
from fakes import HashEmbedder
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.errors import IndexDamagedError
from rag.ingest import incremental, pipeline
from rag.ingest.pipeline import corpus_fingerprint, updated_fingerprint
from rag.schema import Document
from rag.stores.faiss_bm25 import store as files_store
from rag.stores.faiss_bm25.segments import IndexData
from rag.stores.faiss_bm25.store import read_index

NEW_DOC = (
    "The lighthouse keeper of Hon Dau island reported that the new solar panels now supply all of the "
    "station's power. Engineers installed forty-two panels during the dry season, and the diesel "
    "generator is kept only as a reserve for long stretches of cloudy weather."
)


@pytest.fixture
def service(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(SEEDS, corpus)
    service = make_service(make_settings(tmp_path / "index", corpus), HashEmbedder())  # type: ignore[arg-type]
    service.update(paths=[corpus])
    return service


def test_a_one_document_upload_reads_only_the_documents_it_touches(service, tmp_path, monkeypatch) -> None:
    stored = len(read_index(tmp_path / "index").documents)
    read: list[tuple[int, int]] = []
    original = IndexData._read_document

    def counted(self, index: int, position: int) -> Document:
        read.append((index, position))
        return original(self, index, position)

    monkeypatch.setattr(IndexData, "_read_document", counted)
    upload = tmp_path / "upload" / "lighthouse.txt"
    upload.parent.mkdir()
    upload.write_text(NEW_DOC, encoding="utf-8")
    report = service.update(paths=[upload])
    assert report.added == ["lighthouse.txt"] and report.written
    # The new document has no stored copy; the others are neither read nor written again.
    assert read == [] and len(read_index(tmp_path / "index").documents) == stored + 1
    assert service.search("solar panels lighthouse", k=1).results[0].doc_id == "lighthouse.txt"


def test_a_service_keeps_the_ingest_state_in_memory_and_writes_it_when_closed(service, tmp_path, monkeypatch) -> None:
    state_file = tmp_path / "index" / incremental.STATE_DIR / "state.pkl"
    shutil.rmtree(state_file.parent, ignore_errors=True)

    def no_file(*args: object) -> None:
        raise AssertionError("the ingest state was read from or written to its file between updates")

    monkeypatch.setattr(pipeline, "load_state", no_file)
    monkeypatch.setattr(pipeline, "save_state", no_file)
    monkeypatch.setattr(incremental, "load_state", no_file)
    for name in ("a.txt", "b.txt"):
        (tmp_path / "corpus" / name).write_text(f"{NEW_DOC} Report {name}.", encoding="utf-8")
        assert service.update(paths=[tmp_path / "corpus" / name]).added == [name]
    assert not state_file.exists()
    service.close()
    assert state_file.is_file()
    monkeypatch.undo()
    key = incremental.state_key(service.settings, read_index(tmp_path / "index").manifest.corpus_fingerprint)
    assert incremental.load_state(tmp_path / "index", key) is not None  # it describes the index as it is


@pytest.mark.parametrize("damage", [None, "truncated", "other shape"])
def test_the_saved_state_is_folded_into_arrays_and_reopened_mapped(tmp_path, monkeypatch, damage) -> None:
    """Updates from the CLI save the state each time; with a tiny DELTA_MAX the changes are
    folded into new base arrays often. A damaged base is noticed and the state rebuilt; either
    way the index equals a fresh build."""
    monkeypatch.setattr(incremental, "DELTA_MAX", 5)
    corpus = tmp_path / "corpus"
    shutil.copytree(SEEDS, corpus)
    settings_ = make_settings(tmp_path / "index", corpus)
    pipeline.update_index(settings_, [corpus], embedder_factory=HashEmbedder)
    folder = tmp_path / "index" / incremental.STATE_DIR
    for n in range(3):
        (corpus / f"n{n}.txt").write_text(f"{NEW_DOC}\n\nReport number {n}.", encoding="utf-8")
        pipeline.update_index(settings_, [corpus / f"n{n}.txt"], embedder_factory=HashEmbedder)
        assert len([p for p in folder.iterdir() if p.is_dir()]) == 1  # the one base folder in use
    key = incremental.state_key(settings_, read_index(tmp_path / "index").manifest.corpus_fingerprint)
    state = incremental.load_state(tmp_path / "index", key)
    assert state is not None and isinstance(state.sketches.signatures_.base["values"], np.memmap)
    if damage:
        (base,) = (p for p in folder.iterdir() if p.is_dir())
        array = base / "sketches.signatures.values.npy"
        if damage == "truncated":
            array.write_bytes(array.read_bytes()[:-100])
        else:
            np.save(array, np.zeros(3, np.uint32))
        assert incremental.load_state(tmp_path / "index", key) is None
    (corpus / "n0.txt").unlink()
    (corpus / "n1.txt").write_text(NEW_DOC + " Changed.", encoding="utf-8")
    pipeline.update_index(settings_, [corpus], embedder_factory=HashEmbedder)
    pipeline.update_index(make_settings(tmp_path / "fresh", corpus), [corpus], embedder_factory=HashEmbedder)
    assert read_index(tmp_path / "index").chunks == read_index(tmp_path / "fresh").chunks


def test_a_failed_update_does_not_leave_a_half_changed_state_in_memory(service, tmp_path, monkeypatch) -> None:
    (tmp_path / "corpus" / "a.txt").write_text(NEW_DOC, encoding="utf-8")
    service.update(paths=[tmp_path / "corpus" / "a.txt"])
    assert service._held_state.state is not None

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files_store, "write_generation", disk_full)
    (tmp_path / "corpus" / "b.txt").write_text(NEW_DOC + " Second.", encoding="utf-8")
    with pytest.raises(OSError, match="disk full"):
        service.update(paths=[tmp_path / "corpus" / "b.txt"])
    assert service._held_state.state is None
    monkeypatch.undo()
    # The next update rebuilds the state from the stored index and matches a fresh build.
    assert service.update(paths=[tmp_path / "corpus" / "b.txt"]).added == ["b.txt"]
    fresh = make_service(make_settings(tmp_path / "fresh", tmp_path / "corpus"), HashEmbedder())  # type: ignore[arg-type]
    fresh.update(paths=[tmp_path / "corpus"])
    assert read_index(tmp_path / "index").chunks == read_index(tmp_path / "fresh").chunks


documents = st.dictionaries(
    st.text("abcdef.txt", min_size=1, max_size=8), st.text("0123456789abcdef", min_size=1, max_size=6), max_size=12
)


@settings(max_examples=60, deadline=None)
@given(before=documents, after=documents)
def test_the_fingerprint_moved_by_the_changes_equals_the_fingerprint_of_the_result(before, after) -> None:
    def corpus(shas: dict[str, str]) -> dict[str, Document]:
        return {d: Document(doc_id=d, path=d, root=".", text="", sha256=sha) for d, sha in shas.items()}

    changed = {d for d in {*before, *after} if before.get(d) != after.get(d)}
    moved = updated_fingerprint(
        corpus_fingerprint(corpus(before)),
        [(d, before[d]) for d in changed if d in before],
        [(d, after[d]) for d in changed if d in after],
    )
    assert moved == corpus_fingerprint(corpus(after))
    assert (moved == corpus_fingerprint(corpus(before))) == (before == after)


def test_opening_again_reuses_unchanged_segments_and_still_notices_damage(service, tmp_path) -> None:
    index = tmp_path / "index"
    first = read_index(index)
    assert read_index(index) is first  # the same generation, its files unchanged
    upload = tmp_path / "corpus" / "lighthouse.txt"
    upload.write_text(NEW_DOC, encoding="utf-8")
    service.update(paths=[upload])
    second = read_index(index)
    assert second is not first and second.segments[0] is first.segments[0]  # linked files: not read again
    target = next(index.glob(f"gen-*/{first.segments[0].name}/dense.faiss"))  # shared by both generations
    target.write_bytes(os.urandom(target.stat().st_size))
    with pytest.raises(IndexDamagedError, match="dense.faiss does not match its checksum"):
        read_index(index)
