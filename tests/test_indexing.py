"""Incremental updates, staleness and atomic writes, with the real model, FAISS and BM25."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, SEEDS, make_service, make_settings

from rag.errors import IncompatibleIndexError, IndexMissingError
from rag.stores.faiss_bm25 import segments
from rag.stores.faiss_bm25.store import read_index

pytestmark = pytest.mark.slow

NEW_DOC = (
    "The lighthouse keeper of Hòn Dấu island reported that the new solar panels now supply all of "
    "the station's power. Engineers installed forty-two panels during the dry season of 2025, and the "
    "diesel generator is kept only as a reserve for long stretches of cloudy weather."
)


def all_texts(service) -> list[str]:
    return [c.text for c in service.store.data.chunks]


def live_embedding_keys(data) -> set[str]:
    return {data.embedding_key(row) for doc_id in data.doc_ids for row in data.rows_of(doc_id)}


def test_incremental_update_embeds_only_what_changed_and_leaves_nothing_stale(tmp_path, corpus, embedder) -> None:
    service = make_service(make_settings(tmp_path / "index", corpus), embedder)
    first = service.update(paths=[corpus])
    # Every chunk is indexed; a text found in two documents is embedded once.
    assert first.written and first.embedded == len(live_embedding_keys(service.store.data)) and len(first.added) == 5

    again = service.update(paths=[corpus])
    assert not again.written and again.embedded == 0

    # Change one paragraph, add a document, delete another.
    path_004 = corpus / "004_a3b36d9e2d4bee8b.txt"
    path_004.write_text(path_004.read_text().replace("IUU", "illegal"), encoding="utf-8")
    (corpus / "new.txt").write_text(NEW_DOC, encoding="utf-8")
    (corpus / "000_c1a45aa062b469e9.txt").unlink()
    report = service.update(paths=[corpus])
    assert report.added == ["new.txt"] and report.updated == ["004_a3b36d9e2d4bee8b.txt"]
    assert report.removed == ["000_c1a45aa062b469e9.txt"]
    assert report.embedded == 2  # the edited paragraph and the new document
    assert report.reused_vectors == report.chunks - 2

    index = service.store.data
    assert "000_c1a45aa062b469e9.txt" not in index.documents
    assert not any(c.doc_id == "000_c1a45aa062b469e9.txt" for c in index.chunks)
    assert not any("IUU" in t for t in all_texts(service))
    assert len({c.chunk_id for c in index.chunks}) == len(index.chunks)
    hits = service.search("How many commune-level military party cells were established?", k=20).results
    assert all(h.doc_id != "000_c1a45aa062b469e9.txt" for h in hits)
    assert service.search("solar panels lighthouse", k=1).results[0].doc_id == "new.txt"
    # Every search row maps to exactly one stored passage.
    assert all(len(set(segment.row_counts().values())) == 1 for segment in index.segments)
    assert len(index.chunks) == index.live_count == report.chunks


def test_remove_drops_a_document_and_promotes_its_copies(tmp_path, embedder) -> None:
    service = make_service(make_settings(tmp_path / "index"), embedder)
    service.update(paths=[SEEDS])
    before = {c.chunk_id: c for c in service.store.data.chunks}
    assert any(c.duplicate_of and c.doc_id == "003_254c39c735b64e9a.txt" for c in before.values())

    report = service.update(remove=["001_da832dcbec278d94.txt"])
    assert report.removed == ["001_da832dcbec278d94.txt"]
    index = service.store.data
    assert all(c.duplicate_of is None for c in index.chunks)  # 003's copies now stand alone
    hit = service.search("22,700 personnel and 800 vehicles", k=1).results[0]
    assert hit.doc_id == "003_254c39c735b64e9a.txt" and hit.also_in == []


def test_changed_settings_are_refused_at_search_and_rebuilt_by_index(tmp_path, embedder) -> None:
    settings = make_settings(tmp_path / "index")
    make_service(settings, embedder).update(paths=[SEEDS])
    changed = make_settings(tmp_path / "index", chunking={"max_words": 120, "target_words": 80})
    service = make_service(changed, embedder)
    with pytest.raises(IncompatibleIndexError, match="chunking settings"):
        service.search("border")
    report = service.update(paths=[SEEDS])
    assert report.written and report.rebuilt_because == ["chunking settings"]
    assert service.search("border").results


def test_files_changed_after_indexing_are_reported(tmp_path, corpus, embedder) -> None:
    service = make_service(make_settings(tmp_path / "index", corpus), embedder)
    service.update(paths=[corpus])
    assert service.changed_on_disk() == []
    target = corpus / "002_be266ad687065662.txt"
    os.utime(target, ns=(time.time_ns(), time.time_ns()))  # touched, same bytes: not stale
    assert service.changed_on_disk() == []
    target.write_text("Rewritten.", encoding="utf-8")
    assert service.changed_on_disk() == ["002_be266ad687065662.txt"]


def test_exception_mid_write_keeps_the_previous_index(tmp_path, corpus, embedder, monkeypatch) -> None:
    service = make_service(make_settings(tmp_path / "index", corpus), embedder)
    service.update(paths=[corpus])
    before = read_index(tmp_path / "index")
    (corpus / "new.txt").write_text(NEW_DOC, encoding="utf-8")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(segments, "save_lexical_index", explode)
    with pytest.raises(OSError, match="disk full"):
        service.update(paths=[corpus])
    after = read_index(tmp_path / "index")
    assert after.manifest.corpus_fingerprint == before.manifest.corpus_fingerprint
    assert "new.txt" not in after.documents
    assert not list((tmp_path / "index").glob(".tmp-*"))


def test_kill_mid_write_keeps_the_previous_index(tmp_path, corpus, embedder) -> None:
    index_dir = tmp_path / "index"
    make_service(make_settings(index_dir, corpus), embedder).update(paths=[corpus])
    before = read_index(index_dir).manifest.corpus_fingerprint
    (corpus / "new.txt").write_text(NEW_DOC, encoding="utf-8")
    marker = tmp_path / "writing"
    # A real `rag index` process, paused inside the write (files half done, not yet published).
    script = textwrap.dedent(f"""
        import sys, time, pathlib
        import rag.stores.faiss_bm25.store as store
        original = store._fsync_tree
        def stall(root):
            pathlib.Path({str(marker)!r}).write_text(str(root))
            time.sleep(60)
        store._fsync_tree = stall
        from rag.cli import main
        sys.argv = ["rag", "index", {str(corpus)!r}, "--index-dir", {str(index_dir)!r}]
        main()
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        for _ in range(600):
            if marker.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the indexing process never reached the write step"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert read_index(index_dir).manifest.corpus_fingerprint == before
    # The next build cleans up the half-written staging folder and publishes normally.
    report = make_service(make_settings(index_dir, corpus), embedder).update(paths=[corpus])
    assert report.added == ["new.txt"]
    assert not list(index_dir.glob(".tmp-*"))


def test_missing_index_is_a_clear_error(tmp_path, embedder) -> None:
    with pytest.raises(IndexMissingError, match="run `rag index` first"):
        make_service(make_settings(tmp_path / "nothing"), embedder).search("anything")


def test_a_document_without_passages_is_reported(tmp_path, embedder, caplog) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "story.txt").write_text(NEW_DOC, encoding="utf-8")
    (corpus / "widget.txt").write_text("Comment (0)\n", encoding="utf-8")
    report = make_service(make_settings(tmp_path / "index", corpus), embedder).update(paths=[corpus])
    assert report.documents == 2 and report.without_passages == ["widget.txt"]
    assert "widget.txt has no passages" in caplog.text
