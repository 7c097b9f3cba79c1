"""PDF and Word documents: text with exact offsets and page numbers, page furniture left out,
hyphenation joined for search, unreadable files skipped by name, and the document page that
shows a PDF citation on its rendered page. Every file is written by the test (doc_fixtures)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
from conftest import make_service, make_settings
from doc_fixtures import (
    HEADER,
    HYPHENATED_LINES,
    LEFT_COLUMN,
    RIGHT_COLUMN,
    report_docx,
    report_pdf,
    scanned_pdf,
)
from fpdf import FPDF
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from rag.config import ChunkingSettings, CleaningSettings
from rag.errors import BadInputError
from rag.ingest.chunking import chunk_document
from rag.ingest.cleaning import clean_corpus
from rag.ingest.loading import LoadReport, load_file
from rag.schema import Document
from rag.text.words import search_text

MAX_BYTES = 20_000_000


def load(path: Path) -> tuple[Document | None, LoadReport]:
    report = LoadReport()
    return load_file(path, path.parent, report, MAX_BYTES), report


def chunks_of(doc: Document, settings: ChunkingSettings | None = None):
    blocks = clean_corpus([doc], CleaningSettings())[doc.doc_id]
    return [
        chunk.model_copy(update=doc.page_fields(chunk.start, chunk.end))
        for chunk in chunk_document(doc.doc_id, doc.text, blocks, settings or ChunkingSettings())
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Document:
    doc, _ = load(report_pdf(tmp_path_factory.mktemp("pdf") / "report.pdf"))
    assert doc is not None
    return doc


def test_pdf_text_pages_title_and_furniture(report: Document) -> None:
    assert report.format == "pdf" and report.title == "Glaciers and Rivers of the Northern Valleys"
    assert len(report.pages) == 5 and report.pages[0] == 0
    # Pages are joined by form feeds, and page 4 (a picture) has no text.
    assert [report.text[s - 1] for s in report.pages[1:]] == ["\f"] * 4
    assert report.text[report.pages[3] : report.pages[4] - 1] == ""
    chunks = chunks_of(report)
    kept = "\n".join(c.text for c in chunks)
    # The running header and the "Page N of 5" footers stay in the stored text, out of every passage.
    assert report.text.count(HEADER) == 4 and report.text.count(" of 5") == 4
    assert HEADER not in kept and not re.search(r"Page \d of 5", kept)
    # Two columns read one after the other, not line by line across the page.
    assert "\n".join(LEFT_COLUMN) in kept and "\n".join(RIGHT_COLUMN) in kept
    # The table's rows, and the note under it, on page 3.
    table = next(c for c in chunks if "Merlin Glacier 3.1 25" in c.text)
    assert table.page == 3 and table.pages is None
    assert {c.page for c in chunks} == {1, 2, 3, 5}


def test_a_word_hyphenated_over_a_line_break_is_stored_as_read_and_searched_joined(report: Document) -> None:
    chunk = next(c for c in chunks_of(report) if "discipline glaci" in c.text)
    assert "glaci\u00adology" in chunk.text  # PDFium's line-end hyphen, kept as a soft hyphen
    assert "glaciology" in search_text(chunk.text)
    assert search_text("well-\nknown twenty-five") == "wellknown twenty-five"
    assert HYPHENATED_LINES[1][len("ology") :] in chunk.text  # the line after the break follows on


def test_pdf_without_text_encrypted_and_broken_are_skipped_by_name(tmp_path: Path, caplog) -> None:
    scanned = scanned_pdf(tmp_path / "scan.pdf")
    locked = report_pdf(tmp_path / "locked.pdf", encrypt_with="secret")
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer garbage")
    truncated = tmp_path / "truncated.docx"
    truncated.write_bytes(report_docx(tmp_path / "whole.docx").read_bytes()[:900])
    with caplog.at_level(logging.WARNING):
        for path, reason in [
            (scanned, "no text layer on any of its 2 page(s)"),
            (locked, "encrypted PDF: it needs a password"),
            (broken, "damaged or not a PDF"),
            (truncated, "Word file"),
        ]:
            doc, outcome = load(path)
            assert doc is None
            assert outcome.skipped == [(str(path), outcome.skipped[0][1])] and reason in outcome.skipped[0][1]
            assert path.name in caplog.text


def test_partly_scanned_pdf_warns_about_its_pages(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        doc, _ = load(report_pdf(tmp_path / "report.pdf"))
    assert doc is not None and "report.pdf: page(s) 4 of 5 have no text layer" in caplog.text


def test_docx_paragraphs_headings_lists_and_tables(tmp_path: Path) -> None:
    doc, _ = load(report_docx(tmp_path / "plan.docx"))
    assert doc is not None and doc.format == "docx" and doc.title == "Harbour Maintenance Plan" and doc.pages is None
    blocks = {doc.text[b.start : b.end]: b.kind for b in doc.blocks}
    assert blocks["Equipment"] == "heading" and blocks["Schedule"] == "heading"
    assert "• The dredger Marigold, built in 1978" in blocks
    assert "1. Survey the channel depth in February." in blocks and "2. Dredge the northern quay in March." in blocks
    assert "Berth | Depth (m) | Last dredged\nNorth quay | 4.2 | 2023\nFish dock | 2.8 | 2021" in blocks
    chunks = chunks_of(doc)
    assert all(c.page is None for c in chunks)
    # A heading opens the passage it heads.
    assert any("Equipment\n\n• The dredger" in c.text for c in chunks)


# ---------------------------------------------------------------- property: offsets and pages

WORDS = ["river", "glacier", "valley", "bridge", "meltwater", "station", "summer", "heron", "delta", "snow"]


@st.composite
def paged_pdfs(draw) -> tuple[bytes, int]:
    """A PDF whose every word carries the number of the page it is printed on ("river3"):
    paragraphs placed one under another, running over to the next page when they do not fit,
    with or without a running header and a page number."""
    furniture = draw(st.booleans())
    paragraphs = draw(st.lists(st.lists(st.sampled_from(WORDS), min_size=3, max_size=120), min_size=1, max_size=12))
    pdf = FPDF(format="A5")
    pdf.set_font("Helvetica", size=10)
    pdf.set_auto_page_break(False)
    pdf.set_margins(15, 20)

    def furnish() -> None:
        if furniture:
            y = pdf.get_y()
            pdf.set_xy(15, 6)
            pdf.cell(0, 5, f"Valley survey{pdf.page_no()}")
            pdf.set_xy(15, 200)
            pdf.cell(0, 5, f"{pdf.page_no()}", align="C")
            pdf.set_xy(15, y)

    pdf.add_page()
    furnish()
    for words in paragraphs:
        for word in words:  # word by word, so each carries the page it lands on
            if pdf.get_x() + pdf.get_string_width(word + "99 ") > pdf.w - 15:
                pdf.ln(5)
            if pdf.get_y() > pdf.h - 25:
                pdf.add_page()
                furnish()
            token = f"{word}{pdf.page_no()} "
            pdf.cell(pdf.get_string_width(token), 5, token)
        pdf.ln(5)
        if words[-1] in ("river", "delta"):  # sometimes a paragraph ends with a sentence
            pdf.cell(20, 5, f"done{pdf.page_no()}.")
            pdf.ln(8)
    return bytes(pdf.output()), pdf.page_no()


TOKEN = re.compile(r"[a-z]+(\d+)")


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(pdf=paged_pdfs(), target=st.integers(10, 80))
def test_every_pdf_chunk_is_its_slice_and_on_the_pages_of_its_words(
    tmp_path: Path, pdf: tuple[bytes, int], target: int
) -> None:
    data, page_count = pdf
    path = tmp_path / "survey.pdf"
    path.write_bytes(data)
    doc, _ = load(path)
    assert doc is not None and len(doc.pages) == page_count
    settings = ChunkingSettings(target_words=target, max_words=max(20, target + 20), min_words=5)
    chunks = chunks_of(doc, settings)
    assert chunks
    for chunk in chunks:
        assert doc.text[chunk.start : chunk.end] == chunk.text
        printed_on = [int(m.group(1)) for m in TOKEN.finditer(chunk.text)]
        assert chunk.page == printed_on[0]
        assert (chunk.pages or [chunk.page])[-1] == printed_on[-1]
        assert chunk.pages is None or chunk.pages == list(range(chunk.page, chunk.pages[-1] + 1))


@st.composite
def word_files(draw) -> list[tuple[str, str]]:
    kinds = st.sampled_from(["heading", "paragraph", "bullet", "number", "table"])
    text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=60)
    return draw(st.lists(st.tuples(kinds, text), min_size=1, max_size=15))


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=word_files())
def test_every_docx_chunk_is_its_slice(tmp_path: Path, parts: list[tuple[str, str]]) -> None:
    from docx import Document as new_docx

    word = new_docx()
    for kind, text in parts:
        if kind == "heading":
            word.add_heading(text, level=1)
        elif kind == "table":
            table = word.add_table(rows=1, cols=2)
            table.cell(0, 0).text, table.cell(0, 1).text = text, text[::-1]
        else:
            word.add_paragraph(text, style={"bullet": "List Bullet", "number": "List Number"}.get(kind))
    path = tmp_path / "random.docx"
    word.save(path)
    doc, report = load(path)
    if doc is None:  # only when no part has any visible text
        assert not any(text.strip() for _, text in parts) and "no text" in report.skipped[0][1]
        return
    shown = [" ".join(text.split()) for _, text in parts if text.strip()]
    for block in doc.blocks:
        assert doc.text[block.start : block.end].strip() == doc.text[block.start : block.end]
    assert all(any(s in " ".join(doc.text.split()) for s in [part]) for part in shown)
    for chunk in chunks_of(doc, ChunkingSettings(target_words=10, max_words=20, min_words=2)):
        assert doc.text[chunk.start : chunk.end] == chunk.text and chunk.page is None


@given(
    starts=st.lists(st.integers(1, 500), max_size=8, unique=True),
    span=st.tuples(st.integers(0, 600), st.integers(1, 50)),
)
def test_page_fields_agree_with_counting_page_breaks(starts: list[int], span: tuple[int, int]) -> None:
    pages = [0, *sorted(starts)]
    text = "".join("\f" if i in pages[1:] else "x" for i in range(700))
    doc = Document(doc_id="d.pdf", path="d.pdf", root=".", text=text, sha256="", pages=pages)
    start, end = span[0], span[0] + span[1]
    fields = doc.page_fields(start, end)
    first = 1 + sum(1 for p in pages[1:] if p <= start)
    last = 1 + sum(1 for p in pages[1:] if p <= end - 1)
    assert fields["page"] == first and fields.get("pages", [first]) == list(range(first, last + 1))


# ---------------------------------------------------------------- through the index and the server


@pytest.mark.slow
def test_pdf_and_docx_through_the_index_search_answers_and_document_page(tmp_path: Path, embedder) -> None:
    from fastapi.testclient import TestClient

    from rag.serve.app import create_app

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    report_pdf(corpus / "report.pdf")
    report_docx(corpus / "plan.docx")
    service = make_service(make_settings(tmp_path / "index", corpus_dir=corpus), embedder)
    indexed = service.update(paths=[corpus])
    assert sorted(indexed.added) == ["plan.docx", "report.pdf"]

    hit = service.search("glaciology", k=1, mode="bm25").results[0]  # only the joined word matches
    assert hit.doc_id == "report.pdf" and hit.page == 1 and "glaci\u00adology" in hit.text
    hit = service.search("Which berth was dredged in 2023?", k=1).results[0]
    assert hit.doc_id == "plan.docx" and hit.page is None

    answer = service.ask("How fast does the Merlin Glacier retreat?", model="extractive")
    cited = next(c for c in answer.citations if c.doc_id == "report.pdf")
    assert cited.page == 3 and service.document("report.pdf").text[cited.start : cited.end] == cited.text

    from rag.requests import CheckRequest

    checked = service.check(
        CheckRequest(claim="The Merlin Glacier retreats twenty-five metres a year.", doc_id="report.pdf")
    )
    assert checked.sentences[0].citations[0].supported and checked.sentences[0].citations[0].page == 3

    client = TestClient(create_app(service))
    page = client.get(f"/view/report.pdf?start={cited.start}&end={cited.end}")
    assert page.status_code == 200 and "img-src 'self'" in page.headers["content-security-policy"]
    assert '<figure class="pdf-page" id="span"><figcaption>p. 3</figcaption>' in page.text
    boxes = [
        tuple(map(float, m))
        for m in re.findall(r'class="span-box" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', page.text)
    ]
    assert boxes and all(
        0 < x < 595 and 60 < y < 300 and w > 0 and h > 0 for x, y, w, h in boxes
    )  # under the header, above the footer
    assert '<span class="page-break">p. 3</span>' in page.text
    image = client.get("/page-image/report.pdf?page=3&width=700")
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/page-image/report.pdf?page=6").status_code == 404
    assert client.get("/page-image/plan.docx?page=1").status_code == 400

    # The PDF moves: the page says so and still shows the text; its images are gone (404).
    moved = tmp_path / "elsewhere.pdf"
    shutil.move(corpus / "report.pdf", moved)
    page = client.get(f"/view/report.pdf?start={cited.start}&end={cited.end}")
    assert page.status_code == 200 and "is no longer at" in page.text and "<figure" not in page.text
    assert "<mark" in page.text
    gone = client.get("/page-image/report.pdf?page=3")
    assert gone.status_code == 404 and "no longer at" in gone.json()["detail"]
    # Back, but changed: refused as changed, never drawn over the wrong page.
    report_pdf(corpus / "report.pdf", encrypt_with=None)
    with (corpus / "report.pdf").open("ab") as handle:
        handle.write(b"\n% appended\n")
    assert (
        "has changed since it was indexed" in client.get(f"/view/report.pdf?start={cited.start}&end={cited.end}").text
    )


def test_upload_names_take_every_supported_type() -> None:
    from rag.service import upload_name

    assert upload_name("report.pdf") == "report.pdf" and upload_name("plan.docx") == "plan.docx"
    with pytest.raises(BadInputError, match=r"\.pdf or \.docx"):
        upload_name("slides.pptx")


def test_a_paragraph_running_over_a_page_break_names_both_pages(tmp_path: Path) -> None:
    pdf = FPDF(format="A4")
    pdf.set_font("Helvetica", size=11)
    pdf.add_page()
    pdf.set_y(255)  # three lines fit on page 1; the paragraph goes on at the top of page 2
    pdf.multi_cell(180, 6, "The gauging station at the bridge reports the river level twice a day. " * 8)
    (tmp_path / "running.pdf").write_bytes(bytes(pdf.output()))
    doc, _ = load(tmp_path / "running.pdf")
    [chunk] = chunks_of(doc)
    assert chunk.page == 1 and chunk.pages == [1, 2] and "\f" in chunk.text
    assert doc.text[chunk.start : chunk.end] == chunk.text


@pytest.mark.slow
def test_rag_index_reads_a_mixed_folder_and_search_shows_pages(tmp_path: Path) -> None:
    """The real CLI on PDF, Word, HTML, Markdown and text side by side, unreadable PDFs among them."""
    import json
    import os
    import subprocess
    import sys

    from rag.ingest.docx import read_docx
    from rag.ingest.pdf import read_pdf

    folder = tmp_path / "mixed"
    folder.mkdir()
    report_pdf(folder / "report.pdf")
    report_docx(folder / "plan.docx")
    scanned_pdf(folder / "scan.pdf")
    report_pdf(folder / "locked.pdf", encrypt_with="secret")
    (folder / "ferry.html").write_text(
        "<html><head><title>Ferry times</title></head><body><article><h1>Ferry times</h1><p>The ferry to Eastmere "
        "leaves the western pier at nine in the morning and returns at five, from May to September.</p></article></body></html>"
    )
    (folder / "bakery.md").write_text(
        "# Bakery\n\nThe bakery on Mill Street has baked rye bread in a wood-fired oven since 1921.\n"
    )
    (folder / "keeper.txt").write_text("The lighthouse keeper rowed to the island every Tuesday with supplies.\n")

    def rag(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
        return subprocess.run(
            [sys.executable, "-m", "rag.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )

    indexed = rag("index", "mixed", "--json")
    assert indexed.returncode == 0, indexed.stderr
    assert sorted(json.loads(indexed.stdout)["added"]) == [
        "bakery.md",
        "ferry.html",
        "keeper.txt",
        "plan.docx",
        "report.pdf",
    ]
    assert "scan.pdf: no text layer on any of its 2 page(s)" in indexed.stderr
    assert "locked.pdf: encrypted PDF: it needs a password" in indexed.stderr
    texts = {
        "report.pdf": read_pdf((folder / "report.pdf").read_bytes()).text,
        "plan.docx": read_docx((folder / "plan.docx").read_bytes()).text,
    }
    for query, doc_id, page in [
        ("How much thickness did the Osprey Glacier lose?", "report.pdf", 2),
        ("When is the northern quay dredged?", "plan.docx", None),
    ]:
        found = rag("search", query, "--k", "1", "--json")
        assert found.returncode == 0, found.stderr
        [hit] = json.loads(found.stdout)["results"]
        assert (hit["doc_id"], hit["page"]) == (doc_id, page)
        if doc_id in texts:
            assert texts[doc_id][hit["start"] : hit["end"]] == hit["text"]

    # Only unreadable files: bad input, nothing written.
    (tmp_path / "bad").mkdir()
    shutil.move(folder / "scan.pdf", tmp_path / "bad" / "scan.pdf")
    refused = rag("index", "bad", "--index-dir", "other-index")
    assert refused.returncode == 2 and "no readable documents" in refused.stderr
    assert not (tmp_path / "other-index" / "CURRENT").exists()


def test_cards_and_document_page_name_the_pages() -> None:
    from rag.ingest.pdf import PageBoxes
    from rag.schema import AnswerResponse, Citation, SearchHit
    from ui.render import document_page, search_html, sources_html

    text = "First page text.\fSecond <page> text.\fThird page."
    doc = Document(doc_id="dir/r.pdf", path="r.pdf", root=".", text=text, sha256="", format="pdf", pages=[0, 17, 37])
    start, end = text.index("Second"), text.index("Third") + 5
    hit = SearchHit(
        rank=1,
        score=1.0,
        chunk_id="c",
        doc_id=doc.doc_id,
        start=start,
        end=end,
        text=text[start:end],
        title="R",
        **doc.page_fields(start, end),
    )
    assert (hit.page, hit.pages) == (2, [2, 3])
    citation = Citation(
        id=1,
        passage=1,
        sentence=0,
        chunk_id="c",
        doc_id=doc.doc_id,
        start=start,
        end=start + 6,
        text="Second",
        chunk_start=start,
        chunk_end=end,
        title="R",
        supported=True,
        **doc.page_fields(start, start + 6),
    )
    card = sources_html(
        [
            AnswerResponse(
                question="q", answer="a [1].", abstained=False, model="m", citations=[citation], passages=[hit]
            )
        ]
    )
    assert '<span class="page">p. 2</span>' in card and "Open p. 2 ↗" in card
    assert '<span class="page">pp. 2–3</span>' in search_html([hit]) and "Open pp. 2–3 ↗" in search_html([hit])

    page = document_page(doc, start, start + 6, [PageBoxes(2, 600.0, 800.0, [(10.0, 20.0, 30.0, 12.0)])])
    # From /view/dir/r.pdf two levels up to the root, then the page image.
    assert '<image href="../../page-image/dir/r.pdf?page=2&amp;width=1400"' in page
    assert '<rect class="span-box" x="8.5" y="18.5" width="33.0" height="15.0"' in page
    assert '<figure class="pdf-page" id="span">' in page and page.count('id="span"') == 1
    assert '<span class="page-break">p. 1</span>First' in page and '<span class="page-break">p. 3</span>Third' in page
    assert "&lt;page&gt;" in page and "\f" not in page
