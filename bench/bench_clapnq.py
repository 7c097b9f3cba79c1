"""End-to-end cited answers on ClapNQ dev (300 answerable + 300 unanswerable questions over a
closed corpus of their 592 passages), through the real service and `rag.eval.evaluation`.

1. Converts ClapNQ into our question-set format: bench/questions/clapnq_dev.jsonl (`answers` =
   the human long-form answers, `doc_ids` = the gold passage, `quotes` = the annotators'
   selected supporting sentences, verbatim in the passage).
2. Indexes the passages with `rag.eval.beir` into bench/.cache/clapnq/beir/clapnq (the same folder
   `rag eval beir /work/shared/benchmarks/clapnq --split dev --index-dir bench/.cache/clapnq`
   uses), never ./index.
3. Answers the questions with --model (default extractive) and writes
   bench/results/clapnq-<name>/report.json and chart.png; --sample N takes every k-th
   answerable and every k-th unanswerable question, N of each.
4. Rewrites its RESULTS.md section from every clapnq run report present, with the retrieval
   figures of `rag eval beir` (bench/results/clapnq-beir/metrics.json) and the ALCE anchors.

The same evaluation from the CLI, once the index exists (BEIR indexes are built with cleaning
off, and an index is only used with the settings it was built with):
    RAG_CLEANING__ENABLED=false rag eval bench/questions/clapnq_dev.jsonl \
        --index-dir bench/.cache/clapnq/beir/clapnq --model extractive --out eval-results/clapnq

Answer quality: ClapNQ gold answers are long-form, so "contains the expected answer" (the
whole gold answer verbatim) is near 0 by construction; token recall of the gold answer
(share of its tokens in ours) is the headline figure, token F1 beside it."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from run_all import (
    BENCH_DIR,
    BENCHMARKS_DIR,
    CACHE_DIR,
    markdown_table,
    rich_table,
    write_section,
)

from rag.config import Settings
from rag.eval.beir import beir_settings, build_beir_index, load_beir
from rag.eval.evaluation import (
    chart_rows,
    evaluate_questions,
    load_questions,
    write_chart,
)
from rag.requests import AskOptions
from rag.service import RagService

CLAPNQ_DIR = BENCHMARKS_DIR / "clapnq"
QUESTIONS = BENCH_DIR / "questions" / "clapnq_dev.jsonl"
INDEX_DIR = CACHE_DIR / "clapnq" / "beir" / "clapnq"
RESULTS_DIR = BENCH_DIR / "results"
BEIR_METRICS = RESULTS_DIR / "clapnq-beir" / "metrics.json"
# ALCE (Gao et al. 2023), ASQA, citation precision / recall in %.
ANCHORS = {"ChatGPT (ALCE-ASQA)": (65.1, 76.6), "Self-RAG 13B (ALCE-ASQA)": (70.3, 71.3)}
TARGET = 85.0  # % on both ALCE citation precision and recall


def write_questions() -> dict[str, int]:
    """The question set, rebuilt from the ClapNQ files each run (deterministic)."""
    corpus = {r["_id"]: r["text"] for r in map(json.loads, (CLAPNQ_DIR / "corpus.jsonl").read_text().splitlines())}
    lines, quotes, missing = [], 0, 0
    for record in map(json.loads, (CLAPNQ_DIR / "answers.jsonl").read_text().splitlines()):
        item = {"id": record["_id"], "question": record["question"], "answerable": record["answerable"]}
        if record["answerable"]:
            gold = record["gold_passage_id"]
            selected = dict.fromkeys(s for group in record["selected_sentences"] for s in group)
            found = [s for s in selected if s in corpus[gold]]
            quotes += len(found)
            missing += len(selected) - len(found)
            item |= {
                "answers": record["answers"],
                "doc_ids": [gold],
                "quotes": [{"doc_id": gold, "quote": s} for s in found],
            }
        lines.append(json.dumps(item, ensure_ascii=False))
    QUESTIONS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"questions": len(lines), "quotes": quotes, "quotes_not_verbatim": missing}


def sample(questions: list, per_class: int | None) -> list:
    if per_class is None:
        return questions
    picked = []
    for answerable in (True, False):
        group = [q for q in questions if q.answerable == answerable]
        picked += group[:: max(1, len(group) // per_class)][:per_class]
    return picked


def run(model: str, per_class: int | None, name: str) -> Path:
    converted = write_questions()
    print(f"{QUESTIONS}: {converted}")
    service = RagService(beir_settings(Settings(), INDEX_DIR))
    build_beir_index(service, load_beir(CLAPNQ_DIR, "dev"))
    questions = sample(load_questions(QUESTIONS), per_class)
    load_before, clock = os.getloadavg()[0], time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 20 == 0 or done == total:
            print(f"  {done}/{total} answered ({time.perf_counter() - clock:.0f} s)", flush=True)

    report = evaluate_questions(service, questions, AskOptions(model=model), progress)
    report["run"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"bench/bench_clapnq.py --model {model}" + (f" --sample {per_class}" if per_class else ""),
        "seconds": round(time.perf_counter() - clock),
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "sample": f"every k-th, {per_class} answerable + {per_class} unanswerable" if per_class else "all",
    }
    folder = RESULTS_DIR / f"clapnq-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    write_chart({report["model"]: report}, folder / "chart.png")
    return folder


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def write_results_section() -> None:
    reports = {
        path.parent.name.removeprefix("clapnq-"): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(RESULTS_DIR.glob("clapnq-*/report.json"))
        if "metrics" in json.loads(path.read_text(encoding="utf-8"))
    }
    parts = []
    if BEIR_METRICS.exists():
        beir = json.loads(BEIR_METRICS.read_text(encoding="utf-8"))
        parts.append(
            "Retrieval, `rag eval beir /work/shared/benchmarks/clapnq --split dev --index-dir bench/.cache/clapnq --json` "
            "(300 answerable queries, one gold passage each; written to `bench/results/clapnq-beir/metrics.json`). "
            "Closed-corpus caveat: the corpus is only the 592 dev passages, not ClapNQ's 178k-passage retrieval corpus "
            "(not obtainable here), so these figures are far easier than the paper's setting and are no retrieval "
            "leaderboard entry.\n\n"
            + markdown_table(
                ["mode", "nDCG@10", "Recall@10", "Recall@100", "MRR@10"],
                [
                    [m, *(f"{s[k]:.4f}" for k in ("nDCG@10", "Recall@10", "Recall@100", "MRR@10"))]
                    for m, s in beir.items()
                ],
            )
        )
    if reports:
        headers = ["metric", *(f"{name} ({r['model']}, {r['questions']} q)" for name, r in reports.items())]
        keys = [
            ("answer", "token_recall", "gold-answer token recall (answerable; abstention = 0)"),
            ("answer", "token_f1", "token F1 (answerable)"),
            ("answer", "accuracy", "contains a whole gold answer (answerable)"),
            ("citations", "recall", "ALCE citation recall (answered answerable)"),
            ("citations", "precision", "ALCE citation precision"),
            ("citations", "quote_in_span", "a gold supporting sentence inside a cited span"),
            ("citations", "service_supported_citations", "citations the service itself marks supported"),
            ("abstention", "unanswerable_abstained", "abstains on unanswerable"),
            ("abstention", "answerable_abstained", "abstains on answerable (false abstention)"),
            ("abstention", "accuracy", "abstention accuracy (all questions)"),
            ("retrieval", "Recall@5", "retrieval Recall@5 (hybrid, gold passage)"),
        ]
        rows = [[label, *(pct(r["metrics"][g].get(k)) for r in reports.values())] for g, k, label in keys]
        rows.append(
            [
                "answered answerable questions (ALCE scores are over these)",
                *(
                    str(sum(q["answerable"] and not q["abstained"] for q in r["per_question"]))
                    for r in reports.values()
                ),
            ]
        )
        rows.append(
            [
                "citations with invalid offsets",
                *(str(r["metrics"]["citations"]["invalid_offsets"]) for r in reports.values()),
            ]
        )
        rows.append(
            [
                "total latency p50 / p95 s",
                *(
                    f"{r['metrics']['latency_ms']['total_p50'] / 1000:.1f} / {r['metrics']['latency_ms']['total_p95'] / 1000:.1f}"
                    for r in reports.values()
                ),
            ]
        )
        runs = "\n".join(
            f"- `{name}`: `.venv/bin/python {r['run']['command']}` at {r['run']['date']}, {r['run']['seconds']} s, "
            f"questions: {r['run']['sample']}; 1-min load average {r['run']['load_average_1min']['start']} -> "
            f"{r['run']['load_average_1min']['end']} (2 cores, shared with other evaluations). "
            f"Report `bench/results/clapnq-{name}/report.json`, chart `bench/results/clapnq-{name}/chart.png`."
            for name, r in reports.items()
        )
        chart = RESULTS_DIR / "clapnq-comparison.png"
        write_chart({f"{name} ({r['model']})": r for name, r in reports.items() if chart_rows(r)}, chart)
        anchors = "; ".join(f"{name} {p} / {r}" for name, (p, r) in ANCHORS.items())
        verdicts = "\n".join(
            f"- `{name}`: ALCE citation precision {pct(c['precision'])} / recall {pct(c['recall'])} vs target > {TARGET}: "
            + ("met" if min(c["precision"], c["recall"]) * 100 > TARGET else "not met")
            for name, r in reports.items()
            if (c := r["metrics"]["citations"])["precision"] is not None
        )
        parts.append(
            "Cited answers (`rag.eval.evaluation` through the real service, index above, hybrid retrieval, default "
            "answer settings). Figures in %. Answer quality: ClapNQ's gold answers are long-form, so the headline is "
            "token recall of the best-matching gold answer; 'contains a whole gold answer' is near 0 by construction. "
            "Citation recall/precision follow ALCE's definitions (joint entailment by the concatenated cited passages; "
            "a citation is relevant if it supports alone or is needed), macro-averaged over answers, with our verifier "
            "(as `rag check` runs it, calibrated in the section 'ClapNQ citation-checker calibration') as the judge "
            f"instead of ALCE's T5-11B NLI model. ALCE anchors (precision / recall): {anchors}; target > {TARGET:.0f} on both.\n\n"
            + markdown_table(headers, rows)
            + f"\n\n{verdicts}\n\nCaveat on these citation scores: the service itself checks every citation with the same "
            "verifier before answering, re-pointing or withholding unsupported ones, so the judge here measures how "
            "consistent delivered answers are with the calibrated checker (whose own error on ClapNQ pairs is in the "
            "calibration section), not an independent NLI verdict; with the extractive model every answer sentence is "
            f"a verbatim passage sentence.\n\nComparison chart: `bench/results/clapnq-comparison.png`.\n\n{runs}"
        )
    write_section("bench_clapnq", "ClapNQ dev: retrieval, cited answers, abstention", "\n\n".join(parts))
    if reports:
        from rich.console import Console

        Console().print(rich_table("ClapNQ", headers, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="extractive", help="answer model: extractive or a litellm string")
    parser.add_argument("--sample", type=int, default=None, help="N answerable + N unanswerable questions")
    parser.add_argument("--name", default=None, help="results folder suffix (default from model and sample)")
    parser.add_argument("--section-only", action="store_true", help="only rewrite the RESULTS.md section")
    args = parser.parse_args(argv)
    if not args.section_only:
        name = args.name or re.sub(r"[^A-Za-z0-9.-]+", "_", args.model.split("/")[-1]) + (
            f"-sample{args.sample}" if args.sample else ""
        )
        folder = run(args.model, args.sample, name)
        print(f"report: {folder / 'report.json'}")
    write_results_section()


if __name__ == "__main__":
    main()
