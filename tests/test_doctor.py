"""`rag doctor`'s model checks, on small stand-ins (the index checks: tests/test_integrity.py)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from rag.config import Settings
from rag.doctor import check_answer_model, check_index, package_problems
from rag.llm.gguf import BUNDLED_GGUF


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def test_package_files_are_checked_against_their_record(tmp_path, monkeypatch) -> None:
    site = tmp_path / "site"
    (site / "fakemodel").mkdir(parents=True)
    info = site / "fakemodel-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakemodel\nVersion: 1.0\n")
    files = {"fakemodel/config.json": b'{"dim": 4}', "fakemodel/weights.bin": bytes(range(200))}
    for name, data in files.items():
        (site / name).write_bytes(data)
    lines = [record_line(name, data) for name, data in files.items()]
    (info / "RECORD").write_text("\n".join([*lines, "fakemodel-1.0.dist-info/RECORD,,"]) + "\n")
    monkeypatch.syspath_prepend(str(site))
    assert package_problems("fakemodel") == []

    (site / "fakemodel" / "weights.bin").write_bytes(bytes(range(1, 201)))  # same size, other bytes
    problems = package_problems("fakemodel")
    assert len(problems) == 1 and "weights.bin" in problems[0] and "--force-reinstall fakemodel" in problems[0]
    assert package_problems("no-such-package-here") == [
        "package 'no-such-package-here' is not installed: pip install no-such-package-here"
    ]


def settings_with(**local_llm) -> Settings:
    return Settings().replace(local_llm=local_llm)


@pytest.mark.parametrize(("content", "healthy"), [(b"GGUF\x03\x00\x00\x00rest", True), (b"<html>not a model", False)])
def test_a_configured_gguf_must_be_a_gguf_file(tmp_path, content, healthy) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    check = check_answer_model(settings_with(gguf=path))
    assert (check.problems == []) == healthy
    assert healthy or "not a GGUF file" in check.problems[0]


def test_a_corrupt_bundled_gguf_is_reported_and_loses_its_mark(tmp_path) -> None:
    target = tmp_path / BUNDLED_GGUF.filename
    target.write_bytes(b"GGUF truncated download")
    marker = tmp_path / (BUNDLED_GGUF.filename + ".verified.json")
    marker.write_text("{}")
    check = check_answer_model(settings_with(cache_dir=tmp_path))
    assert len(check.problems) == 1 and "does not match its sha256" in check.problems[0]
    assert not marker.exists()  # the next use assembles it again


def test_a_remote_answer_model_has_no_files_to_check() -> None:
    settings = Settings().replace(answer={"model": "openai/gpt-4o-mini"})
    assert check_answer_model(settings).problems == []


def test_index_check_names_a_missing_index_and_a_dangling_pointer(tmp_path) -> None:
    settings = Settings().replace(index={"dir": tmp_path / "index"})
    assert "no index in" in check_index(settings).problems[0]
    settings.index.dir.mkdir()
    (settings.index.dir / "CURRENT").write_text("gen-20260101T000000-deadbeef")
    problems = check_index(settings).problems
    assert len(problems) == 1 and "the generation CURRENT names is missing; run `rag index`" in problems[0]
