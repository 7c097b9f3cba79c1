from pathlib import Path

from rag.config import IndexSettings
from rag.ingest.loading import load_paths

LIMIT = IndexSettings().max_file_bytes


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def test_loads_text_markdown_and_html_with_relative_ids(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "First line.\r\nSecond line with Source: nothing\nSource: https://example.org/a\n")
    write(tmp_path / "sub" / "b.md", "Intro text.\n\n# The Title\n\nBody paragraph here.\n")
    write(
        tmp_path / "c.html",
        "<html><head><title>Page Title</title></head><body><nav>Home | About</nav>"
        "<article><h1>Page Title</h1><p>"
        + "The river floods every spring and the town prepares sandbags. " * 6
        + "</p></article></body></html>",
    )
    report, roots = load_paths([tmp_path], LIMIT)
    docs = {d.doc_id: d for d in report.documents}
    assert set(docs) == {"a.txt", "sub/b.md", "c.html"}
    assert roots == [tmp_path.resolve()]
    # Text is kept as decoded: CRLF newlines survive, so offsets match the file.
    assert docs["a.txt"].text.startswith("First line.\r\n")
    assert docs["a.txt"].source_url == "https://example.org/a"
    assert docs["sub/b.md"].title == "The Title"
    assert docs["sub/b.md"].format == "markdown"
    assert docs["c.html"].title == "Page Title"
    assert "town prepares sandbags" in docs["c.html"].text
    assert "<p>" not in docs["c.html"].text
    assert report.skipped == []


def test_bad_files_are_skipped_with_a_reason_and_nothing_else_is_lost(tmp_path: Path, caplog) -> None:
    write(tmp_path / "good.txt", "A perfectly fine document about harbours and boats.")
    write(tmp_path / "binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(tmp_path / "latin1.txt", "Caf\xe9 cr\xe8me".encode("latin-1"))
    write(tmp_path / "empty.txt", "   \n\n")
    write(tmp_path / "image.png", b"\x89PNG")
    write(tmp_path / ".hidden.txt", "ignored")
    report, _ = load_paths([tmp_path], LIMIT)
    assert [d.doc_id for d in report.documents] == ["good.txt"]
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert reasons["binary.txt"] == "binary file"
    assert reasons["latin1.txt"].startswith("not UTF-8")
    assert reasons["empty.txt"].startswith("no text")
    assert "unsupported file type" in reasons["image.png"]
    assert ".hidden.txt" not in reasons
    assert all(Path(p).name in caplog.text for p, _ in report.skipped)


def test_single_file_gets_its_name_as_id(tmp_path: Path) -> None:
    path = write(tmp_path / "deep" / "note.txt", "Just one note with some words in it.")
    report, roots = load_paths([path], LIMIT)
    assert [d.doc_id for d in report.documents] == ["note.txt"]
    assert roots == []  # files are added, never mirrored


def test_seed_source_url_becomes_metadata() -> None:
    from conftest import SEEDS

    report, _ = load_paths([SEEDS], LIMIT)
    urls = {d.doc_id: d.source_url for d in report.documents}
    assert urls["004_a3b36d9e2d4bee8b.txt"].startswith("https://baogialai.com.vn/")
    assert len(report.documents) == 5


def test_a_file_over_the_size_limit_is_skipped_unread(tmp_path: Path, monkeypatch, caplog) -> None:
    write(tmp_path / "small.txt", "A short note about the harbour.")
    write(tmp_path / "huge.txt", "word " * 30)
    opened: list[str] = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self.name) or real_open(self, *a, **k))
    report, _ = load_paths([tmp_path], 100)
    assert [d.doc_id for d in report.documents] == ["small.txt"]
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert reasons["huge.txt"] == "150 bytes, over the limit of 100 (index.max_file_bytes)"
    assert "huge.txt" in caplog.text
    assert opened == ["small.txt"]  # judged by its size on disk, never read


def test_titles_are_capped(tmp_path: Path) -> None:
    write(tmp_path / "one-word.txt", "x" * 5_000_000)
    write(tmp_path / "heading.md", "# " + "Long heading " * 100 + "\n\nBody text of the note.\n")
    docs = {d.doc_id: d for d in load_paths([tmp_path], LIMIT)[0].documents}
    for doc in docs.values():
        assert len(doc.display_title) <= 200 and doc.display_title.endswith("…")
    assert docs["heading.md"].display_title.startswith("Long heading Long heading")
