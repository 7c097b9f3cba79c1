"""Cut the kept blocks of a document into paragraph chunks with exact offsets.

One chunk per paragraph. A heading or a paragraph under `min_words` joins its neighbour, but
only across whitespace: a chunk never spans text that cleaning dropped. A paragraph over
`max_words` is split at sentence boundaries into pieces of about `target_words`.
Every chunk satisfies `document.text[chunk.start:chunk.end] == chunk.text`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rag.config import ChunkingSettings
from rag.schema import Block, Chunk, Span
from rag.text.sentences import sentence_spans

WORD_RUN = re.compile(r"\S+")


@dataclass
class _Unit:
    start: int
    end: int
    words: int
    heading: bool = False


def _word_count(text: str) -> int:
    return len(text.split())


def _split_long(text: str, block: Block, settings: ChunkingSettings) -> list[_Unit]:
    """Greedy packing of whole sentences up to `target_words`; a single sentence over
    `max_words` is cut between words."""
    pieces: list[Span] = []
    for sentence in sentence_spans(text, block.start, block.end):
        if _word_count(text[sentence.start : sentence.end]) <= settings.max_words:
            pieces.append(sentence)
        else:
            pieces.extend(_split_words(text, sentence, settings.target_words))
    units: list[_Unit] = []
    for piece in pieces:
        words = _word_count(text[piece.start : piece.end])
        if units and units[-1].words + words <= settings.target_words:
            units[-1].end = piece.end
            units[-1].words += words
        else:
            units.append(_Unit(piece.start, piece.end, words))
    return units


def _split_words(text: str, span: Span, size: int) -> list[Span]:
    words = list(WORD_RUN.finditer(text, span.start, span.end))
    return [
        Span(start=words[i].start(), end=words[min(i + size, len(words)) - 1].end()) for i in range(0, len(words), size)
    ]


def chunk_document(doc_id: str, text: str, blocks: list[Block], settings: ChunkingSettings) -> list[Chunk]:
    units: list[_Unit] = []
    for block in blocks:
        words = _word_count(text[block.start : block.end])
        if words > settings.max_words:
            units.extend(_split_long(text, block, settings))
        else:
            units.append(_Unit(block.start, block.end, words, heading=block.kind == "heading"))

    def adjacent(a: _Unit, b: _Unit) -> bool:
        return not text[a.end : b.start].strip()

    def fits(a: _Unit, b: _Unit) -> bool:
        return a.words + b.words <= settings.max_words

    merged: list[_Unit] = []
    for unit in units:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and adjacent(prev, unit)
            and fits(prev, unit)
            and (prev.heading or prev.words < settings.min_words or unit.words < settings.min_words)
        ):
            prev.end, prev.words, prev.heading = unit.end, prev.words + unit.words, unit.heading
        else:
            merged.append(_Unit(unit.start, unit.end, unit.words, unit.heading))
    return [
        Chunk(
            chunk_id=f"{doc_id}:{u.start}-{u.end}", doc_id=doc_id, start=u.start, end=u.end, text=text[u.start : u.end]
        )
        for u in merged
    ]
