"""Parse citation markers out of an answer and renumber them.

Accepted forms: [1], [1, 3], [1;3], [1-3], [1][3]. A marker that opens a sentence (as in
"... was 529. [1]") belongs to the sentence before it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rag.text.sentences import sentence_spans

MARKER = re.compile(r"\[\s*(\d+(?:\s*(?:[,;]|[-–])\s*\d+)*)\s*\]")
MAX_RANGE = 20


@dataclass
class Marker:
    start: int
    end: int
    numbers: list[int]


@dataclass
class ParsedSentence:
    start: int
    end: int
    text: str  # without markers, whitespace collapsed
    markers: list[Marker] = field(default_factory=list)

    @property
    def numbers(self) -> list[int]:
        seen: list[int] = []
        for marker in self.markers:
            seen.extend(n for n in marker.numbers if n not in seen)
        return seen


def _numbers(body: str) -> list[int]:
    out: list[int] = []
    for part in re.split(r"\s*[,;]\s*", body):
        bounds = [int(x) for x in re.split(r"\s*[-–]\s*", part)]
        if len(bounds) == 2 and 0 <= bounds[1] - bounds[0] <= MAX_RANGE:
            out.extend(range(bounds[0], bounds[1] + 1))
        else:
            out.extend(bounds)
    return out


def parse_answer(answer: str) -> list[ParsedSentence]:
    markers = [Marker(m.start(), m.end(), _numbers(m.group(1))) for m in MARKER.finditer(answer)]
    sentences: list[ParsedSentence] = []
    for span in sentence_spans(answer):
        start = span.start
        inside = [m for m in markers if span.start <= m.start < span.end]
        # Markers before the first word of a sentence close the previous sentence.
        while inside and not answer[start : inside[0].start].strip() and sentences:
            sentences[-1].markers.append(inside[0])
            sentences[-1].end = inside[0].end
            start = inside.pop(0).end
        if not answer[start : span.end].strip():
            continue
        if sentences and not re.search(r"\w", MARKER.sub("", answer[start : span.end])):
            # Stray punctuation the splitter cut off ("e.g. [1]." -> "e.g. [1]" + ".").
            sentences[-1].end = span.end
            sentences[-1].markers.extend(inside)
            continue
        lead = len(answer[start : span.end]) - len(answer[start : span.end].lstrip())
        sentences.append(ParsedSentence(start + lead, span.end, "", inside))
    for sentence in sentences:
        sentence.text = strip_markers(answer[sentence.start : sentence.end])
    return sentences


def strip_markers(text: str) -> str:
    """Text without markers; "...was 529 [1]." would leave "529 ." behind, so the space
    before closing punctuation goes too."""
    return re.sub(r"\s+([.,;:!?])", r"\1", " ".join(MARKER.sub(" ", text).split()))
