"""The library as others build on it: the public API, the stage layering, and settings that
reach their stage from rag.toml, RAG_* variables and flags, in that order."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import ROOT, SEEDS, make_service, make_settings
from fakes import HashEmbedder

import rag
from rag.config import Settings, load_settings
from rag.errors import BadInputError

RAG_DIR = ROOT / "rag"

# The stages in import order: a module may import from its own stage and those before it.
STAGES = [
    ["rag.errors", "rag.config", "rag.schema", "rag.requests", "rag.jsonl"],
    ["rag.text"],
    ["rag.llm"],
    ["rag.embed"],
    ["rag.stores"],
    ["rag.ingest"],
    ["rag.retrieve"],
    ["rag.verify"],
    ["rag.answer"],
    ["rag.service", "rag.doctor"],
    ["rag.serve", "rag.eval", "rag.cli"],
]
# Front ends: the only modules that may import the web interface.
FRONT_ENDS = ("rag.serve", "rag.cli")


def stage_of(module: str) -> int | None:
    for level, prefixes in enumerate(STAGES):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return level
    return None


def rag_modules() -> dict[str, Path]:
    modules = {}
    for path in RAG_DIR.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(path: Path) -> set[str]:
    """Every module imported anywhere in the file, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_every_stage_imports_only_downward_and_the_core_never_imports_ui_or_eval() -> None:
    problems = []
    for module, path in rag_modules().items():
        if module == "rag":
            continue  # the public API re-exports every stage
        level = stage_of(module)
        assert level is not None, f"{module} belongs to no stage: add it to STAGES"
        for imported in imports_of(path):
            if imported.split(".")[0] == "ui" and not module.startswith(FRONT_ENDS):
                problems.append(f"{module} imports the UI ({imported})")
            target = stage_of(imported)
            if target is not None and target > level:
                problems.append(f"{module} (stage {level}) imports {imported} (stage {target})")
    assert problems == []


def test_the_public_api_resolves_every_name_and_has_one_version() -> None:
    for name in rag.__all__:
        assert getattr(rag, name) is not None, name
    assert rag.__version__ == version("cited-rag")
    assert (RAG_DIR / "py.typed").is_file()
    from rag.serve.api import create_api
    from rag.service import RagService

    assert create_api(RagService(Settings())).version == rag.__version__


def test_every_setting_is_read_by_some_stage() -> None:
    files = [*RAG_DIR.rglob("*.py"), *(ROOT / "ui").rglob("*.py")]
    sources = "\n".join(path.read_text(encoding="utf-8") for path in files if path.name != "config.py")
    unread = [
        f"{section}.{field}"
        for section, info in Settings.model_fields.items()
        for field in info.annotation.model_fields  # type: ignore[union-attr]
        if not re.search(rf"\.{field}\b", sources)
    ]
    assert unread == []


def test_every_setting_has_a_description() -> None:
    undescribed = [
        f"{section}.{field}"
        for section, info in Settings.model_fields.items()
        for field, spec in info.annotation.model_fields.items()  # type: ignore[union-attr]
        if not spec.description
    ]
    assert undescribed == []


def test_precedence_is_flag_then_environment_then_toml_then_default(tmp_path, monkeypatch) -> None:
    config = tmp_path / "rag.toml"
    config.write_text('[retrieval]\nk = 3\nmode = "bm25"\n[index]\ndir = "from-toml"\n', encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(config))
    settings = load_settings()
    assert (settings.retrieval.k, settings.retrieval.mode, settings.index.dir) == (3, "bm25", Path("from-toml"))
    monkeypatch.setenv("RAG_RETRIEVAL__K", "4")
    settings = load_settings()
    assert (settings.retrieval.k, settings.retrieval.mode) == (4, "bm25")  # the rest of the section stays
    settings = load_settings(retrieval={"k": 6})
    assert (settings.retrieval.k, settings.retrieval.mode, settings.index.dir) == (6, "bm25", Path("from-toml"))


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[retreival]\nk = 3\n", {}, "unknown setting retreival (from "),
        ("[retrieval]\nkk = 3\n", {}, "unknown setting retrieval.kk (from "),
        ("", {"RAG_RETRIEVAL__KX": "3"}, "unknown setting retrieval.kx (from RAG_RETRIEVAL__KX)"),
        (
            "",
            {"RAG_RETRIEVAL__K": "many"},
            "setting retrieval.k (from RAG_RETRIEVAL__K): Input should be a valid integer",
        ),
    ],
)
def test_a_misspelt_or_bad_setting_fails_naming_it(tmp_path, monkeypatch, toml, env, message) -> None:
    config = tmp_path / "rag.toml"
    config.write_text(toml, encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(config))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BadInputError) as error:
        load_settings()
    assert message in str(error.value)


def test_settings_are_frozen_and_replace_validates() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.retrieval.k = 8  # type: ignore[misc]
    changed = settings.replace(retrieval={"k": 8}, index={"dir": "elsewhere"})
    assert (changed.retrieval.k, changed.index.dir, settings.retrieval.k) == (8, Path("elsewhere"), 5)
    with pytest.raises(BadInputError, match="retrieval.k"):
        settings.replace(retrieval={"k": 0})
    with pytest.raises(BadInputError, match="unknown settings section retreival"):
        settings.replace(retreival={"k": 3})


def test_requests_resolve_against_the_settings_in_the_stage(tmp_path) -> None:
    """No front end carries a default: a request without k gets the setting's k."""
    service = make_service(make_settings(tmp_path / "index", retrieval={"k": 2}), HashEmbedder())  # type: ignore[arg-type]
    service.update(paths=[SEEDS])
    assert len(service.search("border guard").results) == 2
    assert len(service.search("border guard", k=4).results) == 4
    assert service.search(rag.SearchRequest(query="border guard", mode="bm25")).mode == "bm25"
    with pytest.raises(BadInputError, match="^k: Input should be greater than or equal to 1$"):
        service.search("border guard", k=0)


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if name != "RAG_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "rag.cli", *args],
        cwd=cwd,
        env={**environment, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_cli_honours_toml_then_environment_then_flags(tmp_path) -> None:
    make_service(make_settings(tmp_path / "index"), HashEmbedder()).update(paths=[SEEDS])  # type: ignore[arg-type]
    (tmp_path / "rag.toml").write_text('[retrieval]\nk = 3\n[index]\ndir = "index"\n', encoding="utf-8")

    def found(*flags: str, **env: str) -> int:
        result = cli("search", "border guard training", "--mode", "bm25", "--json", *flags, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        return len(json.loads(result.stdout)["results"])

    assert found() == 3
    assert found(RAG_RETRIEVAL__K="8") == 8
    assert found("--k", "6", RAG_RETRIEVAL__K="8") == 6
    shown = json.loads(cli("config", "--json", cwd=tmp_path, env={"RAG_RETRIEVAL__K": "8"}).stdout)
    assert shown["retrieval.k"]["value"] == 8 and shown["retrieval.k"]["from"] == "RAG_RETRIEVAL__K"
    assert shown["index.dir"]["from"] == "rag.toml" and shown["retrieval.mode"]["from"] == "default"
    assert shown["retrieval.k"]["description"]
    assert cli("--version", cwd=tmp_path, env={}).stdout.strip() == f"cited-rag {rag.__version__}"


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use it from Python") :]
    return section[
        section.index("```python\n") + len("```python\n") : section.index("```\n", section.index("```python"))
    ]


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path) -> None:
    (tmp_path / "seeds").symlink_to(SEEDS)
    result = subprocess.run(
        [sys.executable, "-c", readme_example()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**{n: v for n, v in os.environ.items() if n != "RAG_CONFIG"}, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("5 documents,") and "529" in result.stdout
    assert (tmp_path / "my-index" / "CURRENT").is_file()
