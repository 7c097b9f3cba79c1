"""Find the main text of scraped pages without rewriting it.

Cleaning only decides which spans of a document to keep; it never edits text. A document is
cut into blocks (paragraph lines, or hard-wrapped paragraphs, or list items with their
indented continuation), and each block is judged by jusText's algorithm (stop-word density,
length, and the class of its neighbours; the library's own classifier does the work), after
three general rules have marked certain blocks as boilerplate outright:

* lines that recur across unrelated documents (comment widgets, share bars, footers);
  documents that share most of their lines (one page scraped twice) count as one here;
* blocks with fewer than two real words (".jpg)", "Comment (0)", "NEWSLETTER");
* link lists: three or more list items in a row whose heads are titles, not sentences
  ("Recent news", "Related articles" teasers).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cache
from itertools import combinations
from typing import TypeVar

from justext import get_stoplist
from justext.core import classify_paragraphs, revise_paragraph_classification

from rag.config import CleaningSettings
from rag.schema import Block, Document

log = logging.getLogger(__name__)

BULLET = re.compile(r"^(?:[•·▪►‣◦*\-–]|\d{1,3}[.)])\s+")
WORD = re.compile(r"[^\W\d_]{2,}")
SENTENCE_END = re.compile(r"[.!?:;…][\"'”’)\]]*$")
# Lines sharing at least this fraction of their lines belong to copies of one page.
SAME_PAGE_OVERLAP = 0.5
# Lines found in more documents than this are boilerplate for sure; skip them when pairing pages.
PAIRING_MAX_DF = 50
HARD_WRAP_MAX_LINE = 100


@dataclass
class _Line:
    start: int
    end: int
    indent: int
    text: str


@dataclass
class RawBlock:
    start: int
    end: int
    text: str
    lines: list[_Line]
    is_list_item: bool = False

    @property
    def head(self) -> str:
        return BULLET.sub("", self.lines[0].text)


def _lines(text: str) -> list[_Line | None]:
    """Non-blank lines with the offsets of their stripped content; None marks a blank line."""
    out: list[_Line | None] = []
    pos = 0
    for raw in text.splitlines(keepends=True):
        body = raw.rstrip("\r\n")
        stripped = body.strip()
        if not stripped:
            out.append(None)
        else:
            lead = len(body) - len(body.lstrip())
            start = pos + lead
            out.append(_Line(start, start + len(stripped), len(body[:lead].expandtabs(4)), stripped))
        pos += len(raw)
    return out


def _is_title_like(text: str) -> bool:
    words = text.split()
    letters = text.lstrip("\"'“‘([")
    return 0 < len(words) <= 20 and not SENTENCE_END.search(text) and letters[:1].isupper()


def split_blocks(text: str) -> list[RawBlock]:
    """Cut a document into blocks: list items (with indented continuation lines), paragraph
    lines, and hard-wrapped paragraphs (runs of short lines that do not end sentences)."""
    lines = _lines(text)
    blocks: list[RawBlock] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line is None:
            i += 1
            continue
        if BULLET.match(line.text):
            members = [line]
            j = i + 1
            while j < len(lines) and (lines[j] is None or lines[j].indent > line.indent):
                if lines[j] is not None:
                    members.append(lines[j])
                j += 1
            blocks.append(_block(text, members, is_list_item=True))
            i = j
            continue
        members = [line]
        j = i + 1
        # Join hard-wrapped continuation lines: the previous line is short and ends mid-sentence.
        while (
            j < len(lines)
            and lines[j] is not None
            and not BULLET.match(lines[j].text)
            and len(members[-1].text) <= HARD_WRAP_MAX_LINE
            and not SENTENCE_END.search(members[-1].text)
            and len(lines[j].text) <= HARD_WRAP_MAX_LINE + 20
            and lines[j].text[:1].islower()
        ):
            members.append(lines[j])
            j += 1
        blocks.append(_block(text, members))
        i = j
    return blocks


def _block(text: str, members: list[_Line], is_list_item: bool = False) -> RawBlock:
    start, end = members[0].start, members[-1].end
    return RawBlock(start, end, text[start:end], members, is_list_item)


def _normalise(line: str) -> str:
    return " ".join(line.lower().split())


def repeated_lines(documents: list[Document], settings: CleaningSettings) -> set[str]:
    """Short lines that occur in at least `repeated_line_min_docs` unrelated documents."""
    return repeated_among({doc.doc_id: document_lines(doc) for doc in documents}, settings)


def document_lines(doc: Document) -> set[str]:
    """The normalised distinct lines of a document: all `repeated_lines` reads of it."""
    return {_normalise(raw) for raw in doc.text.splitlines() if raw.strip()}


def repeated_among(doc_lines: dict[str, set[str]], settings: CleaningSettings) -> set[str]:
    """`repeated_lines` from the lines of every document (doc id -> `document_lines`)."""
    line_docs: dict[str, set[str]] = defaultdict(set)
    for doc_id, lines in doc_lines.items():
        for line in lines:
            line_docs[line].add(doc_id)

    shared: Counter[tuple[str, str]] = Counter()
    for docs in line_docs.values():
        if 1 < len(docs) <= PAIRING_MAX_DF:
            shared.update(combinations(sorted(docs), 2))
    parent = {doc_id: doc_id for doc_id in doc_lines}
    for (a, b), n in shared.items():
        if n >= SAME_PAGE_OVERLAP * min(len(doc_lines[a]), len(doc_lines[b])):
            parent[find_root(parent, a)] = find_root(parent, b)

    return {
        line
        for line, docs in line_docs.items()
        if len(line.split()) <= settings.repeated_line_max_words
        and len({find_root(parent, d) for d in docs}) >= settings.repeated_line_min_docs
    }


Node = TypeVar("Node")


def find_root(parent: dict[Node, Node], item: Node) -> Node:
    """The root of `item` in the union-find forest `parent`, halving the path on the way."""
    while parent[item] != item:
        parent[item] = parent[parent[item]]
        item = parent[item]
    return item


class _Paragraph:
    """The attributes jusText's classifier reads from its own Paragraph objects."""

    def __init__(self, block: RawBlock, heading: bool, link_chars: int):
        self.block = block
        self.text = " ".join(block.text.split())
        self.dom_path = "body.h2" if heading else ("body.ul.li" if block.is_list_item else "body.p")
        self.chars_count_in_links = link_chars
        self.is_heading = heading
        self.heading = heading
        self.cf_class = ""
        self.class_type = ""

    def __len__(self) -> int:
        return len(self.text)

    def stopwords_density(self, stopwords: frozenset[str]) -> float:
        words = self.text.split()
        return sum(w.lower() in stopwords for w in words) / len(words) if words else 0.0

    def links_density(self) -> float:
        return self.chars_count_in_links / len(self.text) if self.text else 0.0


def _is_prose(text: str) -> bool:
    """Full sentences: long enough and ending like a sentence (not a caption, URL or label)."""
    return len(WORD.findall(text)) >= 12 and bool(SENTENCE_END.search(text))


@cache
def _stoplist(language: str) -> frozenset[str]:
    return frozenset(get_stoplist(language))


def _link_list_items(blocks: list[RawBlock]) -> set[int]:
    """Indexes of list items in runs of >= 3 whose heads are titles (teaser and link lists)."""
    marked: set[int] = set()
    run: list[int] = []
    for i, block in enumerate([*blocks, None]):
        if block is not None and block.is_list_item and _is_title_like(block.head):
            run.append(i)
            continue
        if len(run) >= 3:
            marked.update(run)
        run = []
    return marked


def clean_document(doc: Document, boilerplate_lines: set[str], settings: CleaningSettings) -> list[Block]:
    """The spans of `doc` worth indexing, in order."""
    raw_blocks = split_blocks(doc.text)
    if not settings.enabled:
        return [Block(start=b.start, end=b.end) for b in raw_blocks]
    link_items = _link_list_items(raw_blocks)
    paragraphs: list[_Paragraph] = []
    hard_bad: set[int] = set()
    for i, block in enumerate(raw_blocks):
        heading = not block.is_list_item and len(block.lines) == 1 and _is_title_like(block.text)
        paragraphs.append(_Paragraph(block, heading, len(block.text) if i in link_items else 0))
        if i in link_items or len(WORD.findall(block.text)) < 2 or _normalise(block.text) in boilerplate_lines:
            hard_bad.add(i)
    classify_paragraphs(paragraphs, _stoplist(settings.language))
    for i, paragraph in enumerate(paragraphs):
        if i in hard_bad:
            paragraph.cf_class = "bad"
        elif paragraph.cf_class == "bad" and _is_prose(paragraph.text):
            # Dense, name-heavy prose has few stop words; let its neighbours decide instead.
            paragraph.cf_class = "neargood"
    revise_paragraph_classification(paragraphs)

    kept = [p for p in paragraphs if p.class_type == "good"]
    if not kept:
        # Short texts (an abstract, a note) have no surrounding page to judge them against.
        if len(paragraphs) >= 3:
            log.warning("cleaning found no main text in %s; keeping all but obvious boilerplate", doc.doc_id)
        kept = [p for i, p in enumerate(paragraphs) if i not in hard_bad]
    return [Block(start=p.block.start, end=p.block.end, kind="heading" if p.heading else "paragraph") for p in kept]


def clean_corpus(documents: list[Document], settings: CleaningSettings) -> dict[str, list[Block]]:
    """Kept blocks per document. PDF and Word documents come with their blocks from their
    reader (rag/ingest/), which knows their layout; the rules here are for scraped pages."""
    pages = [doc for doc in documents if doc.blocks is None]
    boilerplate = repeated_lines(pages, settings) if settings.enabled else set()
    return {doc.doc_id: document_blocks(doc, boilerplate, settings) for doc in documents}


def document_blocks(doc: Document, boilerplate_lines: set[str], settings: CleaningSettings) -> list[Block]:
    """The kept blocks of one document: its reader's, or those cleaning keeps of a page."""
    return doc.blocks if doc.blocks is not None else clean_document(doc, boilerplate_lines, settings)


def heading_title(doc: Document, blocks: list[Block]) -> str | None:
    """The heading closest before the first kept paragraph, if the page has one."""
    title = None
    for block in blocks:
        if block.kind != "heading":
            break
        title = doc.text[block.start : block.end]
    return title
