"""BEIR-format retrieval evaluation on a tiny dataset made here, with a dev and a test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_service

from rag.config import Settings
from rag.errors import BadInputError
from rag.eval.beir import beir_settings, build_beir_index, evaluate_modes, load_beir

DOCS = {
    "d1": ("Volcanoes", "Magma rises through the crust and erupts as lava from a volcano's vent."),
    "d2": ("Honeybees", "Honeybees communicate the direction of flowers with a waggle dance inside the hive."),
    "d3": ("Glaciers", "Glaciers carve U-shaped valleys as the ice slowly grinds over bedrock."),
    "d4": ("Tides", "Ocean tides are caused mainly by the gravitational pull of the Moon."),
}
QUERIES = {
    "q1": "how do honeybees tell other bees where flowers are",
    "q2": "what causes ocean tides",
    "q3": "how are U-shaped valleys formed",
}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in DOCS.items()), encoding="utf-8"
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()), encoding="utf-8"
    )
    # dev judges q1 and q2 (plus a grade-0 row, which is not a relevance judgement); test judges q3.
    (folder / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td4\t1\nq2\td1\t0\n", encoding="utf-8"
    )
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td3\t1\n", encoding="utf-8")
    return folder


def test_split_selects_qrels_and_judged_queries(dataset: Path) -> None:
    dev = load_beir(dataset, "dev")
    assert dev.qrels == {"q1": {"d2": 1}, "q2": {"d4": 1}}
    assert set(dev.queries) == {"q1", "q2"}
    assert [d.doc_id for d in dev.documents] == ["d1", "d2", "d3", "d4"]
    test = load_beir(dataset)  # the default split is test
    assert set(test.queries) == {"q3"}
    with pytest.raises(BadInputError, match="no qrels file"):
        load_beir(dataset, "train")


def test_evaluate_modes_on_the_dev_split(dataset: Path, tmp_path: Path, embedder) -> None:
    data = load_beir(dataset, "dev")
    service = make_service(beir_settings(Settings(), tmp_path / "index"), embedder)
    build_beir_index(service, data)
    results = evaluate_modes(service, data, ("bm25", "dense", "hybrid"), k=3)
    for mode, scores in results.items():
        assert set(scores) == {"nDCG@10", "Recall@10", "Recall@3", "MRR@10"}, mode
        # Each query has one clearly matching document among four unrelated ones.
        assert scores["MRR@10"] == pytest.approx(1.0), mode
        assert scores["Recall@10"] == pytest.approx(1.0), mode


@pytest.mark.slow
def test_cli_eval_beir_split(dataset: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "rag.cli",
        "eval",
        "beir",
        str(dataset),
        "--mode",
        "bm25",
        "--index-dir",
        str(tmp_path / "idx"),
        "--json",
    ]
    result = subprocess.run([*command, "--split", "dev"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["mode"] == "bm25" and payload["MRR@10"] == pytest.approx(1.0)
    missing = subprocess.run([*command, "--split", "train"], capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "no qrels file" in missing.stderr
