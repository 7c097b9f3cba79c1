"""`rag` command line: a thin caller of RagService. Human output by default, `--json` for
tools. Errors are one line on stderr with exit code 2 (bad input) or 1 (anything else)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.exceptions import TyperException

from rag.config import SEARCH_MODES, Settings, load_settings
from rag.errors import BadInputError, RagError
from rag.ingest.pipeline import EmbedProgress, IndexReport
from rag.jsonl import read_json_lines
from rag.requests import (
    AskOptions,
    AskRequest,
    CheckRequest,
    Request,
    SearchRequest,
    make_request,
)
from rag.schema import page_label

app = typer.Typer(
    help="Questions answered with citations you can check.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)


def _version(given: bool) -> None:
    if given:
        from rag import __version__

        out.print(f"cited-rag {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Questions answered with citations you can check."""


IndexDirOption = Annotated[
    Optional[Path], typer.Option("--index-dir", help="Index folder (default: settings, ./index).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of human output.")]


def _settings(index_dir: Path | None, **flags: dict[str, object]) -> Settings:
    """The settings, with the command-line flags given (not None) over rag.toml and RAG_*:
    `flags` maps a section to its settings, `server={"port": port}`."""
    flags = {**flags, "index": {"dir": index_dir, **flags.get("index", {})}}
    overrides = {
        section: given
        for section, values in flags.items()
        if (given := {k: v for k, v in values.items() if v is not None})
    }
    settings = load_settings(**overrides)
    if settings.index.dir.is_file():
        source = "--index-dir" if index_dir is not None else "setting index.dir"
        raise BadInputError(f"{source} {settings.index.dir} is a file, not an index folder")
    return settings


def _service(index_dir: Path | None, **flags: dict[str, object]):
    from rag.service import RagService

    return RagService(_settings(index_dir, **flags))


def _closed_with(ctx: typer.Context, service):
    """`service`, closed (its embedded model's server stopped) when the command ends, however."""
    ctx.call_on_close(service.close)
    return service


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
        out.print(
            f"Index in {report.index_dir}/ is up to date: {report.documents} documents, {report.chunks} passages."
        )
        return
    out.print(
        f"Indexed {report.documents} documents into {report.index_dir}/: "
        f"{report.chunks} passages ({report.chunks - report.canonical_chunks} near-copies, shown once in results)."
    )
    out.print(
        f"  added {len(report.added)}, updated {len(report.updated)}, removed {len(report.removed)}, "
        f"unchanged {report.unchanged}; embedded {report.embedded} passages, reused {report.reused_vectors}."
    )


def _progress_bar(label: str = "{task.description}") -> Progress:
    """Progress on stderr, so `--json` output on stdout stays clean."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


@contextmanager
def _embed_progress(every_s: float) -> Iterator[EmbedProgress]:
    """A progress bar on a terminal; elsewhere (a log) a line at the start, at the end and every
    `every_s` seconds in between."""
    if not err.is_terminal:
        yield _progress_lines(every_s)
        return
    progress = _progress_bar("Embedding passages")
    task = progress.add_task("embed", total=None)

    def update(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        progress.stop()


def _progress_lines(every_s: float) -> EmbedProgress:
    last = -math.inf

    def update(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done in (0, total) or now - last >= every_s:
            last = now
            err.print(f"embedded {done:,}/{total:,} passages", highlight=False)

    return update


@app.command()
def index(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Folders (mirrored) or files to index. Default: the corpus folder of the settings (./seeds)."
        ),
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Re-embed everything instead of reusing vectors.")] = False,
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
    cluster: Annotated[
        Optional[str],
        typer.Option(
            "--cluster",
            metavar="[ADDRESS]",
            help="Run on a Dask cluster: the scheduler at ADDRESS (tcp://host:port), or alone (or `local`) a local cluster on 127.0.0.1. Needs `pip install cited-rag\\[cluster]`.",
        ),
    ] = None,
) -> None:
    """Index documents: new and changed ones are embedded, deleted ones dropped."""
    # --cluster alone: the scheduler_address setting if there is one, else a local cluster.
    ingest = {} if cluster is None else {"engine": "dask", "scheduler_address": None if cluster == "local" else cluster}
    service = _service(index_dir, ingest=ingest)
    with _embed_progress(service.settings.index.progress_every_s) as update:
        report = service.update(paths=paths or [service.settings.index.corpus_dir], rebuild=rebuild, progress=update)
    _print_json(_report_json(report)) if as_json else _print_report(report)


@app.command()
def remove(
    doc_ids: Annotated[list[str], typer.Argument(help="Document ids as `rag docs` lists them.")],
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove documents from the index, and their files from the corpus folder.

    A file left in the corpus folder would be indexed again; files indexed from elsewhere
    stay where they are."""
    report = _service(index_dir).delete_documents(doc_ids)
    _print_json(_report_json(report)) if as_json else _print_report(report)


@app.command()
def migrate(
    to: Annotated[
        str,
        typer.Option(
            "--to", help="milvus: copy the index in --index-dir into the Milvus store of the settings; faiss: back."
        ),
    ],
    index_dir: IndexDirOption = None,
) -> None:
    """Copy the index between the embedded files and Milvus, vectors included (nothing is embedded again)."""
    from rag.stores.migrate import migrate as copy_index

    if to not in ("milvus", "faiss"):
        raise BadInputError(f"--to {to}: use milvus or faiss")
    report = copy_index(_settings(index_dir), to)
    out.print(f"Copied {report.documents} documents, {report.chunks} passages from {report.source} to {report.target}.")


@app.command()
def docs(index_dir: IndexDirOption = None, as_json: JsonOption = False) -> None:
    """List indexed documents with their chunk counts."""
    infos = _service(index_dir).documents()
    if as_json:
        _print_json({"documents": [i.model_dump() for i in infos]})
        return
    table = Table("doc_id", "title", "chunks", "copies", "chars")
    for info in infos:
        table.add_row(
            escape(info.doc_id), escape(info.title), str(info.chunks), str(info.duplicate_chunks), str(info.chars)
        )
    out.print(table)


@app.command()
def doctor(index_dir: IndexDirOption = None) -> None:
    """Check the index (checksums, counts, offsets) and the model files; exit 1 when something is wrong."""
    from rag.doctor import diagnose

    progress = _progress_bar("Checking")
    task = progress.add_task("hash", total=None)
    with progress:
        checks = diagnose(_settings(index_dir), lambda done, total: progress.update(task, completed=done, total=total))
    for check in checks:
        for problem in check.problems:
            out.print(f"[red]✗ {check.name}:[/] {escape(problem)}", soft_wrap=True)
        if not check.problems:
            out.print(f"[green]✓ {check.name}:[/] {escape(check.detail)}", soft_wrap=True)
    if any(check.problems for check in checks):
        raise SystemExit(1)


@app.command(name="config")
def show_config(index_dir: IndexDirOption = None, as_json: JsonOption = False) -> None:
    """Print the effective settings and where each value came from.

    Sources, first wins: flag, RAG_* variable, rag.toml, default. Keys are not shown."""
    from rag.config import setting_description, setting_sources

    flags = {"index": {"dir": index_dir}} if index_dir is not None else {}
    rows = [
        (name, f"{len(value)} key(s)" if name.endswith("_keys") and value else value, source)
        for name, value, source in setting_sources(_settings(index_dir), flags)
    ]
    if as_json:
        _print_json(
            {
                name: {"value": value, "from": source, "description": setting_description(name)}
                for name, value, source in rows
            }
        )
        return
    table = Table("setting", "value", "from")
    for name, value, source in rows:
        table.add_row(name, escape(str(value)), source if source == "default" else f"[bold]{escape(source)}[/]")
    out.print(table)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="A question or keywords.")],
    k: Annotated[
        Optional[int], typer.Option("--k", "-k", help="Number of passages (default: setting retrieval.k).")
    ] = None,
    mode: Annotated[
        Optional[str], typer.Option("--mode", help="hybrid, dense or bm25 (default: setting retrieval.mode).")
    ] = None,
    doc: Annotated[Optional[list[str]], typer.Option("--doc", help="Only search this document (repeatable).")] = None,
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Find the passages most relevant to a question."""
    service = _service(index_dir)
    response = service.search(_request(SearchRequest, query=query, k=k, mode=mode, doc_ids=doc))
    stale = service.changed_on_disk()
    if stale:
        err.print(
            f"[yellow]warning:[/] {len(stale)} indexed document(s) changed on disk since indexing "
            f"({escape(', '.join(stale[:3]))}); run `rag index` to refresh"
        )
    if as_json:
        payload = response.model_dump()
        _print_json(payload)
        return
    if not response.results:
        out.print("No passages found.")
    for hit in response.results:
        where = " ".join(filter(None, [hit.doc_id, page_label(hit), f"[{hit.start}:{hit.end}]"]))
        also = f"  (also in {', '.join(sorted({a.doc_id for a in hit.also_in}))})" if hit.also_in else ""
        out.print(
            Panel(
                escape(hit.text),
                title=f"{hit.rank}. {escape(hit.title)}",
                subtitle=f"{escape(where)}  score {hit.score:.4f}{escape(also)}",
                title_align="left",
                subtitle_align="left",
            )
        )


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[Optional[str], typer.Argument(help="The question. Omit it with --file.")] = None,
    file: Annotated[
        Optional[Path],
        typer.Option(
            "--file", help="Answer every question in this file: one per line, or JSON Lines with a `question` field."
        ),
    ] = None,
    k: Annotated[
        Optional[int],
        typer.Option(
            "--k", "-k", help="Passages searched for evidence sentences (default: setting evidence.passages)."
        ),
    ] = None,
    mode: Annotated[
        Optional[str],
        typer.Option("--mode", help="Retrieval: hybrid, dense or bm25 (default: setting retrieval.mode)."),
    ] = None,
    doc: Annotated[Optional[list[str]], typer.Option("--doc", help="Only use this document (repeatable).")] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", help="litellm model string, or `extractive` (no LLM). Default: the embedded local model."
        ),
    ] = None,
    api_base: Annotated[
        Optional[str], typer.Option("--api-base", help="Base URL of an OpenAI-compatible server.")
    ] = None,
    temperature: Annotated[
        Optional[float], typer.Option("--temperature", help="Default: setting answer.temperature.")
    ] = None,
    max_tokens: Annotated[
        Optional[int], typer.Option("--max-tokens", help="Default: setting answer.max_tokens.")
    ] = None,
    timeout: Annotated[
        Optional[float],
        typer.Option(
            "--timeout", help="Seconds to wait for the model before falling back (default: setting answer.timeout_s)."
        ),
    ] = None,
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer a question with citations, each checked against the passage it cites."""
    if (question is None) == (file is None):
        raise BadInputError("give either a question or --file QUESTIONS")
    options = _request(
        AskOptions,
        k=k,
        mode=mode,
        doc_ids=doc,
        model=model,
        api_base=api_base,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout_s=timeout,
    )
    service = _closed_with(ctx, _service(index_dir))
    if file is not None:
        _ask_batch(service, file, options, as_json)
        return
    request = AskRequest(question=question, **options.model_dump())
    if as_json:
        _print_json(service.ask(request).model_dump())
        return
    streamed = False
    for event in service.ask_stream(request):
        if event.kind == "token":
            out.print(escape(event.text), end="", soft_wrap=True, highlight=False)
            streamed = True
        elif event.response is not None:
            if streamed:
                out.print()
            _print_answer(event.response, show_answer=not streamed or event.response.abstained)


@app.command()
def check(
    file: Annotated[
        Optional[str], typer.Argument(help="JSON answer with citations (as `rag ask --json` prints), or - for stdin.")
    ] = None,
    claim: Annotated[Optional[str], typer.Option("--claim", help="Check one claim instead of a file.")] = None,
    doc: Annotated[
        Optional[str],
        typer.Option("--doc", help="With --claim: the document it cites (omit to search the index for evidence)."),
    ] = None,
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check each cited sentence of an answer against the passage it cites."""
    from pydantic import ValidationError

    if (file is None) == (claim is None):
        raise BadInputError("give a JSON file (or - for stdin), or --claim TEXT")
    service = _service(index_dir)
    if claim is not None:
        request = CheckRequest(claim=claim, doc_id=doc)
    else:
        try:
            raw = _read_limited(file, service.settings.verification.max_check_chars)
            request = CheckRequest.model_validate_json(raw)
        except FileNotFoundError:
            raise BadInputError(f"no such file: {file}") from None
        except (OSError, UnicodeDecodeError):
            raise BadInputError(f"cannot read {file} as UTF-8 text") from None
        except ValidationError as exc:
            raise BadInputError(
                f"not an answer to check: {exc.errors()[0]['msg']} at {'.'.join(map(str, exc.errors()[0]['loc'])) or 'top level'}"
            ) from None
    report = service.check(request)
    if as_json:
        _print_json(report.model_dump())
        return
    for sentence in report.sentences:
        out.print(f"[bold]{escape(sentence.text)}[/]  [dim]{sentence.status}[/]")
        for verdict in sentence.citations:
            style = {"supported": "[green]✓ supported[/]", "not_supported": "[red]✗ not supported[/]"}.get(
                verdict.verdict, "[red]✗ points at nothing[/]"
            )
            where = (
                f" {escape(verdict.doc_id or '')} [{verdict.start}:{verdict.end}]" if verdict.start is not None else ""
            )
            out.print(
                f"  [{verdict.id}] {style}{where}" + (f"  [dim]({escape(verdict.reason)})[/]" if verdict.reason else "")
            )
            if verdict.text:
                out.print(f"      [italic]“{escape(' '.join(verdict.text.split()))}”[/]")
    if report.uncited_claims:
        out.print(f"[yellow]{len(report.uncited_claims)} claim(s) without a citation[/]")


def _read_limited(file: str, limit: int) -> str:
    """The text of a file (`-`: stdin), refused when over `limit` characters; never more read."""
    with sys.stdin if file == "-" else open(file, encoding="utf-8") as handle:  # noqa: SIM115 - stdin or a file
        text = handle.read(limit + 1)
    if len(text) > limit:
        raise BadInputError(
            f"{'stdin' if file == '-' else file} is over {limit:,} characters (verification.max_check_chars)"
        )
    return text


def _questions(file: Path) -> list[str]:
    """One question per line, or JSON Lines records with a `question` field."""
    questions = []
    for number, _, record in read_json_lines(file, plain_text=True):
        question = record.get("question") if isinstance(record, dict) else record
        if not isinstance(question, str):
            raise BadInputError(f"{file}:{number}: no `question` text field")
        questions.append(question)
    if not questions:
        raise BadInputError(f"{file} holds no questions")
    return questions


def _ask_batch(service, file: Path, options, as_json: bool) -> None:
    """Models load once; a question that fails gets an error object and the batch goes on."""
    questions = _questions(file)
    failures = 0
    for question in questions:
        try:
            response = service.ask(AskRequest(question=question, **options.model_dump()))
        except BadInputError as exc:
            failures += 1
            if as_json:
                _print_json({"question": question, "error": str(exc)})
            else:
                err.print(f"[red]error:[/] {escape(question[:80])}: {escape(str(exc))}")
            continue
        if as_json:
            _print_json(response.model_dump())
        else:
            out.rule(escape(question))
            _print_answer(response, show_answer=True)
    if failures:
        raise SystemExit(2)


STATUS_STYLE = {True: "[green]✓ supported[/]", False: "[red]✗ not supported[/]", None: "[yellow]? unchecked[/]"}


def _print_answer(response, show_answer: bool) -> None:
    if response.abstained:
        out.print(f"[bold yellow]{escape(response.answer)}[/]")
        if response.notice:
            out.print(f"[dim]{escape(response.notice)}[/]")
        return
    if response.notice:
        out.print(f"[yellow]note:[/] {escape(response.notice)}")
    if show_answer or any(c.id != c.passage for c in response.citations):
        out.print(Panel(escape(response.answer), title="Answer", title_align="left"))
    for sentence in response.sentences:
        if sentence.status in ("uncited", "unsupported", "partly"):
            out.print(f"[yellow]{sentence.status}:[/] {escape(sentence.text)}")
    for citation in response.citations:
        out.print(
            f"[bold][{citation.id}][/] {STATUS_STYLE[citation.supported]}  {escape(citation.title)} — "
            f"{escape(citation.doc_id)} {escape(page_label(citation) + ' ') if citation.page else ''}[{citation.start}:{citation.end}]"
            + (f"  [dim]({escape(citation.reason)})[/]" if citation.reason else "")
        )
        out.print(f"    [italic]“{escape(' '.join(citation.text.split()))}”[/]")
    confidence = f" · confidence {response.confidence:.2f}" if response.confidence is not None else ""
    out.print(f"[dim]{response.model}{confidence} · {response.timings_ms.get('total', 0) / 1000:.1f} s[/]")


@app.command(name="eval")
def evaluate(
    ctx: typer.Context,
    target: Annotated[
        Optional[str], typer.Argument(help="A question set (JSON Lines), or `beir` followed by a BEIR dataset folder.")
    ] = None,
    beir_dir: Annotated[
        Optional[Path], typer.Argument(help="With `beir`: the dataset folder (corpus.jsonl, queries.jsonl, qrels/).")
    ] = None,
    compare: Annotated[
        Optional[tuple[Path, Path]], typer.Option("--compare", help="Show two saved reports side by side.")
    ] = None,
    mode: Annotated[
        Optional[str], typer.Option("--mode", help="Retrieval mode (BEIR: only this one; default all).")
    ] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", help="Answer model (litellm string or `extractive`).")
    ] = None,
    k: Annotated[
        Optional[int], typer.Option("--k", "-k", min=1, max=50, help="Passages searched for evidence sentences.")
    ] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N questions.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for report.json and chart.png.")] = None,
    split: Annotated[
        str, typer.Option("--split", help="With `beir`: the qrels split, qrels/SPLIT.tsv (e.g. test, dev).")
    ] = "test",
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate answers on a question set, retrieval on a BEIR dataset, or compare two reports."""
    from rag.eval import evaluation

    if compare is not None:
        reports = {path.stem: _read_report(path) for path in compare}
        if len(reports) < 2:
            reports = {str(path): _read_report(path) for path in compare}
        chart = (out or compare[0].parent) / "comparison.png"
        evaluation.write_chart(reports, chart)
        if as_json:
            _print_json({name: r["metrics"] for name, r in reports.items()} | {"chart": str(chart)})
            return
        _print_metrics(reports)
        err.print(f"chart: {chart}")
        return
    if target is None:
        raise BadInputError("give a question set, `beir DIR`, or --compare A.json B.json")
    if target == "beir":
        if beir_dir is None:
            raise BadInputError("give the BEIR dataset folder: rag eval beir DIR")
        _evaluate_beir(beir_dir, mode, index_dir, as_json, split)
        return
    questions = evaluation.load_questions(Path(target))[:limit]
    service = _closed_with(ctx, _service(index_dir))
    options = _request(AskOptions, k=k, mode=mode, model=model)
    progress = _progress_bar("Answering")
    task = progress.add_task("eval", total=len(questions))
    with progress:
        report = evaluation.evaluate_questions(
            service, questions, options, lambda done, total: progress.update(task, completed=done)
        )
    folder = out or Path("eval-results") / f"{Path(target).stem}-{re.sub(r'[^A-Za-z0-9.-]+', '_', report['model'])}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    evaluation.write_chart({report["model"]: report}, folder / "chart.png")
    if as_json:
        _print_json({k: v for k, v in report.items() if k != "per_question"} | {"report": str(folder / "report.json")})
        return
    _print_metrics({report["model"]: report})
    err.print(f"report: {folder / 'report.json'}  chart: {folder / 'chart.png'}")


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        report["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInputError(f"{path} is not a report written by `rag eval`") from None
    return report


def _print_metrics(reports: dict[str, dict]) -> None:
    table = Table("metric", *reports)
    first = next(iter(reports.values()))
    for group, values in first["metrics"].items():
        for key in values:
            cells = []
            for report in reports.values():
                value = report["metrics"].get(group, {}).get(key)
                cells.append(
                    "–"
                    if value is None
                    else f"{value:.3f}"
                    if isinstance(value, float) and value <= 1
                    else f"{value:,.0f}"
                )
            table.add_row(f"{group}.{key}", *cells)
    out.print(table)


def _evaluate_beir(dataset: Path, mode: str | None, index_dir: Path | None, as_json: bool, split: str = "test") -> None:
    from rag.eval.beir import evaluate_beir

    settings = _settings(index_dir)
    modes = [_request(SearchRequest, query="-", mode=mode).mode] if mode else list(SEARCH_MODES)
    progress = _progress_bar()
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done, total=total)

    with progress:
        results = evaluate_beir(dataset, settings, modes, split=split, progress=update)
    if as_json:
        _print_json(results if len(results) > 1 else next(iter(results.values())) | {"mode": modes[0]})
        return
    table = Table("mode", *next(iter(results.values())))
    for name, metrics in results.items():
        table.add_row(name, *(f"{v:.4f}" for v in metrics.values()))
    out.print(table)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        Optional[str], typer.Option("--host", help="Address to bind (default: settings, 127.0.0.1).")
    ] = None,
    port: Annotated[
        Optional[int], typer.Option("--port", min=0, max=65535, help="Port (default: settings, 7860).")
    ] = None,
    corpus: Annotated[
        Optional[Path],
        typer.Option("--corpus", help="Corpus folder: indexed at start, uploads are saved here (default: ./seeds)."),
    ] = None,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated",
            help="Serve a non-loopback address without API keys: anyone who reaches it may read, ask, upload and delete.",
        ),
    ] = False,
    index_dir: IndexDirOption = None,
) -> None:
    """Serve the web interface and the HTTP API on one port, indexing the corpus first."""
    from rag.serve.access import is_loopback, load_keys

    settings = _settings(index_dir, index={"corpus_dir": corpus}, server={"host": host, "port": port})
    if not settings.index.corpus_dir.is_dir():
        raise BadInputError(f"no such corpus folder: {settings.index.corpus_dir}")
    host, port = settings.server.host, settings.server.port
    # Before binding anything, and before minutes of loading, not after.
    if not load_keys(settings.server).enabled and not is_loopback(host) and not allow_unauthenticated:
        raise BadInputError(
            f"refusing to serve {host} without API keys: set server.api_keys or server.admin_keys "
            "(see README, Security), or pass --allow-unauthenticated"
        )
    _check_can_listen(host, port)
    from rag.service import RagService

    service = _closed_with(ctx, RagService(settings))
    with _embed_progress(settings.index.progress_every_s) as update:
        _print_report(service.update(paths=[settings.index.corpus_dir], progress=update))
    import uvicorn

    from rag.serve.app import create_app

    web_app = create_app(service)
    out.print(f"Serving on [bold]http://{host}:{port}/[/] (API docs at /docs). Press Ctrl+C to stop.")
    uvicorn.run(web_app, host=host, port=port, log_level="warning")


@app.command()
def mcp(index_dir: IndexDirOption = None) -> None:
    """Serve the tools search, ask, check and list_documents to an MCP client over stdio (the
    index as `rag index` left it; `rag serve` also serves them over HTTP at /mcp)."""
    from rag.serve.mcp_tools import create_mcp

    service = _service(index_dir)
    _ = service.store  # a missing or damaged index is a one-line error now, not at the first call
    # stdout carries the protocol from here on: nothing else may be printed there.
    create_mcp(service).run("stdio")


def _check_can_listen(host: str, port: int) -> None:
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        raise BadInputError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port or --host)"
        ) from None


# Request fields whose command-line option has another name.
OPTION_NAMES = {"doc_ids": "doc", "timeout_s": "timeout"}


def _request(kind: type[Request], **fields: object) -> Request:
    """A request from the command-line values given; a bad one is one line naming the option."""

    def option(field: str) -> str:
        return "--" + OPTION_NAMES.get(field, field).replace("_", "-")

    return make_request(kind, {name: value for name, value in fields.items() if value is not None}, option)


class _OneLineWarnings(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]warning:[/] {escape(record.getMessage())}")


def _check_arguments(arguments: list[str]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates: refuse them here, not as a
    failure deep inside an index or a JSON dump."""
    from rag.text.words import is_unicode_text

    for number, argument in enumerate(arguments, start=1):
        if not is_unicode_text(argument):
            shown = argument.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise BadInputError(f"argument {number} is not UTF-8 text: {shown}")


def _optional_values(arguments: list[str]) -> list[str]:
    """`--cluster` takes an address only when one follows (scheme://...); alone it means `local`
    (typer options have no optional values)."""
    out = []
    for i, argument in enumerate(arguments):
        out.append(argument)
        if argument == "--cluster" and (i + 1 == len(arguments) or "://" not in arguments[i + 1]):
            out.append("local")
    return out


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, handlers=[_OneLineWarnings()])
    try:
        _check_arguments(sys.argv[1:])
        app(args=_optional_values(sys.argv[1:]), standalone_mode=False)
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
