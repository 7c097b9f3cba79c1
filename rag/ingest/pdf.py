"""Read PDFs with pypdfium2 (PDFium): the text layer page by page, the page furniture left out,
and, for the document page, each page rendered and the character boxes of a span.

The document text is PDFium's text of each page, pages joined by a form feed, with two
normalisations that keep a known map from every text character to PDFium's character index:
its "\\r\\n" line ends become "\\n", and the marker PDFium puts where a word is hyphenated
across a line break (U+FFFE) becomes a soft hyphen (U+00AD), so the stored text keeps the
hyphenation point and search (see `rag.text.words.search_text`) reads the word joined. The same extraction
run again on the file gives the same text and map, which is how a span's offsets find their
character boxes on the page.

Running headers and footers and page numbers are left out of the blocks to index by general
rules: a short line in the top or bottom band of a page whose text (digits aside) recurs on at
least half of the pages, or that reads as a page number. Pages without any text (scanned
pictures) are reported; a PDF without text on any page, or one that needs a password or is
damaged, yields no document.

PDFium is not thread-safe: every call into it holds `PDFIUM_LOCK`."""

from __future__ import annotations

import hashlib
import io
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rag.errors import UnknownDocumentError
from rag.ingest.formats import Extracted, UnreadableDocumentError
from rag.schema import Block, Document

PDFIUM_LOCK = threading.Lock()
PAGE_BREAK = "\f"
SOFT_HYPHEN = "\u00ad"
# PDFium's characters that must not reach the text, mapped one to one (the offset map stays exact).
_CHARACTERS = {"\ufffe": SOFT_HYPHEN, "\ufeff": " ", "\x00": " ", "\x02": SOFT_HYPHEN, "\r": "\n"}
# Top and bottom share of the page height where running headers, footers and page numbers sit.
FURNITURE_BAND = 0.12
FURNITURE_MAX_WORDS = 12
PAGE_NUMBER = re.compile(
    r"^[-–—\s]*(?:page\s+)?(?:\d{1,4}|[ivxlcdm]{1,7})(?:\s*(?:of|/)\s*\d{1,4})?[-–—\s]*$", re.IGNORECASE
)
SENTENCE_END = re.compile(r"[.!?:;…][\"'”’)\]]*$")


@dataclass
class _Line:
    start: int  # offsets into the page text
    end: int
    top: float  # share of the page height above the line (0 = top edge)


@dataclass
class PageText:
    text: str
    chars: list[int]  # PDFium's character index of each character of `text`
    lines: list[_Line]


def page_text(page) -> PageText:
    """The normalised text of one PDFium page, its character map and its non-blank lines."""
    textpage = page.get_textpage()
    try:
        count = textpage.count_chars()
        raw = textpage.get_text_range(0, count) if count > 0 else ""
        if len(raw) != count:  # characters outside the BMP: read them one index at a time
            import pypdfium2.raw as pdfium_c

            raw = "".join(chr(pdfium_c.FPDFText_GetUnicode(textpage.raw, i) or 32) for i in range(count))
        out: list[str] = []
        chars: list[int] = []
        for i, ch in enumerate(raw):
            if ch == "\r" and raw[i + 1 : i + 2] == "\n":
                continue
            out.append(_CHARACTERS.get(ch, ch))
            chars.append(i)
        text = "".join(out)
        height = page.get_height() or 1.0
        lines: list[_Line] = []
        pos = 0
        for raw_line in text.split("\n"):
            stripped = raw_line.strip()
            if stripped:
                start = pos + len(raw_line) - len(raw_line.lstrip())
                top = textpage.get_charbox(chars[start])[3]
                lines.append(_Line(start, start + len(stripped), min(1.0, max(0.0, 1 - top / height))))
            pos += len(raw_line) + 1
        return PageText(text, chars, lines)
    finally:
        textpage.close()


def open_pdf(data: bytes):
    """A PdfDocument for `data`; UnreadableDocumentError (one line) if it needs a password or is damaged."""
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise UnreadableDocumentError("encrypted PDF: it needs a password to open") from None
        raise UnreadableDocumentError(f"damaged or not a PDF ({message.rstrip('.')})") from None


def read_pdf(data: bytes) -> Extracted:
    """The text, page offsets and blocks of a PDF given as bytes."""
    with PDFIUM_LOCK:
        pdf = open_pdf(data)
        try:
            try:
                pages = [page_text(pdf[i]) for i in range(len(pdf))]
            except Exception as exc:  # PDFium fails on some damaged page trees only when reading them
                raise UnreadableDocumentError(f"damaged PDF ({type(exc).__name__}: {exc})") from None
            title = (pdf.get_metadata_dict().get("Title") or "").strip() or None
        finally:
            pdf.close()
    if not pages:
        raise UnreadableDocumentError("PDF without pages")
    empty = [n for n, page in enumerate(pages, start=1) if not page.text.strip()]
    if len(empty) == len(pages):
        raise UnreadableDocumentError(
            f"no text layer on any of its {len(pages)} page(s): a scanned PDF? (no OCR here; nothing indexed)"
        )
    starts: list[int] = []
    offset = 0
    for page in pages:
        starts.append(offset)
        offset += len(page.text) + len(PAGE_BREAK)
    text = PAGE_BREAK.join(page.text for page in pages)
    blocks = _blocks(text, pages, starts, _furniture(pages))
    if title is None:
        title = next((text[b.start : b.end] for b in blocks if b.kind == "heading"), None)
    warnings = []
    if empty:
        listed = ", ".join(map(str, empty[:10])) + (" …" if len(empty) > 10 else "")
        warnings.append(f"page(s) {listed} of {len(pages)} have no text layer (scanned?); their content is not indexed")
    return Extracted(text=text, blocks=blocks, title=title, pages=starts, warnings=warnings)


def _furniture_key(line: str) -> str:
    return re.sub(r"\d+", "#", " ".join(line.lower().split()))


def _furniture(pages: list[PageText]) -> set[tuple[int, int]]:
    """(page index, line index) of running headers, footers and page numbers."""
    in_band = {
        (p, i)
        for p, page in enumerate(pages)
        for i, line in enumerate(page.lines)
        if (line.top < FURNITURE_BAND or line.top > 1 - FURNITURE_BAND)
        and len(page.text[line.start : line.end].split()) <= FURNITURE_MAX_WORDS
    }
    keys = {(p, i): _furniture_key(pages[p].text[pages[p].lines[i].start : pages[p].lines[i].end]) for p, i in in_band}
    pages_with = Counter(key for _, key in {(p, key) for (p, _), key in keys.items()})
    with_text = sum(bool(page.lines) for page in pages)
    recurring = max(2, math.ceil(with_text / 2))
    return {
        (p, i)
        for (p, i), key in keys.items()
        if pages_with[key] >= recurring
        or PAGE_NUMBER.match(pages[p].text[pages[p].lines[i].start : pages[p].lines[i].end])
    }


def _blocks(text: str, pages: list[PageText], starts: list[int], furniture: set[tuple[int, int]]) -> list[Block]:
    """Runs of kept lines, cut where furniture or a blank line lies between them, after a short
    line that ends a sentence (a paragraph's last line), and around short title-like lines."""
    blocks: list[Block] = []
    current: Block | None = None
    for p, page in enumerate(pages):
        # The width of a full line: most lines of a page run to it, headings and last lines do not.
        lengths = sorted(line.end - line.start for i, line in enumerate(page.lines) if (p, i) not in furniture)
        typical = lengths[int(0.9 * (len(lengths) - 1))] if lengths else 0
        for i, line in enumerate(page.lines):
            if (p, i) in furniture:
                current = None
                continue
            start, end = starts[p] + line.start, starts[p] + line.end
            body = text[start:end]
            heading = (
                len(body.split()) <= FURNITURE_MAX_WORDS
                and not SENTENCE_END.search(body)
                and body[:1].isupper()
                and len(body) < 0.6 * typical
            )
            if (
                current is not None
                and not heading
                and not text[current.end : start].strip()
                and text[current.end : start].count("\n") <= 1
            ):
                current.end = end
            else:
                current = Block(start=start, end=end, kind="heading" if heading else "paragraph")
                blocks.append(current)
            if heading or (SENTENCE_END.search(body) and len(body) < 0.8 * typical):
                current = None
    return blocks


class SourceUnavailableError(UnknownDocumentError):
    """The PDF a document was read from is gone or changed (HTTP 404); the message says which
    and what to do. The index keeps the text, not the file: its pages are read from the file."""


def source_pdf(doc: Document, other_roots: list[Path]) -> bytes:
    """The bytes of the PDF `doc` was indexed from, found at its path or under another corpus
    root (a moved folder), and checked against the checksum taken when it was indexed."""
    candidates = [Path(doc.path), *(root / doc.doc_id for root in other_roots)]
    changed = None
    for candidate in dict.fromkeys(candidates):
        try:
            data = candidate.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == doc.sha256:
            return data
        changed = changed or candidate
    if changed is not None:
        raise SourceUnavailableError(
            f"{changed} has changed since it was indexed, so its pages no longer match the text; run `rag index` to read it again"
        )
    raise SourceUnavailableError(
        f"the PDF is no longer at {doc.path} (moved or deleted), so its pages cannot be shown; "
        "index it again from where it is now to see them"
    )


@dataclass
class PageBoxes:
    page: int  # 1-based
    width: float  # page size in PDF points
    height: float
    # Highlight rectangles (x, y, width, height) in points from the page's top-left corner.
    boxes: list[tuple[float, float, float, float]]


def span_boxes(data: bytes, doc: Document, start: int, end: int) -> list[PageBoxes]:
    """For each page the span doc.text[start:end] touches, the boxes of its characters."""
    if not doc.pages or not 0 <= start < end <= len(doc.text):
        return []
    out: list[PageBoxes] = []
    fields = doc.page_fields(start, end)
    with PDFIUM_LOCK:
        pdf = open_pdf(data)
        try:
            for number in fields.get("pages") or [fields["page"]]:
                page = pdf[number - 1]
                page_start = doc.pages[number - 1]
                page_end = doc.pages[number] - len(PAGE_BREAK) if number < len(doc.pages) else len(doc.text)
                extracted = page_text(page)
                if extracted.text != doc.text[page_start:page_end]:
                    raise SourceUnavailableError(
                        f"page {number} of {doc.path} reads differently from when it was indexed; run `rag index`"
                    )
                local_start, local_end = max(start, page_start) - page_start, min(end, page_end) - page_start
                if local_start >= local_end:
                    continue
                first_char, last_char = extracted.chars[local_start], extracted.chars[local_end - 1]
                width, height = page.get_size()
                textpage = page.get_textpage()
                try:
                    rects = [
                        textpage.get_rect(i)
                        for i in range(textpage.count_rects(first_char, last_char - first_char + 1))
                    ]
                finally:
                    textpage.close()
                boxes = [(left, height - top, right - left, top - bottom) for left, bottom, right, top in rects]
                out.append(PageBoxes(number, width, height, boxes))
        finally:
            pdf.close()
    return out


def render_page(data: bytes, number: int, width_px: int) -> bytes:
    """1-based page `number` as a PNG `width_px` wide."""
    with PDFIUM_LOCK:
        pdf = open_pdf(data)
        try:
            if not 1 <= number <= len(pdf):
                raise ValueError(f"page {number} is not in this PDF (it has {len(pdf)})")
            page = pdf[number - 1]
            image = page.render(scale=width_px / page.get_width()).to_pil()
        finally:
            pdf.close()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
