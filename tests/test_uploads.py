"""Uploaded files: names cannot leave the corpus folder, bad files leave nothing behind,
and removing a document drops it from the index and the folder."""

from pathlib import Path

import pytest
from conftest import make_service, make_settings
from hypothesis import given
from hypothesis import strategies as st

from rag.errors import BadInputError, PayloadTooLargeError, UnknownDocumentError
from rag.service import upload_name


@given(st.text(max_size=40))
def test_an_accepted_name_always_stays_inside_the_corpus_folder(name: str) -> None:
    corpus = Path("/srv/corpus")
    try:
        accepted = upload_name(name)
    except BadInputError:
        return
    assert (corpus / accepted).resolve().parent == corpus
    assert not accepted.startswith(".")


@pytest.mark.parametrize("name", ["../x.txt", "a/b.md", "..\\x.txt", ".env.txt", "", "notes", "run.sh", "x.pptx"])
def test_refused_names(name: str) -> None:
    with pytest.raises(BadInputError):
        upload_name(name)


@pytest.mark.slow
def test_add_and_delete_documents(corpus: Path, tmp_path: Path, embedder) -> None:
    settings = make_settings(tmp_path / "index", corpus_dir=corpus, server={"max_upload_bytes": 1000})
    service = make_service(settings, embedder)
    service.update(paths=[corpus])

    report = service.add_document("kiln.txt", b"The Ostrava kiln fires porcelain at 1,280 degrees Celsius.\n")
    assert report.added == ["kiln.txt"] and (corpus / "kiln.txt").exists()
    assert service.search("porcelain kiln temperature", k=1).results[0].doc_id == "kiln.txt"
    assert service.add_document(
        "kiln.txt", b"The Ostrava kiln fires porcelain at 1,300 degrees Celsius.\n"
    ).updated == ["kiln.txt"]
    assert "1,300" in service.document("kiln.txt").text

    with pytest.raises(PayloadTooLargeError):
        service.add_document("big.txt", b"x " * 600)
    with pytest.raises(BadInputError, match="binary"):
        service.add_document("bin.txt", b"\x00\x01")
    assert sorted(p.name for p in corpus.iterdir() if p.name.startswith(".") or p.name in ("big.txt", "bin.txt")) == []

    assert service.delete_documents(["kiln.txt"]).removed == ["kiln.txt"]
    assert not (corpus / "kiln.txt").exists()
    with pytest.raises(UnknownDocumentError):
        service.delete_documents(["kiln.txt"])
    assert len(service.documents()) == 5
