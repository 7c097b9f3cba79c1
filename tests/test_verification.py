import pytest
from hypothesis import given
from hypothesis import strategies as st

from rag.config import VerificationSettings
from rag.text.words import fold, names_in, names_not_in, numbers_in
from rag.verify.verifier import Verifier

PASSAGE = (
    "Regarding Party building, the Party Committee led and maintained strict regimes. "
    "It coordinated with provincial Party Committees to reorganize local military agencies; "
    "establishing 529 commune-level military party cells strictly and in accordance with principles. "
    "Secretary Trần Tiến Dũng attended the event."
)


def test_helpers() -> None:
    assert fold("Trần Tiến Dũng, ĐBP") == "tran tien dung, dbp"
    assert numbers_in("22,700 personnel; 99.25% of troops in 2025.") == {"22700", "99.25", "2025"}
    assert "9" in numbers_in("nine groups of tasks", spelled=True)
    assert names_in("The secretary Tran Tien Dung came") == {"tran", "tien", "dung"}


def test_question_names_missing_from_the_sources() -> None:
    question = "How many cells did the Gia Lai Provincial Military Party Committee set up after Điện Biên's review?"
    assert names_not_in(question, [PASSAGE]) == ["Gia Lai", "Điện Biên"]
    assert names_not_in(question, [PASSAGE, "Gia Lai and Dien Bien provinces"]) == []
    # Single capitalised words and acronyms may be paraphrases or abbreviations: never required.
    assert names_not_in("Which unit in MR2 welcomed Tết with Hanoi officials?", [PASSAGE]) == []
    # The first word is capitalised as the start of the question, not as a name.
    assert names_not_in("Which Party Committee led it?", [PASSAGE]) == []
    # A capitalised plural is named by its singular; an unrelated name still is not.
    assert names_not_in("How many Military Regions border Laos?", ["Military Region 2 borders Laos."]) == []
    assert names_not_in("How many Border Cities exist?", ["The border city of Lao Cai."]) == []
    assert names_not_in("Did the Gia Lai Regions vote?", ["Military Region 2."]) == ["Gia Lai"]


# Latin letters as Vietnamese names use them.
LOWER = "abcdeghiklmnopqrstuvxyàáâãèéêìíòóôõùúýăđĩũơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ"
NAME_WORD = st.builds(
    lambda first, rest: first + rest, st.sampled_from("ABCDEGHIKLMNOPQRSTUVXYĐ"), st.text(LOWER, min_size=2, max_size=8)
)


@given(st.lists(NAME_WORD, min_size=2, max_size=4), st.lists(NAME_WORD, min_size=2, max_size=4))
def test_a_name_is_missing_exactly_when_a_source_lacks_its_words(named, other) -> None:
    question = f"What did the {' '.join(named)} do with the {' '.join(other)}?"
    assert names_not_in(question, [f"{' '.join(named)}; {' '.join(other)}"]) == []
    missing = names_not_in(question, [" ".join(named)])
    folded_named = {fold(w) for w in named}
    expected = " ".join(w for w in other if fold(w) not in folded_named)
    assert missing == ([expected] if expected else [])


@pytest.fixture(scope="module")
def verifier(embedder) -> Verifier:
    return Verifier(embedder, VerificationSettings())


def verdict(verifier, claim, question=""):
    return verifier.verify([(claim, PASSAGE, 0, len(PASSAGE))], question)[0]


@pytest.mark.slow
def test_supported_claims_point_at_their_sentence(verifier) -> None:
    result = verdict(verifier, "The Party Committee established 529 commune-level military party cells.")
    assert result.supported, result
    assert "529 commune-level" in PASSAGE[result.span.start : result.span.end]
    # Paraphrase and accents dropped by the writer still count.
    assert verdict(verifier, "Tran Tien Dung, the secretary, was present at the event.").supported


@pytest.mark.slow
@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        ("The Party Committee established 530 commune-level military party cells.", "number 530"),
        ("Secretary Nguyễn Văn An attended the event.", "'nguyen'"),
        ("The province built three new hospitals and a railway to the coast.", "does not state"),
    ],
)
def test_unsupported_claims_are_flagged_with_a_reason(verifier, claim, reason) -> None:
    result = verdict(verifier, claim)
    assert not result.supported and reason in result.reason, result


@pytest.mark.slow
def test_names_from_the_question_are_not_required_in_the_passage(verifier) -> None:
    claim = "In Gia Lai, the Party Committee established 529 commune-level military party cells."
    assert not verdict(verifier, claim).supported
    assert verdict(verifier, claim, question="What did Gia Lai's committee establish?").supported


@pytest.mark.slow
def test_numbers_from_the_question_or_inside_names_need_not_be_in_the_passage(verifier) -> None:
    claim = "Military Region 2 established 529 commune-level military party cells."
    assert not verdict(verifier, claim).supported  # "2" is nowhere in this text
    assert verdict(verifier, claim, question="What did Military Region 2 establish?").supported
