"""`rag` command line: a thin caller of RagService. Human output by default, `--json` for
tools. Errors are one line on stderr with exit code 2 (bad input) or 1 (anything else)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.exceptions import TyperException
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from rag.config import SearchMode, Settings, load_settings
from rag.errors import BadInputError, RagError
from rag.indexing import IndexReport

app = typer.Typer(
    help="Questions answered with citations you can check.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

IndexDirOption = Annotated[Optional[Path], typer.Option("--index-dir", help="Index folder (default: settings, ./index).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of human output.")]


def _settings(index_dir: Path | None) -> Settings:
    settings = load_settings()
    if index_dir is not None:
        settings.index.dir = index_dir
    return settings


def _service(index_dir: Path | None):
    from rag.service import RagService

    return RagService(_settings(index_dir))


def _print_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")


def _report_json(report: IndexReport) -> dict:
    from dataclasses import asdict

    return asdict(report)


def _print_report(report: IndexReport) -> None:
    for path, reason in report.skipped:
        err.print(f"[yellow]skipped[/] {escape(path)}: {escape(reason)}")
    for reason in report.rebuilt_because:
        err.print(f"[yellow]rebuilding:[/] {escape(reason)}")
    if not report.written:
        out.print(f"Index in {report.index_dir}/ is up to date: {report.documents} documents, {report.canonical_chunks} passages.")
        return
    out.print(
        f"Indexed {report.documents} documents into {report.index_dir}/: "
        f"{report.chunks} chunks, {report.canonical_chunks} unique passages "
        f"({report.chunks - report.canonical_chunks} near-duplicates folded)."
    )
    out.print(
        f"  added {len(report.added)}, updated {len(report.updated)}, removed {len(report.removed)}, "
        f"unchanged {report.unchanged}; embedded {report.embedded} passages, reused {report.reused_vectors}."
    )


def _embed_progress():
    progress = Progress(
        TextColumn("Embedding passages"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    )
    task = progress.add_task("embed", total=None)

    def update(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    return progress, update


@app.command()
def index(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Folders (mirrored) or files to index. Default: the corpus folder of the settings (./seeds).")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Re-embed everything instead of reusing vectors.")] = False,
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Index documents: new and changed ones are embedded, deleted ones dropped."""
    service = _service(index_dir)
    progress, update = _embed_progress()
    try:
        report = service.update(paths=paths or [service.settings.corpus_dir], rebuild=rebuild, progress=update)
    finally:
        progress.stop()
    _print_json(_report_json(report)) if as_json else _print_report(report)


@app.command()
def remove(
    doc_ids: Annotated[list[str], typer.Argument(help="Document ids as `rag docs` lists them.")],
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove documents from the index (the files stay where they are)."""
    report = _service(index_dir).update(remove=doc_ids)
    _print_json(_report_json(report)) if as_json else _print_report(report)


@app.command()
def docs(index_dir: IndexDirOption = None, as_json: JsonOption = False) -> None:
    """List indexed documents with their chunk counts."""
    infos = _service(index_dir).documents()
    if as_json:
        _print_json({"documents": [i.model_dump() for i in infos]})
        return
    table = Table("doc_id", "title", "chunks", "copies", "chars")
    for info in infos:
        table.add_row(escape(info.doc_id), escape(info.title), str(info.chunks), str(info.duplicate_chunks), str(info.chars))
    out.print(table)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="A question or keywords.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="Number of passages.")] = 5,
    mode: Annotated[str, typer.Option("--mode", help="hybrid, dense or bm25.")] = "hybrid",
    doc: Annotated[Optional[list[str]], typer.Option("--doc", help="Only search this document (repeatable).")] = None,
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Find the passages most relevant to a question."""
    service = _service(index_dir)
    response = service.search(query, k=k, mode=_mode(mode), doc_ids=doc)
    stale = service.changed_on_disk()
    if stale:
        err.print(f"[yellow]warning:[/] {len(stale)} indexed document(s) changed on disk since indexing "
                  f"({escape(', '.join(stale[:3]))}); run `rag index` to refresh")
    if as_json:
        payload = response.model_dump()
        _print_json(payload)
        return
    if not response.results:
        out.print("No passages found.")
    for hit in response.results:
        where = f"{hit.doc_id} [{hit.start}:{hit.end}]"
        also = f"  (also in {', '.join(sorted({a.doc_id for a in hit.also_in}))})" if hit.also_in else ""
        out.print(Panel(escape(hit.text), title=f"{hit.rank}. {escape(hit.title)}", subtitle=f"{escape(where)}  score {hit.score:.4f}{escape(also)}", title_align="left", subtitle_align="left"))


def _mode(mode: str) -> SearchMode:
    if mode not in ("hybrid", "dense", "bm25"):
        raise BadInputError(f"unknown search mode '{mode}' (use hybrid, dense or bm25)")
    return mode  # type: ignore[return-value]


class _OneLineWarnings(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]warning:[/] {escape(record.getMessage())}")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, handlers=[_OneLineWarnings()])
    try:
        app(standalone_mode=False)
    except RagError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise SystemExit(exc.exit_code) from None
    except (typer.Abort, KeyboardInterrupt):
        err.print("[red]interrupted[/]")
        raise SystemExit(130) from None
    except TyperException as exc:  # usage errors: unknown command, invalid option value
        if exc.format_message():  # empty after `rag` alone printed the help
            err.print(f"[red]error:[/] {escape(exc.format_message())}")
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:  # a user sees one line, never a traceback (RAG_DEBUG=1 shows it)
        if os.environ.get("RAG_DEBUG"):
            raise
        err.print(f"[red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))} (set RAG_DEBUG=1 for details)")
        raise SystemExit(1) from None

if __name__ == "__main__":
    main()
