"""PDF and Word files written by the tests themselves (fpdf2, python-docx), with the layouts
that trip extractors up: running headers and footers, two columns, a table, a word hyphenated
across a line break, a page with no text layer, encryption."""

from __future__ import annotations

import io
from pathlib import Path

from fpdf import FPDF

HEADER = "Northwind Field Notes"
TITLE = "Glaciers and Rivers of the Northern Valleys"
# A word hyphenated across a line break: stored as written, searchable joined.
HYPHENATED_LINES = (
    "Researchers who study the ice call this discipline glaci-",
    "ology, and its measurements go back to the eighteenth century.",
)
INTRO = (
    "The northern valleys hold seventeen glaciers that feed the Silver River. Each summer the "
    "meltwater raises the river by almost two metres, and the town of Harrowgate measures it "
    "at the old stone bridge every morning at seven."
)
LEFT_COLUMN = (
    "The left column explains that the Osprey Glacier lost",
    "forty metres of thickness between 1990 and 2020,",
    "mostly during the three hottest summers on record.",
    "Its tongue now ends above the lower waterfall.",
)
RIGHT_COLUMN = (
    "The right column turns to the Silver River delta,",
    "where sediment carried by the meltwater builds a",
    "new sandbank of about two hectares every decade.",
    "Herons nest there from April to late June.",
)
TABLE_ROWS = (
    ("Glacier", "Area (km2)", "Retreat (m/yr)"),
    ("Osprey Glacier", "12.4", "18"),
    ("Kestrel Glacier", "7.9", "11"),
    ("Merlin Glacier", "3.1", "25"),
)
TABLE_NOTE = "The Merlin Glacier retreats fastest of the three, twenty-five metres a year, despite its small area."


def _page_furniture(pdf: FPDF, page: int, pages: int) -> None:
    pdf.set_font("Helvetica", size=9)
    pdf.set_xy(15, 8)
    pdf.cell(0, 5, HEADER)
    pdf.set_xy(15, 284)
    pdf.cell(0, 5, f"Page {page} of {pages}", align="C")
    pdf.set_font("Helvetica", size=11)


def _lines(pdf: FPDF, x: float, y: float, lines: tuple[str, ...], width: float = 180) -> float:
    for line in lines:
        pdf.set_xy(x, y)
        pdf.cell(width, 6, line)
        y += 6
    return y


def report_pdf(path: Path, *, encrypt_with: str | None = None) -> Path:
    """Five pages: running header and "Page N of 5" footer on every page with text; page 1 a
    heading, prose and a hyphenated line break; page 2 two columns; page 3 a table; page 4
    holds only a picture (no text layer); page 5 a paragraph running on from page 4's."""
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_title(TITLE)
    if encrypt_with is not None:
        pdf.set_encryption(owner_password="owner-" + encrypt_with, user_password=encrypt_with)
    pages = 5
    pdf.add_page()
    _page_furniture(pdf, 1, pages)
    pdf.set_font("Helvetica", "B", 16)
    pdf.set_xy(15, 25)
    pdf.cell(0, 10, TITLE)
    pdf.set_font("Helvetica", size=11)
    pdf.set_xy(15, 40)
    pdf.multi_cell(180, 6, INTRO)
    _lines(pdf, 15, 70, HYPHENATED_LINES)

    pdf.add_page()
    _page_furniture(pdf, 2, pages)
    _lines(pdf, 15, 30, LEFT_COLUMN, width=88)
    _lines(pdf, 110, 30, RIGHT_COLUMN, width=88)

    pdf.add_page()
    _page_furniture(pdf, 3, pages)
    pdf.set_xy(15, 30)
    with pdf.table(width=180, col_widths=(80, 50, 50)) as table:
        for row in TABLE_ROWS:
            cells = table.row()
            for value in row:
                cells.cell(value)
    pdf.set_xy(15, 70)
    pdf.multi_cell(180, 6, TABLE_NOTE)

    pdf.add_page()  # a scanned-like page: a picture and no text
    pdf.image(_picture(), x=30, y=40, w=150)

    pdf.add_page()
    _page_furniture(pdf, 5, pages)
    pdf.set_xy(15, 30)
    pdf.multi_cell(
        180,
        6,
        "Winter closes the valley road at the first snowfall, and the gauging station at the bridge "
        "then reports by radio twice a week until the thaw in April.",
    )
    data = pdf.output()
    path.write_bytes(bytes(data))
    return path


def scanned_pdf(path: Path, pages: int = 2) -> Path:
    """A PDF of pictures only, as a scanner writes it: no text layer at all."""
    pdf = FPDF(format="A4")
    for _ in range(pages):
        pdf.add_page()
        pdf.image(_picture(), x=20, y=20, w=170)
    path.write_bytes(bytes(pdf.output()))
    return path


def _picture() -> io.BytesIO:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (300, 200), "white")
    draw = ImageDraw.Draw(image)
    for y in range(20, 180, 12):  # lines of "text" drawn as pixels
        draw.rectangle((20, y, 280 - (y % 50), y + 5), fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def report_docx(path: Path) -> Path:
    """A Word file with a title, headings, paragraphs, a bulleted and a numbered list, and a table."""
    from docx import Document

    doc = Document()
    doc.core_properties.title = "Harbour Maintenance Plan"
    doc.add_heading("Harbour Maintenance Plan", level=0)
    doc.add_paragraph(
        "The harbour of Eastmere is dredged every third spring so that ferries with a draught of four "
        "metres can still reach the northern quay at low tide."
    )
    doc.add_heading("Equipment", level=1)
    doc.add_paragraph("The dredger Marigold, built in 1978", style="List Bullet")
    doc.add_paragraph("Two survey boats with sonar", style="List Bullet")
    doc.add_heading("Schedule", level=1)
    doc.add_paragraph("Survey the channel depth in February.", style="List Number")
    doc.add_paragraph("Dredge the northern quay in March.", style="List Number")
    table = doc.add_table(rows=3, cols=3)
    for r, row in enumerate(
        (("Berth", "Depth (m)", "Last dredged"), ("North quay", "4.2", "2023"), ("Fish dock", "2.8", "2021"))
    ):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    doc.add_paragraph("Costs are shared between the town council and the ferry company, two thirds to one third.")
    doc.save(path)
    return path
