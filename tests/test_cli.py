"""The real `rag` command in subprocesses: JSON contract, human output, exit codes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SEEDS

pytestmark = pytest.mark.slow

RAG = [sys.executable, "-m", "rag.cli"]


def rag(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Without RAG_CONFIG (conftest points it at nothing), so a test's own rag.toml in `cwd` is read.
    inherited = {name: value for name, value in os.environ.items() if name != "RAG_CONFIG"}
    env = {**inherited, "HF_HUB_OFFLINE": "1", "COLUMNS": "120", **(env or {})}
    env.pop("RAG_DEBUG", None)
    return subprocess.run([*RAG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A project-like folder: ./seeds and ./index, as `make run` sees it."""
    path = tmp_path_factory.mktemp("work")
    shutil.copytree(SEEDS, path / "seeds")
    result = rag("index", cwd=path)
    assert result.returncode == 0, result.stderr
    assert "Indexed 5 documents" in result.stdout
    return path


def test_search_json_contract(workdir) -> None:
    result = rag(
        "search", "How many commune-level military party cells were established?", "--k", "3", "--json", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["query"] == "How many commune-level military party cells were established?"
    assert len(payload["results"]) == 3
    texts = {p.name: p.read_text(encoding="utf-8") for p in (workdir / "seeds").iterdir()}
    for rank, hit in enumerate(payload["results"], start=1):
        assert hit["rank"] == rank
        assert isinstance(hit["score"], float)
        assert {"chunk_id", "doc_id", "start", "end", "text"} <= hit.keys()
        assert texts[hit["doc_id"]][hit["start"] : hit["end"]] == hit["text"]
    assert "529" in payload["results"][0]["text"]


def test_index_is_incremental_and_docs_lists_counts(workdir) -> None:
    result = rag("index", "--json", cwd=workdir)
    assert result.returncode == 0 and json.loads(result.stdout)["embedded"] == 0
    listing = json.loads(rag("docs", "--json", cwd=workdir).stdout)["documents"]
    assert [d["doc_id"] for d in listing] == sorted(p.name for p in SEEDS.iterdir())
    copies = {d["doc_id"]: d["duplicate_chunks"] for d in listing}
    assert copies["003_254c39c735b64e9a.txt"] > 10


def test_human_output_and_filters(workdir) -> None:
    result = rag(
        "search", "border guard", "--mode", "bm25", "--doc", "004_a3b36d9e2d4bee8b.txt", "--k", "2", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    assert "004_a3b36d9e2d4bee8b.txt" in result.stdout and "001_" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("search", ""), "the question is empty"),
        (("search", "x" * 3000), "limit"),
        (("search", "border", "--mode", "fuzzy"), "--mode: Input should be 'hybrid', 'dense' or 'bm25'"),
        (("search", "border", "--k", "0"), "--k"),
        (("search", "border", "--doc", "missing.txt"), "unknown document"),
        (("index", "/no/such/folder"), "no such file or folder"),
        (("remove", "missing.txt"), "unknown document: missing.txt"),
        (("search", "border", "--index-dir", "nowhere"), "run `rag index` first"),
    ],
)
def test_bad_input_exits_2_with_one_line(workdir, args, message) -> None:
    result = rag(*args, cwd=workdir)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_files_are_skipped_with_warning(workdir, tmp_path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "ok.txt").write_text(
        "A harbour report: the new breakwater is finished and boats are back.", encoding="utf-8"
    )
    (folder / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    result = rag("index", str(folder), "--index-dir", str(tmp_path / "idx"), cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "blob.txt" in result.stderr and "binary file" in result.stderr
    assert "Indexed 1 documents" in result.stdout


def test_remove_deletes_the_corpus_file_so_the_next_index_does_not_bring_it_back(tmp_path) -> None:
    shutil.copytree(SEEDS, tmp_path / "seeds")  # the corpus folder of a project in tmp_path
    assert rag("index", cwd=tmp_path).returncode == 0
    assert rag("remove", "000_c1a45aa062b469e9.txt", cwd=tmp_path).returncode == 0
    assert not (tmp_path / "seeds" / "000_c1a45aa062b469e9.txt").exists()
    assert "is up to date: 4 documents" in rag("index", cwd=tmp_path).stdout
    payload = json.loads(
        rag("search", "529 commune-level military party cells", "--k", "50", "--json", cwd=tmp_path).stdout
    )
    assert all(h["doc_id"] != "000_c1a45aa062b469e9.txt" for h in payload["results"])


def check_answer_contract(payload: dict, texts: dict[str, str]) -> None:
    assert {"question", "answer", "abstained", "model", "citations", "timings_ms"} <= payload.keys()
    for citation in payload["citations"]:
        assert {"id", "chunk_id", "doc_id", "start", "end", "text", "supported"} <= citation.keys()
        assert texts[citation["doc_id"]][citation["start"] : citation["end"]] == citation["text"]
        assert f"[{citation['id']}]" in payload["answer"]


def test_ask_json_contract(workdir) -> None:
    result = rag(
        "ask",
        "How many commune-level military party cells were established?",
        "--model",
        "extractive",
        "--json",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    texts = {p.name: p.read_text(encoding="utf-8") for p in (workdir / "seeds").iterdir()}
    check_answer_contract(payload, texts)
    assert not payload["abstained"] and "529" in payload["answer"]
    assert payload["citations"][0]["supported"] is True


def test_ask_batch_file_prints_one_object_per_line(workdir, tmp_path) -> None:
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        '{"question": "How many commune-level military party cells were established?"}\n'
        "\n"
        "How do I bake sourdough bread?\n"
        '{"question": "   "}\n',
        encoding="utf-8",
    )
    result = rag("ask", "--file", str(questions), "--model", "extractive", "--json", cwd=workdir)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    assert "529" in lines[0]["answer"] and lines[1]["abstained"] is True
    assert lines[2]["error"] == "the question is empty"
    assert result.returncode == 2  # one question was bad input; the others were answered


def test_ask_streams_and_prints_checked_spans(workdir) -> None:
    result = rag(
        "ask",
        "How many personnel and vehicles were deployed for disaster relief?",
        "--model",
        "extractive",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert "✓ supported" in result.stdout and "22,700" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ask", ""), "the question is empty"),
        (("ask", "Who?", "--model", "nosuchprovider/x"), "unknown model"),
        (("ask", "--file", "missing.txt"), "no such file"),
        (("ask",), "give either a question or --file"),
    ],
)
def test_ask_bad_input_exits_2(workdir, args, message) -> None:
    result = rag(*args, cwd=workdir)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_busy_port_or_missing_corpus_with_one_line(tmp_path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = rag(
            "serve", "--port", port, "--corpus", str(SEEDS), "--index-dir", str(tmp_path / "index"), cwd=tmp_path
        )
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot listen on 127.0.0.1:") and "Traceback" not in result.stderr
    assert not (tmp_path / "index").exists()
    result = rag("serve", "--corpus", str(tmp_path / "missing"), cwd=tmp_path)
    assert result.returncode == 2 and "no such corpus folder" in result.stderr


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[retrieval]\nk = \n", {}, "rag.toml is not valid TOML: Invalid value (at line 2, column 5)"),
        (
            "",
            {"RAG_RETRIEVAL__K": "abc"},
            "setting retrieval.k (from RAG_RETRIEVAL__K): Input should be a valid integer",
        ),
        ("[retrieval]\nk = 0\n", {}, "setting retrieval.k (from rag.toml): Input should be greater than or equal to 1"),
        ("[retreival]\nk = 3\n", {}, "unknown setting retreival (from rag.toml)"),
        ("[server]\nport = 99999\n", {"RAG_CONFIG": "other.toml"}, "setting server.port (from other.toml)"),
        ("", {"RAG_INDEX__DIR": "rag.toml"}, "setting index.dir rag.toml is a file, not an index folder"),
    ],
)
def test_bad_settings_exit_2_with_one_line_naming_them(tmp_path, toml, env, message) -> None:
    (tmp_path / env.get("RAG_CONFIG", "rag.toml")).write_text(toml, encoding="utf-8")
    (tmp_path / "rag.toml").touch()
    result = rag("search", "border", cwd=tmp_path, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_index_dir_that_is_a_file_and_unrelated_rag_variables(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not an index", encoding="utf-8")
    result = rag("search", "border", "--index-dir", "notes.txt", cwd=tmp_path)
    assert (
        result.returncode == 2
        and result.stderr.strip() == "error: --index-dir notes.txt is a file, not an index folder"
    )
    # RAG_* variables that are no setting belong to someone else: ignored.
    result = rag(
        "search", "border", "--index-dir", "none", cwd=tmp_path, env={"RAG_UNRELATED": "1", "RAG_CONFIG_X": "y"}
    )
    assert result.returncode == 2 and "run `rag index` first" in result.stderr


def test_index_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for number in range(60):
        paragraphs = (
            f"Record {number}-{part} notes harbour {number * 10 + part} boats, nets and a lighthouse."
            for part in range(10)
        )
        (corpus / f"doc{number:02}.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    env = {
        "RAG_INDEX__PROGRESS_EVERY_S": "0",
        "RAG_CLEANING__ENABLED": "false",
        "RAG_CHUNKING__TARGET_WORDS": "10",
        "RAG_CHUNKING__MAX_WORDS": "20",
        "RAG_CHUNKING__MIN_WORDS": "0",
    }
    result = rag("index", str(corpus), "--index-dir", str(tmp_path / "index"), "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    embedded = json.loads(result.stdout)["embedded"]
    assert embedded == 600
    # One line per slice of embedded passages (rag/embedding.py PROGRESS_SLICE = 512).
    assert result.stderr.splitlines() == [
        "embedded 0/600 passages",
        "embedded 512/600 passages",
        "embedded 600/600 passages",
    ]
