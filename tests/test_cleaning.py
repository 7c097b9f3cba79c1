from conftest import BOILERPLATE, SEEDS

from rag.config import CleaningSettings, IndexSettings
from rag.ingest.cleaning import clean_corpus, repeated_lines, split_blocks
from rag.ingest.loading import load_paths
from rag.schema import Document


def doc(doc_id: str, text: str) -> Document:
    return Document(doc_id=doc_id, path=doc_id, root="/", text=text, sha256=doc_id)


def kept_text(document: Document, settings: CleaningSettings = CleaningSettings(), corpus=None) -> str:
    blocks = clean_corpus(corpus or [document], settings)[document.doc_id]
    return "\n".join(document.text[b.start : b.end] for b in blocks)


PROSE = (
    "The harbour authority said on Monday that the new breakwater would be finished before the "
    "winter storms arrive, and that fishing boats could use the inner basin while the work goes on. "
    "It added that the cost of the project had risen by a third since the plans were first drawn up."
)


def test_seed_boilerplate_is_dropped_and_content_kept() -> None:
    report, _ = load_paths([SEEDS], IndexSettings().max_file_bytes)
    blocks = clean_corpus(report.documents, CleaningSettings())
    for document in report.documents:
        kept = "\n".join(document.text[b.start : b.end] for b in blocks[document.doc_id])
        for clutter in BOILERPLATE:
            assert clutter not in kept, (document.doc_id, clutter)
        # Kept spans are verbatim slices in order, never overlapping.
        spans = blocks[document.doc_id]
        assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
    by_id = {d.doc_id: d for d in report.documents}
    kept_000 = "\n".join(
        by_id["000_c1a45aa062b469e9.txt"].text[b.start : b.end] for b in blocks["000_c1a45aa062b469e9.txt"]
    )
    assert "establishing 529 commune-level military party cells" in kept_000
    # A dense, name-heavy paragraph with few stop words is still content.
    kept_001 = "\n".join(
        by_id["001_da832dcbec278d94.txt"].text[b.start : b.end] for b in blocks["001_da832dcbec278d94.txt"]
    )
    assert "Expand defense cooperation and promote effective border defense diplomacy." in kept_001
    assert "Outstanding results include:" in kept_001


def test_lines_repeated_across_unrelated_documents_are_boilerplate() -> None:
    widget = "Share this story with your friends"
    docs = [
        doc(f"d{i}.txt", "".join(f"Story {i}, part {j}: {PROSE}\n" for j in range(4)) + f"{widget}\n") for i in range(3)
    ]
    assert widget.lower() in repeated_lines(docs, CleaningSettings())
    assert widget not in kept_text(docs[0], corpus=docs)


def test_copies_of_one_page_do_not_make_their_content_boilerplate() -> None:
    lines = [f"Point {n}: the committee reviewed item {n} in detail." for n in range(6)]
    a = doc("a.txt", PROSE + "\n" + "\n".join(lines) + "\n")
    b = doc("b.txt", PROSE + "\n\n" + "\n\n".join(lines) + "\n")
    assert not repeated_lines([a, b], CleaningSettings()) & {line.lower() for line in lines}


def test_teaser_link_list_is_dropped() -> None:
    items = "\n\n".join(
        f"  • 'Headline number {n} about the region\n\n    Headline number {n} about the region\n\n"
        f"    NEWS -\n    In recent weeks the province has done many things for the people of the region, officials said."
        for n in range(4)
    )
    document = doc("page.txt", f"{PROSE}\n\n{PROSE}\n\nRelated news\n\n{items}\n")
    kept = kept_text(document)
    assert PROSE in kept
    assert "Headline number" not in kept and "Related news" not in kept


def test_fragments_and_banners_are_dropped_but_lead_in_lines_kept() -> None:
    document = doc(
        "x.txt",
        "Donate now to support our newsroom!\n"
        f"{PROSE}\nThe results include:\n{PROSE}\n.jpg)\n{PROSE}\nNEWSLETTER\nSign up for the mailing list\n",
    )
    kept = kept_text(document)
    assert "The results include:" in kept
    for clutter in ("Donate now", ".jpg)", "NEWSLETTER", "Sign up"):
        assert clutter not in kept


def test_disabled_cleaning_keeps_every_block() -> None:
    document = doc("x.txt", "Short label\nAnother line\n")
    assert kept_text(document, CleaningSettings(enabled=False)) == "Short label\nAnother line"


def test_blocks_join_hard_wrapped_lines_and_list_continuations() -> None:
    text = (
        "This paragraph was wrapped by an editor at a fixed width so\n"
        "that it continues on the next line here.\n\n"
        "- first item of a list\n  continued on an indented line\n- second item\n"
    )
    blocks = split_blocks(text)
    assert [b.text for b in blocks] == [
        "This paragraph was wrapped by an editor at a fixed width so\nthat it continues on the next line here.",
        "- first item of a list\n  continued on an indented line",
        "- second item",
    ]
    assert all(text[b.start : b.end] == b.text for b in blocks)
