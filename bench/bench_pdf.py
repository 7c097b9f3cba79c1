"""PDF reading: pages/s extracted and indexed, and extraction quality, pypdfium2 against
pdfplumber (when installed: `pip install pdfplumber`; it is not a dependency).

The corpus is written here with fpdf2 from the seed documents' prose (ASCII-folded for the
core fonts): every page has a running header and a "Page N of M" footer; every fifth page is
set in two columns, every seventh holds a table. Quality is judged against what was printed:
body lines found verbatim, two-column pages read column by column (each column's lines in
order, not interleaved with the other's), header/footer lines kept out of the passages.

Timings are best-of-rounds in one process with the extractors interleaved; the load average
is printed beside them, since other processes share the 2 cores."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import unicodedata
from pathlib import Path

from fpdf import FPDF
from run_all import SEEDS_DIR, markdown_table, rich_table, write_section

from rag.config import Settings
from rag.embed.encoder import Embedder
from rag.ingest.pdf import read_pdf
from rag.service import RagService

HEADER = "Field Report - Internal"


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _prose() -> list[str]:
    words = _ascii(" ".join(p.read_text(encoding="utf-8") for p in sorted(SEEDS_DIR.iterdir()))).split()
    return [w for w in words if w.isascii()]


def _wrap(pdf: FPDF, words: list[str], width: float) -> list[str]:
    lines, line = [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if pdf.get_string_width(trial) > width and line:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def write_corpus(folder: Path, documents: int, pages: int) -> dict[str, list[dict]]:
    """PDFs in `folder`; returns, per file, what each page holds (body lines, columns)."""
    words = _prose()
    cursor = 0
    truth: dict[str, list[dict]] = {}
    for d in range(documents):
        pdf = FPDF(format="A4")
        pdf.set_auto_page_break(False)
        pdf.set_font("Helvetica", size=10)
        printed = []
        for p in range(1, pages + 1):
            pdf.add_page()
            pdf.set_xy(15, 8)
            pdf.cell(0, 5, HEADER)
            pdf.set_xy(15, 285)
            pdf.cell(0, 5, f"Page {p} of {pages}", align="C")
            page: dict = {"lines": [], "columns": []}
            if p % 5 == 0:
                for x in (15, 110):
                    column = _wrap(pdf, words[cursor : cursor + 220], 88)[:40]
                    cursor = (cursor + 220) % (len(words) - 400)
                    for i, line in enumerate(column):
                        pdf.set_xy(x, 25 + i * 6)
                        pdf.cell(88, 6, line)
                    page["lines"] += column
                    page["columns"].append(column)
            else:
                body = _wrap(pdf, words[cursor : cursor + 420], 180)[:40]
                cursor = (cursor + 420) % (len(words) - 500)
                y = 25
                if p % 7 == 0:
                    pdf.set_xy(15, y)
                    with pdf.table(width=180) as table:
                        for r in range(5):
                            row = table.row()
                            for c in range(3):
                                row.cell(f"{words[(cursor + r * 3 + c) % len(words)]} {r * 3 + c}")
                    y = 70
                    body = body[:32]
                for i, line in enumerate(body):
                    pdf.set_xy(15, y + i * 6)
                    pdf.cell(180, 6, line)
                page["lines"] += body
            printed.append(page)
        name = f"report-{d:03d}.pdf"
        (folder / name).write_bytes(bytes(pdf.output()))
        truth[name] = printed
    return truth


def pdfium_raw(data: bytes) -> list[str]:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(data)
    try:
        out = []
        for i in range(len(pdf)):
            textpage = pdf[i].get_textpage()
            out.append(textpage.get_text_range().replace("\r\n", "\n"))
            textpage.close()
        return out
    finally:
        pdf.close()


def cited_rag_reader(data: bytes) -> list[str]:
    extracted = read_pdf(data)
    return [extracted.text[b.start : b.end] for b in extracted.blocks]  # what gets indexed


def pdfplumber_text(data: bytes) -> list[str]:
    import io

    import pdfplumber

    with pdfplumber.open(io.BytesIO(data)) as pdf:
        return [page.extract_text() or "" for page in pdf.pages]


def quality(texts: list[str], pages: list[dict], pages_total: int) -> tuple[int, int, int, int, int]:
    """(body lines found, body lines, two-column pages read in column order, two-column pages,
    header/footer lines present) for one file, on the joined output of an extractor."""
    joined = "\n".join(texts)
    found = sum(line in joined for page in pages for line in page["lines"])
    lines = sum(len(page["lines"]) for page in pages)
    two = [page for page in pages if page["columns"]]
    ordered = sum(all("\n".join(column[:6]) in joined for column in page["columns"]) for page in two)
    furniture = joined.count(HEADER) + sum(f"Page {p} of {pages_total}" in joined for p in range(1, pages_total + 1))
    return found, lines, ordered, len(two), furniture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    extractors = {"pypdfium2 (raw text)": pdfium_raw, "cited-rag reader (pypdfium2 + layout rules)": cited_rag_reader}
    try:
        import pdfplumber  # noqa: F401

        extractors["pdfplumber extract_text"] = pdfplumber_text
    except ImportError:
        print("pdfplumber not installed: compared with pypdfium2 only")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pdfs"
        folder.mkdir()
        truth = write_corpus(folder, args.documents, args.pages)
        files = {name: (folder / name).read_bytes() for name in truth}
        total_pages = args.documents * args.pages

        best: dict[str, float] = {name: float("inf") for name in extractors}
        loads: dict[str, str] = {}
        scores: dict[str, list[int]] = {}
        for _ in range(args.rounds):
            for name, extract in extractors.items():
                clock = time.perf_counter()
                outputs = {f: extract(data) for f, data in files.items()}
                best[name] = min(best[name], time.perf_counter() - clock)
                loads[name] = open("/proc/loadavg").read().split()[0]
                scores[name] = [sum(col) for col in zip(*(quality(outputs[f], truth[f], args.pages) for f in files))]
        reference = best["pypdfium2 (raw text)"]
        rows = []
        for name in extractors:
            found, lines, ordered, two, furniture = scores[name]
            rows.append(
                [
                    name,
                    f"{total_pages / best[name]:.0f}",
                    f"{best[name] / reference:.1f}x",
                    loads[name],
                    f"{found}/{lines} ({found / lines:.1%})",
                    f"{ordered}/{two}",
                    furniture,
                ]
            )

        embedder = Embedder(Settings().embedding)
        embedder.encode(["warm up"])
        service = RagService(Settings().replace(index={"dir": Path(tmp) / "index", "corpus_dir": folder}))
        service.embedder = embedder
        clock = time.perf_counter()
        report = service.update(paths=[folder])
        build = time.perf_counter() - clock
        index_load = open("/proc/loadavg").read().split()[0]

    headers = [
        "extractor",
        "pages/s",
        "time vs raw pypdfium2",
        "load avg",
        "body lines found verbatim",
        "2-column pages in column order",
        "header/footer lines kept",
    ]
    from rich.console import Console

    Console().print(rich_table("PDF extraction", headers, rows))
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    indexing = (
        f"`rag index` path (`RagService.update`, default settings, model loaded before timing) on the same "
        f"{args.documents} PDFs: {total_pages} pages, {report.chunks} passages in {build:.1f}s = "
        f"**{total_pages / build:.1f} pages/s** indexed (load average {index_load}); stages: {stages}. "
        f"Reading the PDFs (the `load` stage, {total_pages / report.seconds['load']:.0f} pages/s) is "
        f"{report.seconds['load'] / build:.1%} of it; embedding ({report.chunks / report.seconds['embed']:.1f} passages/s "
        "at this load average) is nearly all the rest."
    )
    print(indexing)
    body = (
        f"{args.documents} generated PDFs x {args.pages} A4 pages (fpdf2; seed prose; running header and footer on every "
        f"page, two columns on every fifth page, a table on every seventh), best of {args.rounds} rounds, extractors "
        f"interleaved; pages/s over all {total_pages} pages. Command: `python bench/bench_pdf.py --documents "
        f"{args.documents} --pages {args.pages}` (with `pdfplumber` installed for its row).\n\n"
        + markdown_table(headers, rows)
        + "\n\n"
        + indexing
        + "\n\nThe cited-rag reader's row counts what it hands to indexing (the blocks): the header and footer lines stay "
        "in the stored text, out of the passages. pdfplumber joins the two columns line by line across the page, "
        "so no column reads in order."
    )
    write_section("bench_pdf", "PDF pages extracted and indexed (issue 14)", body)
    print(f"threads: {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
