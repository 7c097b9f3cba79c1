"""HTML for the interface: answers with clickable citation markers, source cards with the
supporting span highlighted, search results, and the whole-document page. Document text is
always escaped: a document is data and must never become markup."""

from __future__ import annotations

import html
from urllib.parse import quote, urlencode

from rag.ingest.pdf import PAGE_BREAK, PageBoxes
from rag.schema import AnswerResponse, AnswerSentence, Citation, Document, SearchHit, page_label
from rag.verify.citations import MARKER

# Width in pixels the document page asks PDF pages to be rendered at (sharp at twice its column).
PAGE_WIDTH_PX = 1400

VERDICT = {
    True: ("supported", "✓ Supported"),
    False: ("unsupported", "✗ Not supported"),
    None: ("unchecked", "Not checked"),
}
STATUS_NOTE = {
    "unsupported": "not supported by its citations",
    "uncited": "makes a claim without a citation",
    "partly": "only partly supported by its citations",
}


def viewer_url(doc_id: str, start: int | None = None, end: int | None = None) -> str:
    """The whole-document page scrolled to a span, as an HTML-escaped href."""
    query = f"?{urlencode({'start': start, 'end': end})}" if start is not None and end is not None else ""
    return html.escape(f"view/{quote(doc_id)}{query}#span")


# Characters that Markdown (or the chat's LaTeX) reads as syntax, written as HTML character
# references so they show as themselves: model and document text never becomes markup.
_MARKDOWN_SYNTAX = str.maketrans({c: f"&#{ord(c)};" for c in "\\`*_{}[]()#+-!|~$<>&\"'"})


def markdown_text(text: str) -> str:
    """Text shown literally inside a Markdown message: no HTML element, link or image."""
    return " ".join(text.split()).translate(_MARKDOWN_SYNTAX)


def answer_markdown(response: AnswerResponse, turn: int) -> str:
    """The chat message, built from the answer's parsed sentences (escaped) and their citation
    ids, which become links to their source cards (ids unique per turn)."""
    if response.abstained:
        note = f"\n\n<small>{markdown_text(response.notice)}</small>" if response.notice else ""
        return f"**Not found in the documents.** The passages do not answer this question, so there is no answer to cite.{note}"
    text = " ".join(_sentence_markdown(s, turn) for s in response.sentences) or markdown_text(response.answer)
    lines = [text]
    flagged = [s for s in response.sentences if s.status in STATUS_NOTE]
    for sentence in flagged:
        lines.append(
            f"⚠️ <small>“{markdown_text(_shorten(MARKER.sub('', sentence.text), 80))}” {STATUS_NOTE[sentence.status]}.</small>"
        )
    if response.rewritten_question:
        lines.append(f"<small>Searched for: {markdown_text(response.rewritten_question)}</small>")
    if response.confidence is not None:
        lines.append(f'<small class="confidence">Confidence {response.confidence:.0%}</small>')
    if response.notice:
        lines.append(f"<small>{markdown_text(response.notice)}</small>")
    return "\n\n".join(lines)


def _sentence_markdown(sentence: AnswerSentence, turn: int) -> str:
    """A sentence with its citation links before its closing punctuation: "... 42 bells [1]."."""
    text = " ".join(MARKER.sub(" ", sentence.text).split())
    if not sentence.citations:
        return markdown_text(text)
    links = " " + "".join(f'<a class="cite" href="#cite-{turn}-{n}">[{n}]</a>' for n in sentence.citations)
    body, end = (text[:-1], text[-1]) if text[-1:] in ".!?" else (text, "")
    return f"{markdown_text(body.rstrip())}{links}{markdown_text(end)}"


def sources_html(turns: list[AnswerResponse]) -> str:
    """Every answer's sources, newest first and open; older ones folded away."""
    if not turns:
        return '<div class="sources-empty">Sources appear here: each citation with its passage, the supporting span highlighted, and whether it holds up.</div>'
    sections = []
    for turn in range(len(turns), 0, -1):
        body = _answer_sources(turns[turn - 1], turn)
        if turn == len(turns):
            sections.append(f'<section class="sources-turn">{body}</section>')
        else:
            question = html.escape(_shorten(turns[turn - 1].question, 70))
            sections.append(
                f'<details class="sources-turn"><summary>Sources for “{question}”</summary>{body}</details>'
            )
    return "".join(sections)


def _answer_sources(response: AnswerResponse, turn: int) -> str:
    if response.abstained:
        closest = "".join(_passage_card(hit) for hit in response.passages[:3])
        more = (
            f"<details><summary>Closest passages (none answers the question)</summary>{closest}</details>"
            if closest
            else ""
        )
        return f'<div class="abstained"><strong>Not found in the documents</strong><p>{html.escape(response.notice or "")}</p></div>{more}'
    cards = "".join(_citation_card(c, response, turn) for c in response.citations)
    return cards or '<div class="sources-empty">This answer carries no citations.</div>'


def _citation_card(citation: Citation, response: AnswerResponse, turn: int) -> str:
    css, label = VERDICT[citation.supported]
    passage = next((p for p in response.passages if p.chunk_id == citation.chunk_id), None)
    score = f" · score {citation.score:.2f}" if citation.score is not None else ""
    origin = (
        f'<div class="origin">{html.escape(citation.reason)}</div>'
        if citation.origin != "model" and citation.reason
        else ""
    )
    if passage is not None and passage.start <= citation.start and citation.end <= passage.end:
        before = passage.text[: citation.start - passage.start]
        after = passage.text[citation.end - passage.start :]
        body = f"{html.escape(before)}<mark>{html.escape(citation.text)}</mark>{html.escape(after)}"
    else:
        body = f"<mark>{html.escape(citation.text)}</mark>"
    return (
        f'<article class="source-card {css}" id="cite-{turn}-{citation.id}">'
        f'<header><span class="cite-num">[{citation.id}]</span><span class="source-title">{html.escape(citation.title)}</span>'
        f'<span class="verdict {css}">{label}</span></header>'
        f'<div class="passage">{body}</div>{origin}'
        f"<footer><span>{html.escape(citation.doc_id)}{_page_part(citation)} · characters {citation.start}–{citation.end}{score}</span>"
        f'<a href="{viewer_url(citation.doc_id, citation.start, citation.end)}" target="_blank" rel="noopener">{_open_label(citation)}</a></footer>'
        "</article>"
    )


def _page_part(ref: Citation | SearchHit) -> str:
    label = page_label(ref)
    return f' · <span class="page">{label}</span>' if label else ""


def _open_label(ref: Citation | SearchHit) -> str:
    label = page_label(ref)
    return f"Open {label} ↗" if label else "Open document ↗"


def _passage_card(hit: SearchHit, scores: bool = False) -> str:
    detail = ""
    if scores:
        parts = [f"fused {hit.score:.4f}"]
        if hit.dense_score is not None:
            parts.append(f"dense {hit.dense_score:.3f}")
        if hit.bm25_score is not None:
            parts.append(f"BM25 {hit.bm25_score:.2f}")
        detail = " · " + " · ".join(parts)
    also = f" · also in {html.escape(', '.join(sorted({a.doc_id for a in hit.also_in})))}" if hit.also_in else ""
    return (
        f'<article class="source-card passage-card"><header><span class="cite-num">{hit.rank}.</span>'
        f'<span class="source-title">{html.escape(hit.title)}</span></header>'
        f'<div class="passage">{html.escape(hit.text)}</div>'
        f"<footer><span>{html.escape(hit.doc_id)}{_page_part(hit)} · characters {hit.start}–{hit.end}{detail}{also}</span>"
        f'<a href="{viewer_url(hit.doc_id, hit.start, hit.end)}" target="_blank" rel="noopener">{_open_label(hit)}</a></footer></article>'
    )


def search_html(hits: list[SearchHit]) -> str:
    if not hits:
        return '<div class="sources-empty">No passages found.</div>'
    return "".join(_passage_card(hit, scores=True) for hit in hits)


def reading_html(hits: list[SearchHit]) -> str:
    """While the answer is being written: the passages it is written from."""
    items = "".join(f"<li>{html.escape(h.title)} <small>({html.escape(h.doc_id)})</small></li>" for h in hits)
    return f'<div class="reading"><strong>Reading {len(hits)} passages…</strong><ol>{items}</ol></div>'


def document_page(
    doc: Document,
    start: int | None,
    end: int | None,
    pages: list[PageBoxes] | None = None,
    notice: str | None = None,
) -> str:
    """A whole document with one span highlighted; links to it end in #span, which scrolls the
    span into view (the page runs no script: its Content-Security-Policy allows none). For a
    PDF, the pages the span lies on come first, rendered, with its character boxes outlined,
    and the text marks where each page begins."""
    text = doc.text
    anchor = ' id="span"' if not pages else ""
    if start is not None and end is not None and 0 <= start <= end <= len(text):
        body = (
            f"{html.escape(text[:start])}<mark{anchor}>{html.escape(text[start:end])}</mark>{html.escape(text[end:])}"
        )
    else:
        body = f"<span{anchor}></span>{html.escape(text)}"
    if doc.pages:  # the form feeds between pages become page labels
        parts = body.split(PAGE_BREAK)
        body = parts[0] + "".join(
            f'<span class="page-break">p. {n}</span>{part}' for n, part in enumerate(parts[1:], start=2)
        )
        body = f'<span class="page-break">p. 1</span>{body}'
    figures = "".join(_page_figure(doc.doc_id, page, first=i == 0) for i, page in enumerate(pages or []))
    note = f'<p class="notice">{html.escape(notice)}</p>' if notice else ""
    source = (
        f'<p class="meta"><a href="{html.escape(doc.source_url)}" rel="noopener">{html.escape(doc.source_url)}</a></p>'
        if doc.source_url
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(doc.display_title)}</title>
<style>
body {{ font: 17px/1.6 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #1f2933; }}
h1 {{ font-size: 1.5rem; line-height: 1.3; }} .meta {{ color: #52606d; font-size: .9rem; }}
.text {{ white-space: pre-wrap; overflow-wrap: anywhere; }}
mark {{ background: #ffe58a; padding: .1em 0; border-radius: 2px; box-shadow: 0 0 0 2px #ffe58a; }}
#span {{ scroll-margin-top: 40vh; }} /* the link's #span puts the span mid-screen, with no script */
figure.pdf-page {{ margin: 0 0 1.5rem; }} figure.pdf-page#span {{ scroll-margin-top: 1rem; }}
figure.pdf-page svg {{ width: 100%; height: auto; border: 1px solid #cbd2d9; box-shadow: 0 1px 6px rgba(0,0,0,.12); background: #fff; }}
figcaption {{ color: #52606d; font-size: .9rem; }}
.span-box {{ fill: #ffd43b; fill-opacity: .4; stroke: #e8590c; stroke-width: 1.2; }}
.page-break {{ display: block; margin: 1rem 0 .3rem; padding-top: .3rem; border-top: 1px dashed #cbd2d9; color: #7b8794; font-size: .8rem; }}
.notice {{ background: #fff4e6; border-left: 4px solid #f08c00; padding: .5rem .8rem; }}
</style></head><body>
<h1>{html.escape(doc.display_title)}</h1><p class="meta">{html.escape(doc.doc_id)}</p>{source}{note}
{figures}<div class="text">{body}</div>
</body></html>"""


def _page_figure(doc_id: str, page: PageBoxes, first: bool) -> str:
    """A rendered page (an image the server draws, /page-image/) with the span's boxes over it,
    in an SVG in the page's own coordinates (points), so the boxes stay on their characters at
    any width. The image's URL is relative: up from /view/<doc_id> to the root."""
    up = "../" * (doc_id.count("/") + 1)
    src = html.escape(f"{up}page-image/{quote(doc_id)}?{urlencode({'page': page.page, 'width': PAGE_WIDTH_PX})}")
    pad = 1.5  # points around each box, so the outline does not cut through the letters
    rects = "".join(
        f'<rect class="span-box" x="{x - pad:.1f}" y="{y - pad:.1f}" width="{w + 2 * pad:.1f}" height="{h + 2 * pad:.1f}" rx="2"/>'
        for x, y, w, h in page.boxes
    )
    anchor = ' id="span"' if first else ""
    return (
        f'<figure class="pdf-page"{anchor}><figcaption>p. {page.page}</figcaption>'
        f'<svg viewBox="0 0 {page.width:.1f} {page.height:.1f}" role="img" aria-label="Page {page.page}, the cited text outlined">'
        f'<image href="{src}" x="0" y="0" width="{page.width:.1f}" height="{page.height:.1f}"/>{rects}</svg></figure>'
    )


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
