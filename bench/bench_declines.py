"""Calibrates how the embedded model declines: `answer.decline_bias` and `answer.judge_bias`.

1. The small model declines by starting its reply with NOT_FOUND. Greedy decoding declines when
   that token is the likeliest first token; a logit bias b on it makes the model decline only
   when p(NOT) * e^b still beats the best other first token, so b moves the threshold.
2. After a decline, the second look asks the model "does this sentence answer the question?
   yes/no" about the passage sentence ranked most relevant to the question. A bias on "yes" sets
   how sure the model must be for that sentence to become the answer.

Calibrated on ClapNQ dev questions (real answerable and unanswerable questions over a closed
corpus), never on the seed question set, which stays a held-out test; none of them is in
bench_clapnq.py's --sample 30 answer benchmark. Per question: retrieval and prompt exactly as
`rag ask` builds them, the first token's top-20 probabilities, and for questions the model
declines, the judge's first-token probabilities on `Answerer.judge_prompt` (what the second
look sends). Each bias is then scored offline: the share of answerable questions answered, of
unanswerable ones declined, and their mean (balanced accuracy). Writes
bench/results/declines/{report.json,curves.png} and the `bench_declines` section of RESULTS.md."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from datetime import datetime, timezone

import httpx
from bench_clapnq import CLAPNQ_DIR, INDEX_DIR, QUESTIONS, RESULTS_DIR, sample, write_questions
from run_all import markdown_table, rich_table, save_figure, write_section

from rag.beir import beir_settings, build_beir_index, load_beir
from rag.config import Settings
from rag.evaluation import load_questions
from rag.extractive import rank_sentences
from rag.local_llm import get_local_server
from rag.prompts import DECLINE_TOKENS, YES_TOKENS
from rag.service import RagService

OUT_DIR = RESULTS_DIR / "declines"
BIASES = [0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -4.0]
TOP = 20


def calibration_questions(per_class: int) -> list:
    """`per_class` answerable + `per_class` unanswerable ClapNQ questions that the answer
    benchmark's sample of 30 + 30 does not use."""
    questions = load_questions(QUESTIONS)
    held = {q.id for q in sample(questions, 30)}
    return sample([q for q in questions if q.id not in held], per_class)


def first_token(service: RagService, messages: list[dict[str, str]], tokens: tuple[str, ...]) -> dict:
    """p(first token is one of `tokens`) and the best other first token's p, from the local model."""
    server = get_local_server(service.settings.local_llm)
    body = {"messages": messages, "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": TOP, "cache_prompt": True}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers,
                          timeout=600, trust_env=False)
    response.raise_for_status()
    top = response.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return {
        "p": sum(math.exp(t["logprob"]) for t in top if t["token"] in tokens),
        "p_best_other": max((math.exp(t["logprob"]) for t in top if t["token"] not in tokens), default=0.0),
    }


def wins(probabilities: dict, bias: float) -> bool:
    return probabilities["p"] * math.exp(bias) > probabilities["p_best_other"]


def probe(service: RagService, question: str) -> dict | None:
    """None when retrieval alone abstains (no passage close enough): the model is never asked."""
    answerer = service.answerer
    hits = service.retriever.search(question, k=service.settings.answer.k).results
    if not answerer.retrieval_is_relevant(hits):
        return None
    ranked = rank_sentences(question, hits, service.embedder)
    decline = first_token(service, answerer.answer_prompt(question, hits, ranked), DECLINE_TOKENS)
    row: dict = {"decline": decline, "judge": None}
    judge = answerer.judge_prompt(question, ranked)
    if wins(decline, 0.0) and judge is not None:
        row["judge"] = first_token(service, judge, YES_TOKENS)
    return row


def answered(row: dict, decline_bias: float, judge_bias: float | None) -> bool:
    """Would `rag ask` answer? judge_bias None = no second look."""
    if not wins(row["decline"], decline_bias):
        return True
    return judge_bias is not None and row["judge"] is not None and wins(row["judge"], judge_bias)


def curve(rows: list[dict], knob: str) -> list[dict]:
    probed = [r for r in rows if r["probe"]]
    points = []
    for bias in BIASES:
        decline_bias, judge_bias = (bias, None) if knob == "decline" else (0.0, bias)
        said = [(r["answerable"], answered(r["probe"], decline_bias, judge_bias)) for r in probed]
        answers = sum(a and s for a, s in said) / sum(a for a, _ in said)
        declines = sum(not a and not s for a, s in said) / sum(not a for a, _ in said)
        points.append({"bias": bias, "answers_answerable": answers, "declines_unanswerable": declines,
                       "balanced": (answers + declines) / 2})
    return points


def best(points: list[dict]) -> float:
    return max(points, key=lambda p: (round(p["balanced"], 6), p["bias"]))["bias"]


def write_plot(curves: dict[str, list[dict]], chosen: dict[str, float], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, (knob, points) in zip(axes, curves.items()):
        biases = [p["bias"] for p in points]
        ax.plot(biases, [p["answers_answerable"] for p in points], "o-", label="answers answerable questions")
        ax.plot(biases, [p["declines_unanswerable"] for p in points], "o-", label="declines unanswerable questions")
        ax.plot(biases, [p["balanced"] for p in points], "k--", label="mean (balanced accuracy)")
        ax.axvline(chosen[knob], color="grey", linestyle=":", label=f"best {chosen[knob]:g}")
        ax.set_xlabel(f"logit bias on {'NOT_FOUND' if knob == 'decline' else 'the judge’s yes'}")
        ax.set_title("decline_bias (no second look)" if knob == "decline" else "judge_bias (decline_bias 0, second look on)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, "Embedded model on ClapNQ calibration questions", path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    args = parser.parse_args(argv)
    write_questions()
    service = RagService(beir_settings(Settings(), INDEX_DIR))
    build_beir_index(service, load_beir(CLAPNQ_DIR, "dev"))
    questions = calibration_questions(args.per_class)
    clock, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for n, q in enumerate(questions, start=1):
        rows.append({"id": q.id, "answerable": q.answerable, "probe": probe(service, q.question)})
        if n % 10 == 0 or n == len(questions):
            print(f"  {n}/{len(questions)} probed ({time.perf_counter() - clock:.0f} s)", flush=True)
    curves = {"decline": curve(rows, "decline"), "judge": curve(rows, "judge")}
    chosen = {knob: best(points) for knob, points in curves.items()}
    defaults = Settings().answer
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"bench/bench_declines.py --per-class {args.per_class}",
        "seconds": round(time.perf_counter() - clock),
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "questions": len(rows),
        "abstained_by_retrieval": sum(r["probe"] is None for r in rows),
        "declined_unbiased": sum(bool(r["probe"]) and wins(r["probe"]["decline"], 0.0) for r in rows),
        "best": chosen,
        "defaults": {"decline_bias": defaults.decline_bias, "judge_bias": defaults.judge_bias},
        "curves": curves,
        "rows": rows,
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "report.json").write_text(json.dumps(report, indent=1))
    write_plot(curves, chosen, OUT_DIR / "curves.png")
    from rich.console import Console

    headers = ["bias", "answers answerable", "declines unanswerable", "balanced accuracy"]
    body = (
        f"`{report['command']}`, {report['date']}, {report['seconds']} s, load {report['load_average_1min']['start']}"
        f" -> {report['load_average_1min']['end']}. {len(rows)} ClapNQ dev questions ({args.per_class} answerable +"
        f" {args.per_class} unanswerable, none in the answer benchmark's sample); {report['abstained_by_retrieval']}"
        f" abstained at retrieval and are left out. The unbiased model declined {report['declined_unbiased']}, and"
        f" the second look judged its best-ranked passage sentence for each of those. Decisions are"
        f" simulated from first-token top-{TOP} probabilities under the real prompts.\n"
    )
    for knob, title in (("decline", "`answer.decline_bias`, no second look"),
                        ("judge", "`answer.judge_bias`, decline_bias 0 and the second look on")):
        table = [[f"{p['bias']:g}", f"{p['answers_answerable']:.3f}", f"{p['declines_unanswerable']:.3f}",
                  f"{p['balanced']:.3f}"] for p in curves[knob]]
        Console().print(rich_table(title, headers, table))
        body += f"\n{title}: best balanced accuracy at {chosen[knob]:g} (default {report['defaults'][knob + '_bias']:g}).\n\n"
        body += markdown_table(headers, table) + "\n"
    body += "\nPlot: bench/results/declines/curves.png.\n"
    write_section("bench_declines", "Decline calibration (embedded model, ClapNQ)", body)


if __name__ == "__main__":
    main()
