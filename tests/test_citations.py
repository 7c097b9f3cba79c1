from hypothesis import given, settings
from hypothesis import strategies as st

from rag.verify.citations import MARKER, parse_answer, strip_markers

WORD = st.sampled_from(
    ["The", "committee", "set", "up", "529", "cells", "in", "Điện", "Biên", "2025", "e.g.", "U.S.", "🙂"]
)
END = st.sampled_from([".", "!", "?", ""])
MARK = st.lists(st.integers(0, 12), min_size=0, max_size=3).map(lambda ns: "".join(f"[{n}]" for n in ns))


@st.composite
def answers(draw):
    sentences = []
    for _ in range(draw(st.integers(0, 5))):
        words = " ".join(draw(st.lists(WORD, min_size=1, max_size=8)))
        before, after = draw(MARK), draw(MARK)
        sentences.append(f"{words} {before}{draw(END)} {after}".strip())
    return " ".join(sentences)


@settings(max_examples=300, deadline=None)
@given(answers())
def test_every_marker_is_assigned_once_and_texts_are_clean(answer) -> None:
    sentences = parse_answer(answer)
    assigned = [m.start for s in sentences for m in s.markers]
    assert sorted(assigned) == [m.start() for m in MARKER.finditer(answer)]
    for sentence in sentences:
        assert not MARKER.search(sentence.text)
        assert 0 <= sentence.start < sentence.end <= len(answer)
        for marker in sentence.markers:
            assert answer[marker.start : marker.end].startswith("[")
    assert all(a.end <= b.start for a, b in zip(sentences, sentences[1:]))
    assert " ".join(s.text for s in sentences).split() == strip_markers(answer).split() or not sentences


def test_marker_forms() -> None:
    parsed = parse_answer("It was 529 [1]. They met twice [1, 3]. Drills [2][4]. Range [2-4]. Late one. [5]")
    assert [s.numbers for s in parsed] == [[1], [1, 3], [2, 4], [2, 3, 4], [5]]
    assert [s.text for s in parsed] == ["It was 529.", "They met twice.", "Drills.", "Range.", "Late one."]
