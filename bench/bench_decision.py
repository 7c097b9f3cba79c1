"""Fits the calibrated decision to answer or abstain (rag/decision.py) on ClapNQ dev questions.

For each calibration question (answerable and unanswerable ClapNQ dev questions that the
answer benchmark's 30 + 30 sample does not use), the real answer path runs up to the choice:
retrieval, evidence selection, and the embedded model's first-token probabilities over the
numbered evidence (`Answerer.choice_prompt`). Every candidate sentence's signals
(rag.answer.decision.Signals) are recorded with a label: 1 when it holds a gold supporting sentence
of an answerable question, else 0. Probes are cached in bench/results/decision/probes.json, so
refitting costs no model time (--refit).

A logistic regression over candidates (scikit-learn) is fitted on the candidates of one half of
the questions and scored on the other: a question is answered by its most confident
candidate, right when that candidate is gold (AUC, and the curve of answered-right against
abstention on unanswerable questions). It is then refitted on all and written to
rag/decision.json with the smallest threshold that abstains on at least --abstain of the
unanswerable calibration questions. Plot: bench/results/decision/curve.png."""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime

import numpy as np
from bench_clapnq import (
    CLAPNQ_DIR,
    INDEX_DIR,
    QUESTIONS,
    RESULTS_DIR,
    sample,
    write_questions,
)
from run_all import markdown_table, save_figure, write_section

from rag.answer.choice import choice_from_probabilities
from rag.answer.decision import DECISION_FILE, DecisionModel
from rag.config import Settings
from rag.eval.beir import beir_settings, build_beir_index, load_beir
from rag.eval.evaluation import EvalQuestion, load_questions
from rag.llm.generation import first_token_probabilities
from rag.requests import AskOptions
from rag.service import RagService

OUT_DIR = RESULTS_DIR / "decision"
PROBES = OUT_DIR / "probes.json"
FEATURES = ["retrieval", "evidence", "chosen", "position", "log_p_choice", "log_p_none"]


def calibration_questions(per_class: int) -> list[EvalQuestion]:
    questions = load_questions(QUESTIONS)
    held = {q.id for q in sample(questions, 30)}
    return sample([q for q in questions if q.id not in held], per_class)


def covers(text: str, quotes: list[str]) -> bool:
    """Does an evidence sentence hold (at least half of) a gold supporting sentence?"""
    text = " ".join(text.split())
    for quote in map(lambda q: " ".join(q.split()), quotes):
        if quote in text or (text in quote and len(text) >= len(quote) / 2):
            return True
    return False


def probe(service: RagService, q: EvalQuestion) -> dict:
    """Every candidate's signals and label, or why the question never reached the model."""
    answerer = service.answerer
    model = service.settings.answer.model
    draft = answerer.draft(q.question, model, AskOptions())
    if answerer.retrieval_guard(draft):
        return {"id": q.id, "answerable": q.answerable, "reached_model": False}
    cfg = service.settings.answer
    probabilities = first_token_probabilities(
        answerer.choice_prompt(draft),
        model=model,
        api_base=cfg.api_base,
        timeout_s=600,
        local_model=service.local_model,
    )
    draft.choice = choice_from_probabilities(probabilities, len(draft.evidence))
    quotes = [quote.quote for quote in q.quotes]
    return {
        "id": q.id,
        "answerable": q.answerable,
        "reached_model": draft.choice.best is not None,
        "candidates": [
            {"signals": answerer.signals(draft, i).__dict__, "label": int(q.answerable and covers(s.text, quotes))}
            for i, s in enumerate(draft.evidence)
        ],
    }


def matrix(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    candidates = [c for r in rows for c in r["candidates"]]
    return np.array([[c["signals"][f] for f in FEATURES] for c in candidates]), np.array(
        [c["label"] for c in candidates]
    )


def fit(rows: list[dict]):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=1000).fit(*matrix(rows))


def answers(model, rows: list[dict]) -> list[dict]:
    """Each question's most confident candidate: its confidence and whether it is gold."""
    out = []
    for r in rows:
        x, y = matrix([r])
        confidence = model.predict_proba(x)[:, 1]
        best = int(np.argmax(confidence))
        out.append(
            {
                "id": r["id"],
                "answerable": r["answerable"],
                "confidence": float(confidence[best]),
                "right": bool(y[best]),
                "first_right": bool(y[0]),
                "model_right": bool(y[int(np.argmax(x[:, FEATURES.index("log_p_choice")]))]),
            }
        )
    return out


def auc(scores: list[float], labels: list[bool]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else None


def curve(rows: list[dict], answered: list[dict]) -> list[dict]:
    """At each threshold: share of unanswerable questions abstained on (those that never reached
    the model abstain anyway) and shares of answerable ones answered right and wrong."""
    unanswerable = sum(not r["answerable"] for r in rows)
    answerable = len(rows) - unanswerable
    points = []
    for threshold in np.round(np.arange(0.0, 1.0001, 0.02), 2):
        shown = [a for a in answered if a["confidence"] >= threshold]
        points.append(
            {
                "threshold": float(threshold),
                "abstains_unanswerable": 1 - sum(not a["answerable"] for a in shown) / max(unanswerable, 1),
                "answerable_right": sum(a["answerable"] and a["right"] for a in shown) / max(answerable, 1),
                "answerable_wrong": sum(a["answerable"] and not a["right"] for a in shown) / max(answerable, 1),
            }
        )
    return points


def operating_point(points: list[dict], target: float) -> dict:
    return next(p for p in points if p["abstains_unanswerable"] >= target)


def write_plot(held_out: list[dict], fitted: list[dict], threshold: float, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for points, style, name in (
        (held_out, "o-", "held-out half (fitted on the other)"),
        (fitted, "s--", "all (final fit)"),
    ):
        left.plot(
            [p["abstains_unanswerable"] for p in points],
            [p["answerable_right"] for p in points],
            style,
            markersize=3,
            label=name,
        )
        right.plot(
            [p["threshold"] for p in points],
            [p["abstains_unanswerable"] for p in points],
            style,
            markersize=3,
            label=f"abstains on unanswerable ({name})",
        )
        right.plot(
            [p["threshold"] for p in points],
            [p["answerable_right"] for p in points],
            style,
            markersize=3,
            label=f"answerable answered right ({name})",
        )
    left.set_xlabel("abstains on unanswerable questions")
    left.set_ylabel("answerable questions answered right")
    left.set_title("trade-off as the confidence threshold moves")
    right.axvline(threshold, color="grey", linestyle=":", label=f"threshold {threshold:g}")
    right.set_xlabel("confidence threshold")
    right.set_ylim(0, 1.02)
    right.legend(fontsize=6, loc="lower left")
    left.legend(fontsize=7)
    save_figure(fig, "Calibrated decision, embedded model, ClapNQ calibration questions", path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--abstain", type=float, default=0.9, help="abstention on unanswerable questions to reach")
    parser.add_argument("--refit", action="store_true", help="reuse the cached probes")
    args = parser.parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    clock, load_before = time.perf_counter(), os.getloadavg()[0]
    if args.refit:
        probes = json.loads(PROBES.read_text())
    else:
        write_questions()
        service = RagService(beir_settings(Settings(), INDEX_DIR))
        build_beir_index(service, load_beir(CLAPNQ_DIR, "dev"))
        questions = calibration_questions(args.per_class)
        rows = []
        for n, q in enumerate(questions, start=1):
            rows.append(probe(service, q))
            if n % 10 == 0 or n == len(questions):
                print(f"  {n}/{len(questions)} probed ({time.perf_counter() - clock:.0f} s)", flush=True)
        probes = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": f"bench/bench_decision.py --per-class {args.per_class}",
            "seconds": round(time.perf_counter() - clock),
            "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
            "rows": rows,
        }
        PROBES.write_text(json.dumps(probes, indent=1))
    rows = probes["rows"]
    reached = [r for r in rows if r["reached_model"]]
    # Fitted on one half, scored on the other: how well the decision generalises.
    train, test = reached[::2], reached[1::2]
    half = fit(train)
    held_out = answers(half, test)
    test_ids = {r["id"] for r in test}
    held_out_points = curve([r for r in rows if r["id"] in test_ids or not r["reached_model"]], held_out)
    final = fit(reached)
    final_answers = answers(final, reached)
    final_points = curve(rows, final_answers)
    point = operating_point(final_points, args.abstain)
    model = DecisionModel(
        features=FEATURES,
        coefficients=[round(float(c), 4) for c in final.coef_[0]],
        intercept=round(float(final.intercept_[0]), 4),
        threshold=point["threshold"],
        fitted_on=f"{probes['command']} ({probes['date']}): candidates of {len(reached)} ClapNQ dev questions",
    )
    DECISION_FILE.write_text(model.model_dump_json(indent=2) + "\n")
    write_plot(held_out_points, final_points, point["threshold"], OUT_DIR / "curve.png")

    answerable = [a for a in held_out if a["answerable"]]
    figures = {
        "held-out answerable: the most confident candidate is gold": f"{sum(a['right'] for a in answerable)}/{len(answerable)}",
        "held-out answerable: the model's own first choice is gold": f"{sum(a['model_right'] for a in answerable)}/{len(answerable)}",
        "held-out answerable: the best-ranked evidence sentence is gold": f"{sum(a['first_right'] for a in answerable)}/{len(answerable)}",
        "gold sentence in the evidence (answerable, all)": f"{sum(any(c['label'] for c in r.get('candidates', [])) for r in rows if r['answerable'])}/{sum(r['answerable'] for r in rows)}",
        "held-out AUC of the confidence (answer right vs not, all questions)": f"{auc([a['confidence'] for a in held_out], [a['right'] for a in held_out]):.3f}",
    }
    table = [
        [
            f"{p['threshold']:.2f}",
            f"{p['abstains_unanswerable']:.3f}",
            f"{p['answerable_right']:.3f}",
            f"{p['answerable_wrong']:.3f}",
        ]
        for p in final_points
        if round(p["threshold"] * 50) % 5 == 0
    ]
    body = (
        f"`{probes['command']}`, {probes['date']}, {probes['seconds']} s, load {probes['load_average_1min']['start']}"
        f" -> {probes['load_average_1min']['end']}. {len(rows)} ClapNQ dev questions ({args.per_class} answerable +"
        f" {args.per_class} unanswerable, none in the answer benchmark's sample); {len(rows) - len(reached)}"
        " abstained at retrieval. Label of a candidate: it holds a gold supporting sentence.\n\n"
        + markdown_table(["figure", "value"], [[k, v] for k, v in figures.items()])
        + f"\n\nFitted (rag/decision.json): features {FEATURES}, coefficients {model.coefficients}, intercept"
        f" {model.intercept}; threshold {model.threshold:g}, the lowest that abstains on >= {args.abstain:g} of the"
        " unanswerable calibration questions.\n\nThe final fit over all calibration questions, by threshold:\n\n"
        + markdown_table(
            ["threshold", "abstains on unanswerable", "answerable answered right", "answerable answered wrong"], table
        )
        + "\n\nPlot: bench/results/decision/curve.png.\n"
    )
    print(body)
    write_section("bench_decision", "Calibrated decision to answer (embedded model, ClapNQ)", body)


if __name__ == "__main__":
    main()
