"""Damaged indexes: every kind of damage is noticed at load, a search says so in one line,
`rag index` recovers by itself and `rag doctor` names the damage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import SEEDS, make_service, make_settings

from rag.errors import IndexDamagedError
from rag.stores.faiss_bm25.store import (
    MANIFEST,
    current_generation,
    file_records,
    generations,
    read_index,
)

pytestmark = pytest.mark.slow

NEW_DOC = (
    "The lighthouse keeper of Hòn Dấu island reported that the new solar panels now supply all of "
    "the station's power. Engineers installed forty-two panels during the dry season of 2025, and the "
    "diesel generator is kept only as a reserve for long stretches of cloudy weather."
)

# One file of each kind a generation holds: in its first segment, and the manifest.
FILES = [
    "dense.faiss",
    "vectors.npy",
    "chunks.jsonl",
    "documents.jsonl",
    "embedding_keys.json",
    "rows.npy",
    "doc_ids.json",
    "documents.lines.npy",
    "bm25/tf.npy",
    "bm25/vocab.json",
    "bm25/lengths.npy",
    MANIFEST,
]


def segment(generation: Path) -> Path:
    """The first (largest) segment of a generation."""
    return generation / json.loads((generation / MANIFEST).read_text())["segments"][0]


def located(generation: Path, name: str) -> Path:
    return generation / name if name == MANIFEST else segment(generation) / name


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scramble(path: Path) -> None:
    """Random bytes of the same size: only a checksum can tell."""
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder) -> Path:
    """Seeds indexed, then a document added: two generations, the older one sound."""
    root = tmp_path_factory.mktemp("built")
    shutil.copytree(SEEDS, root / "corpus")
    service = make_service(make_settings(root / "index", root / "corpus"), embedder)
    service.update(paths=[root / "corpus"])
    (root / "corpus" / "new.txt").write_text(NEW_DOC, encoding="utf-8")
    service.update(paths=[root / "corpus"])
    return root


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, embedder) -> Path:
    """Another index (one seed document), to copy files from."""
    root = tmp_path_factory.mktemp("foreign")
    make_service(make_settings(root / "index"), embedder).update(paths=[SEEDS / "002_be266ad687065662.txt"])
    return current_generation(root / "index")


@pytest.fixture
def index_dir(built, tmp_path) -> Path:
    target = tmp_path / "index"
    shutil.copytree(built / "index", target)
    return target


def resign(generation: Path) -> None:
    """Record the files' present sizes and checksums, as if the build had written them: what
    remains to notice the damage are the counts and offsets."""
    manifest = json.loads((generation / MANIFEST).read_text())
    manifest["files"] = {name: record.model_dump() for name, record in file_records(generation).items()}
    (generation / MANIFEST).write_text(json.dumps(manifest))


def shift_offsets(generation: Path) -> None:
    lines = (segment(generation) / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
    chunk = json.loads(lines[3])
    chunk["start"] += 3
    chunk["end"] += 3
    lines[3] = json.dumps(chunk)
    (segment(generation) / "chunks.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def drop_vector_rows(generation: Path) -> None:
    np.save(segment(generation) / "vectors.npy", np.load(segment(generation) / "vectors.npy")[:-2])


@pytest.mark.parametrize("damage", [truncate, scramble], ids=["truncated", "random"])
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_file_is_noticed(index_dir, name, damage) -> None:
    generation = current_generation(index_dir)
    damage(located(generation, name))
    with pytest.raises(IndexDamagedError) as caught:
        read_index(index_dir)
    message = str(caught.value)
    assert "is damaged" in message and message.endswith("run `rag index`") and "\n" not in message
    assert name in message


CONTENT_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    # Rewritten lines move the records too: the first one read after them no longer parses.
    "shifted offsets": (shift_offsets, "offsets do not reproduce their text|record of row \\d+ is unreadable"),
    "vectors rows dropped": (drop_vector_rows, "row counts differ"),
}


@pytest.mark.parametrize("case", CONTENT_DAMAGE)
@pytest.mark.parametrize("signed", [False, True], ids=["checksums", "resigned"])
def test_damaged_content_is_noticed_even_with_matching_checksums(index_dir, case, signed) -> None:
    generation = current_generation(index_dir)
    damage, reason = CONTENT_DAMAGE[case]
    damage(generation)
    if signed:
        resign(generation)
    with pytest.raises(
        IndexDamagedError, match=reason if signed else "does not match its checksum|bytes, the build wrote"
    ):
        read_index(index_dir).verify_all()  # chunks are checked as they are read


@pytest.mark.parametrize("signed", [False, True], ids=["checksums", "resigned"])
def test_a_faiss_file_from_another_index_is_noticed(index_dir, foreign, signed) -> None:
    generation = current_generation(index_dir)
    shutil.copy(segment(foreign) / "dense.faiss", segment(generation) / "dense.faiss")
    assert (
        faiss.read_index(str(segment(generation) / "dense.faiss")).ntotal > 0
    )  # a valid FAISS file, just not this one
    if signed:
        resign(generation)
    with pytest.raises(IndexDamagedError, match="row counts differ" if signed else "dense.faiss"):
        read_index(index_dir)


def test_a_sound_index_passes_every_check(index_dir) -> None:
    data = read_index(index_dir)
    assert len(data.chunks) == data.manifest.chunks == sum(s.dense.ntotal for s in data.segments)
    first = data.manifest.segments[0]
    assert set(data.manifest.files) >= {f"{first}/{name}" for name in FILES if name != MANIFEST}


def test_search_on_a_damaged_index_is_one_clear_error(index_dir, embedder) -> None:
    scramble(segment(current_generation(index_dir)) / "dense.faiss")
    service = make_service(make_settings(index_dir), embedder)
    with pytest.raises(
        IndexDamagedError, match=r"is damaged \(seg-[^/]+/dense.faiss does not match its checksum\); run `rag index`"
    ):
        service.search("border guard")


def test_the_api_answers_a_damaged_index_with_a_one_line_json_error(index_dir, embedder) -> None:
    from fastapi.testclient import TestClient

    from rag.serve.api import create_api

    shift_offsets(current_generation(index_dir))
    client = TestClient(create_api(make_service(make_settings(index_dir), embedder)))
    response = client.post("/search", json={"query": "border guard"})
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert (
        "is damaged (seg-" in detail
        and "/chunks.jsonl" in detail
        and detail.endswith("run `rag index`")
        and "\n" not in detail
    )


def test_index_recovers_from_the_previous_generation_reusing_its_vectors(built, index_dir, embedder) -> None:
    damaged = current_generation(index_dir)
    previous = next(g for g in generations(index_dir) if g != damaged)
    scramble(segment(damaged) / "vectors.npy")
    service = make_service(make_settings(index_dir, built / "corpus"), embedder)
    report = service.update(paths=[built / "corpus"])
    assert report.written
    assert len(report.rebuilt_because) == 1 and "vectors.npy" in report.rebuilt_because[0]
    assert "rebuilt from the previous generation" in report.rebuilt_because[0]
    # The older generation lacked new.txt: only its passage is embedded again.
    assert report.added == ["new.txt"] and report.embedded == 1
    # The damaged generation is gone; the sound one stays beside the new one as its fallback.
    assert [g.name for g in generations(index_dir)][1:] == [previous.name] and not damaged.exists()
    assert service.search("solar panels lighthouse", k=1).results[0].doc_id == "new.txt"


def test_a_missing_current_generation_is_damage_and_the_previous_one_takes_over(built, index_dir, embedder) -> None:
    shutil.rmtree(current_generation(index_dir))
    with pytest.raises(IndexDamagedError, match="the generation CURRENT names is missing"):
        read_index(index_dir)
    report = make_service(make_settings(index_dir, built / "corpus"), embedder).update(paths=[built / "corpus"])
    assert "rebuilt from the previous generation" in report.rebuilt_because[0] and report.embedded == 1


def test_index_rebuilds_from_the_documents_when_no_generation_is_sound(built, index_dir, embedder) -> None:
    for generation in index_dir.glob("gen-*"):
        truncate(segment(generation) / "chunks.jsonl")
    service = make_service(make_settings(index_dir, built / "corpus"), embedder)
    report = service.update(paths=[built / "corpus"])
    assert report.written and "rebuilt from the documents given" in report.rebuilt_because[0]
    assert len(read_index(index_dir).documents) == 6


def test_an_emptied_index_is_sound(tmp_path, embedder) -> None:
    (tmp_path / "only.txt").write_text(NEW_DOC, encoding="utf-8")
    service = make_service(make_settings(tmp_path / "index", tmp_path), embedder)
    service.update(paths=[tmp_path / "only.txt"])
    service.update(remove=["only.txt"])
    data = read_index(tmp_path / "index")
    assert data.chunks == [] and data.manifest.chunks == 0


# --------------------------------------------------------------------------- the real command


def rag(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # The extractive answerer: `rag doctor` then has no 1.1 GB model to hash (tested on fake parts).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100", "RAG_ANSWER__MODEL": "extractive"}
    env.pop("RAG_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "rag.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_search_fails_index_recovers_doctor_reports(built, index_dir, tmp_path) -> None:
    generation = current_generation(index_dir)
    healthy = rag("doctor", "--index-dir", str(index_dir), cwd=tmp_path)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "✓ index" in healthy.stdout and "✓ embedding model" in healthy.stdout

    shift_offsets(generation)
    truncate(segment(generation) / "bm25" / "vocab.json")
    doctor = rag("doctor", "--index-dir", str(index_dir), cwd=tmp_path)
    assert doctor.returncode == 1
    problems = [line for line in doctor.stdout.splitlines() if line.startswith("✗")]
    assert len(problems) == 2, doctor.stdout  # one line per damaged file
    assert any("chunks.jsonl" in line for line in problems) and any("vocab.json" in line for line in problems)

    search = rag("search", "border guard", "--index-dir", str(index_dir), cwd=tmp_path)
    assert search.returncode == 1
    assert search.stderr.strip().startswith("error: index in") and "is damaged" in search.stderr
    assert len(search.stderr.strip().splitlines()) == 1

    index = rag("index", str(built / "corpus"), "--index-dir", str(index_dir), cwd=tmp_path)
    assert index.returncode == 0, index.stderr
    assert index.stderr.count("rebuilding:") == 1 and "is damaged" in index.stderr
    assert rag("search", "border guard", "--index-dir", str(index_dir), cwd=tmp_path).returncode == 0
    assert rag("doctor", "--index-dir", str(index_dir), cwd=tmp_path).returncode == 0
