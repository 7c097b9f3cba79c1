from hypothesis import given, settings
from hypothesis import strategies as st

from rag.config import ChunkingSettings, CleaningSettings
from rag.ingest.chunking import chunk_document
from rag.ingest.cleaning import clean_document, split_blocks
from rag.schema import Block, Document
from rag.text.sentences import sentence_spans

WORDS = st.sampled_from(
    ["alpha", "beta", "Gamma", "délta", "ε", "über", "x1", "U.S.", "e.g.", "3.5", "🙂", "日本", "end."]
)
SEPARATORS = st.sampled_from([" ", " ", " ", ". ", "! ", "? ", "\n", "\n\n", "\r\n", "\t", "  "])
TEXT = st.lists(st.tuples(WORDS, SEPARATORS), max_size=400).map(lambda parts: "".join(w + s for w, s in parts))


@st.composite
def text_and_blocks(draw):
    text = draw(TEXT)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=12))))
    blocks = []
    for start, end in zip(cuts[::2], cuts[1::2]):
        span = text[start:end]
        if span.strip():
            lead = len(span) - len(span.lstrip())
            blocks.append(
                Block(
                    start=start + lead,
                    end=start + len(span.rstrip()),
                    kind=draw(st.sampled_from(["paragraph", "heading"])),
                )
            )
    return text, blocks


CHUNKING = st.builds(
    ChunkingSettings,
    target_words=st.integers(10, 60),
    max_words=st.integers(20, 80),
    min_words=st.integers(0, 30),
)


@settings(max_examples=300, deadline=None)
@given(text_and_blocks(), CHUNKING)
def test_chunks_are_exact_slices_inside_kept_blocks(data, chunking) -> None:
    text, blocks = data
    chunks = chunk_document("d.txt", text, blocks, chunking)
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text.strip() == chunk.text and chunk.text
        assert chunk.chunk_id == f"d.txt:{chunk.start}-{chunk.end}"
        # A chunk never reaches into text that cleaning dropped.
        inside = [b for b in blocks if b.start < chunk.end and chunk.start < b.end]
        assert inside and inside[0].start <= chunk.start and chunk.end <= inside[-1].end
        gaps = [text[a.end : b.start] for a, b in zip(inside, inside[1:])]
        assert all(not gap.strip() for gap in gaps)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))

    # Every visible character of the kept blocks is in a chunk, and nothing else is.
    def visible(spans) -> set[int]:
        return {i for s in spans for i in range(s.start, s.end) if not text[i].isspace()}

    assert visible(chunks) == visible(blocks)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_sentence_spans_are_ordered_trimmed_slices_covering_all_text(text) -> None:
    spans = sentence_spans(text)
    for span in spans:
        piece = text[span.start : span.end]
        assert piece and piece == piece.strip()
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
    assert " ".join(text[s.start : s.end] for s in spans).split() == text.split()


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_cleaned_and_chunked_real_pipeline_keeps_offsets(text) -> None:
    document = Document(doc_id="p.txt", path="p.txt", root="/", text=text, sha256="x")
    blocks = clean_document(document, set(), CleaningSettings())
    for chunk in chunk_document("p.txt", text, blocks, ChunkingSettings()):
        assert text[chunk.start : chunk.end] == chunk.text
    assert all(text[b.start : b.end] == b.text for b in split_blocks(text))


def test_heading_and_short_paragraph_join_neighbours_and_long_ones_split() -> None:
    sentence = "The council met on Tuesday to approve the new budget for roads and schools. "
    long_paragraph = sentence * 30  # about 420 words
    text = f"Budget Day\n\nShort note here.\n\n{sentence * 3}\n\n{long_paragraph.strip()}\n"
    blocks = [
        Block(start=0, end=10, kind="heading"),
        *[
            Block(start=text.index(p), end=text.index(p) + len(p))
            for p in ("Short note here.", (sentence * 3).strip(), long_paragraph.strip())
        ],
    ]
    chunks = chunk_document("d.txt", text, blocks, ChunkingSettings(target_words=150, max_words=220, min_words=25))
    assert chunks[0].text.startswith("Budget Day\n\nShort note here.\n\nThe council")
    assert all(len(c.text.split()) <= 220 for c in chunks)
    assert len(chunks) >= 4
    assert all(c.text.endswith(".") for c in chunks)  # long paragraph cut between sentences
