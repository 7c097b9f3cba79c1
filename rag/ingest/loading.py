"""Read plain text, Markdown, HTML, PDF and Word (.docx) files into Documents.

Text is decoded as UTF-8 without newline translation, so offsets match the bytes on disk as
decoded. Files that cannot be documents (binary, empty, undecodable, unknown type, over the
size limit) are skipped with a warning naming the file; they never abort a run."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import BadInputError
from rag.ingest.docx import read_docx
from rag.ingest.formats import Extracted, UnreadableDocumentError
from rag.ingest.pdf import read_pdf
from rag.schema import Document

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".text", ""}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
# Binary formats: their readers build the text and say which spans to index (rag/ingest/).
BINARY_READERS = {".pdf": ("pdf", read_pdf), ".docx": ("docx", read_docx)}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | set(BINARY_READERS)
SUPPORTED_LIST = ".txt, .md, .html, .pdf or .docx"

SOURCE_URL = re.compile(r"^[ \t]*Source:[ \t]*(https?://\S+)", re.MULTILINE | re.IGNORECASE)
MARKDOWN_TITLE = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


@dataclass
class LoadReport:
    documents: list[Document] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        log.warning("skipped %s: %s", path, reason)


def discover(path: Path) -> tuple[Path, list[Path]]:
    """Return (corpus root, files). A folder is its own root; a file's root is its folder."""
    if not path.exists():
        raise BadInputError(f"no such file or folder: {path}")
    if path.is_file():
        return path.parent.resolve(), [path.resolve()]
    files = sorted(
        p.resolve()
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    return path.resolve(), files


def load_file(path: Path, root: Path, report: LoadReport, max_bytes: int) -> Document | None:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        report.skip(path, f"unsupported file type '{suffix}' (use {SUPPORTED_LIST})")
        return None
    try:
        stat = path.stat()
        if stat.st_size > max_bytes:
            report.skip(path, f"{stat.st_size:,} bytes, over the limit of {max_bytes:,} (index.max_file_bytes)")
            return None
        # One byte more than the limit: a file that grew after stat() is still caught.
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        report.skip(path, f"cannot read: {exc.strerror or exc}")
        return None
    if len(data) > max_bytes:
        report.skip(path, f"over the limit of {max_bytes:,} bytes (index.max_file_bytes)")
        return None
    doc_id = path.relative_to(root).as_posix()
    sha = hashlib.sha256(data).hexdigest()
    if suffix in BINARY_READERS:
        fmt, reader = BINARY_READERS[suffix]
        try:
            extracted: Extracted = reader(data)
        except UnreadableDocumentError as exc:
            report.skip(path, str(exc))
            return None
        if not extracted.text.strip():
            report.skip(path, "no text (empty file or nothing extractable)")
            return None
        for warning in extracted.warnings:
            log.warning("%s: %s", path, warning)
        return Document(
            doc_id=doc_id,
            path=str(path),
            root=str(root),
            text=extracted.text,
            sha256=sha,
            format=fmt,
            title=extracted.title,
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            pages=extracted.pages,
            blocks=extracted.blocks,
        )
    if b"\x00" in data[:8192]:
        report.skip(path, "binary file")
        return None
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.skip(path, f"not UTF-8 text (byte {exc.start})")
        return None
    if suffix in HTML_SUFFIXES:
        text, title, url = _extract_html(raw)
        fmt = "html"
    else:
        text, title, url = raw, None, None
        fmt = "markdown" if suffix in MARKDOWN_SUFFIXES else "text"
        if fmt == "markdown" and (m := MARKDOWN_TITLE.search(text)):
            title = m.group(1).strip()
    if not text.strip():
        report.skip(path, "no text (empty file or nothing extractable)")
        return None
    if url is None and (m := SOURCE_URL.search(text)):
        url = m.group(1)
    return Document(
        doc_id=doc_id,
        path=str(path),
        root=str(root),
        text=text,
        sha256=sha,
        format=fmt,
        title=title,
        source_url=url,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
    )


def _extract_html(html: str) -> tuple[str, str | None, str | None]:
    import trafilatura

    text = trafilatura.extract(html, include_comments=False, include_tables=True, favor_recall=True) or ""
    meta = trafilatura.extract_metadata(html)
    title = meta.title if meta and meta.title else None
    url = meta.url if meta and meta.url else None
    return text, title, url


def load_paths(paths: list[Path], max_bytes: int) -> tuple[LoadReport, list[Path]]:
    """Load every supported file under `paths` of at most `max_bytes`. Returns the report and the
    roots given as folders (whose vanished files are deletions)."""
    report = LoadReport()
    synced_roots: list[Path] = []
    for path in paths:
        root, files = discover(path)
        if path.is_dir():
            synced_roots.append(root)
        for file in files:
            if (doc := load_file(file, root, report, max_bytes)) is not None:
                report.documents.append(doc)
    return report, synced_roots
