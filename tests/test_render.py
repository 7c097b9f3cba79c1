"""The interface's HTML: markers link to their cards, spans are highlighted, and document
text is always escaped."""

from rag.schema import AnswerResponse, AnswerSentence, Citation, Document, SearchHit
from ui.render import answer_markdown, document_page, sources_html

TEXT = "Intro. The <b>plant</b> made 42 bells. Outro."
START = TEXT.index("The")
END = TEXT.index(" Outro")


def response(abstained: bool = False) -> AnswerResponse:
    hit = SearchHit(
        rank=1, score=1.0, chunk_id="d.txt:0-45", doc_id="d.txt", start=0, end=len(TEXT), text=TEXT, title="T <i>"
    )
    citation = Citation(
        id=1,
        passage=1,
        sentence=0,
        chunk_id=hit.chunk_id,
        doc_id="d.txt",
        start=START,
        end=END,
        text=TEXT[START:END],
        chunk_start=0,
        chunk_end=len(TEXT),
        title=hit.title,
        supported=True,
        score=0.9,
    )
    return AnswerResponse(
        question="How many bells?",
        answer="The plant made 42 bells [1]. It is old.",
        abstained=abstained,
        model="m",
        citations=[] if abstained else [citation],
        passages=[hit],
        notice="No passage answers." if abstained else None,
        sentences=[
            AnswerSentence(text="The plant made 42 bells [1].", start=0, end=28, citations=[1], status="supported"),
            AnswerSentence(text="It is old.", start=29, end=39, citations=[], status="uncited"),
        ],
    )


def test_markers_link_to_their_turns_cards_and_unchecked_claims_are_flagged() -> None:
    markdown = answer_markdown(response(), turn=3)
    assert '<a class="cite" href="#cite-3-1">[1]</a>' in markdown
    assert "It is old." in markdown and "without a citation" in markdown
    html = sources_html([response(), response()])
    assert html.count('id="cite-2-1"') == 1 and html.count('id="cite-1-1"') == 1
    assert html.index('id="cite-2-1"') < html.index("<details")  # newest first, older folded


def test_span_is_highlighted_and_text_escaped() -> None:
    html = sources_html([response()])
    assert "<mark>The &lt;b&gt;plant&lt;/b&gt; made 42 bells.</mark>" in html
    assert "<b>" not in html and "T &lt;i&gt;" in html
    assert "✓ Supported" in html and f'href="view/d.txt?start={START}&amp;end={END}#span"' in html


def test_abstention_is_a_distinct_state() -> None:
    assert answer_markdown(response(abstained=True), turn=1).startswith("**Not found in the documents.**")
    assert 'class="abstained"' in sources_html([response(abstained=True)])


def test_document_page_marks_the_span() -> None:
    doc = Document(doc_id="d.txt", path="d.txt", root=".", text=TEXT, sha256="0")
    page = document_page(doc, START, END)
    assert '<mark id="span">The &lt;b&gt;plant&lt;/b&gt; made 42 bells.</mark>' in page
    assert '<mark id="span">' not in document_page(doc, 10, 5)  # offsets out of order: no highlight


def test_answer_text_never_becomes_markup() -> None:
    planted = response()
    planted.answer = "Bells <img src=x onerror=alert(1)> rang [1]. See ![x](http://evil.example/x.png) and **this**."
    planted.sentences[0].text = "Bells <img src=x onerror=alert(1)> rang [1]."
    planted.sentences[1].text = "See ![x](http://evil.example/x.png) and **this**."
    planted.notice = "<script>alert(2)</script>"
    markdown = answer_markdown(planted, turn=1)
    assert "<img" not in markdown and "<script" not in markdown and "![" not in markdown and "**this" not in markdown
    assert "Bells &#60;img src=x onerror=alert&#40;1&#41;&#62; rang" in markdown
    assert 'rang <a class="cite" href="#cite-1-1">[1]</a>.' in markdown


def test_a_calibrated_answer_shows_its_confidence() -> None:
    assert "Confidence" not in answer_markdown(response(), turn=1)
    assert "Confidence 73%" in answer_markdown(response().model_copy(update={"confidence": 0.7339}), turn=1)
