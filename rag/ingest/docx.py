"""Read Word (.docx) files with python-docx into one text: paragraphs, headings, list items
and tables in document order, one block each, separated by blank lines. Headings become
heading blocks (so they join the passage they head and give the document its title); list
items keep a bullet or their number; a table is one block with one line per row and its
cells separated by " | "."""

from __future__ import annotations

import io
import re
import zipfile

from rag.ingest.formats import Extracted, UnreadableDocumentError
from rag.schema import Block

HEADING_STYLE = re.compile(r"^(Title|Subtitle|Heading \d)$")
BLOCK_SEPARATOR = "\n\n"


def read_docx(data: bytes) -> Extracted:
    """The text and blocks of a .docx file given as bytes; UnreadableDocumentError if it is not one."""
    from docx import Document as open_docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    try:
        document = open_docx(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UnreadableDocumentError(f"not a readable Word file ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # lxml and zip errors of a damaged file have many types
        raise UnreadableDocumentError(f"damaged Word file ({type(exc).__name__}: {exc})") from None

    parts: list[tuple[str, str]] = []  # (text, kind)
    number = 0  # position in the current numbered list
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            number = 0
            rows = [" | ".join(dict.fromkeys(c.text.strip() for c in row.cells if c.text.strip())) for row in item.rows]
            text = "\n".join(row for row in rows if row)
            if text:
                parts.append((text, "paragraph"))
            continue
        text = item.text.strip()
        style = item.style.name if item.style is not None else ""
        if not text:
            continue
        if HEADING_STYLE.match(style):
            number = 0
            parts.append((text, "heading"))
        elif style.startswith("List Number"):
            number += 1
            parts.append((f"{number}. {text}", "paragraph"))
        # A list item by direct numbering rather than a List style: python-docx exposes numPr only on the XML.
        elif style.startswith("List") or item._p.pPr is not None and item._p.pPr.numPr is not None:
            parts.append((f"• {text}", "paragraph"))
        else:
            number = 0
            parts.append((text, "paragraph"))

    blocks: list[Block] = []
    pieces: list[str] = []
    offset = 0
    for text, kind in parts:
        if pieces:
            pieces.append(BLOCK_SEPARATOR)
            offset += len(BLOCK_SEPARATOR)
        blocks.append(Block(start=offset, end=offset + len(text), kind=kind))
        pieces.append(text)
        offset += len(text)
    full = "".join(pieces)
    title = (document.core_properties.title or "").strip() or next(
        (full[b.start : b.end] for b in blocks if b.kind == "heading"), None
    )
    return Extracted(text=full, blocks=blocks, title=title)
