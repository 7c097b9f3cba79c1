import pytest

from rag.config import VerificationSettings
from rag.verification import Verifier, fold, names_in, numbers_in

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
