"""`rag check`: verdicts for answers from any system, and claims with or without a source."""

import json
import subprocess
import sys

import pytest
from conftest import SEEDS

from rag.requests import CheckRequest, GivenCitation

pytestmark = pytest.mark.slow

CELLS = "establishing 529 commune-level military party cells strictly and in accordance with principles."
DOC = "000_c1a45aa062b469e9.txt"


def test_answer_from_another_system_gets_per_sentence_verdicts(seed_service) -> None:
    text = (SEEDS / DOC).read_text(encoding="utf-8")
    start = text.index(CELLS)
    request = CheckRequest(
        answer=(
            "Military Region 2 set up 529 commune-level military party cells [1]. "
            "It also built 40 airports [2]. Nobody can say [7]. "
            "The province planted many new orange trees along the rivers."
        ),
        citations=[
            GivenCitation(id=1, doc_id=DOC, start=start, end=start + len(CELLS)),
            GivenCitation(id=2, text="The province opened two new schools in the valley."),
        ],
    )
    report = seed_service.check(request)
    first, second, third, fourth = report.sentences
    assert first.status == "supported" and first.citations[0].text == CELLS
    assert text[first.citations[0].start : first.citations[0].end] == CELLS
    assert second.status == "unsupported" and "40" in second.citations[0].reason
    assert third.citations[0].verdict == "points_at_nothing"
    assert fourth.status == "uncited" and report.uncited_claims == [fourth.text]


def test_claim_without_source_is_checked_against_the_best_evidence(seed_service) -> None:
    report = seed_service.check(
        CheckRequest(claim="Military Region 2 established 529 commune-level military party cells")
    )
    verdict = report.sentences[0].citations[0]
    assert verdict.supported and verdict.doc_id == DOC and "529" in verdict.text
    wrong = seed_service.check(
        CheckRequest(claim="Military Region 2 established 530 commune-level party cells", doc_id=DOC)
    )
    assert not wrong.sentences[0].citations[0].supported


def test_cli_reads_ask_json_from_stdin(tmp_path, seed_service) -> None:
    response = seed_service.ask("How many commune-level military party cells were established?")
    payload = json.dumps(response.model_dump())
    result = subprocess.run(
        [sys.executable, "-m", "rag.cli", "check", "-", "--json", "--index-dir", str(seed_service.settings.index.dir)],
        input=payload,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["sentences"] and all(v["supported"] for s in report["sentences"] for v in s["citations"])
    bad = subprocess.run(
        [sys.executable, "-m", "rag.cli", "check", "-"], input="[1, 2]", capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
