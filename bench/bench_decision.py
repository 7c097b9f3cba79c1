"""Fits the calibrated decision to answer or abstain (rag/decision.py) on ClapNQ dev questions.

For each calibration question (answerable and unanswerable ClapNQ dev questions that the
answer benchmark's 30 + 30 sample does not use), the real answer path runs up to the choice:
retrieval, evidence selection, and the embedded model's first-token probabilities over the
numbered evidence (`Answerer.choice_prompt`). The signals of its best choice (rag.decision.
Signals) are recorded with a label: 1 when the chosen sentence holds a gold supporting
sentence of an answerable question, else 0. Probes are cached in bench/results/decision/probes.json,
so refitting costs no model time (--refit).

A logistic regression (scikit-learn) is fitted on one half and scored on the other (AUC, the
curve of answered-right against abstention on unanswerable questions), then refitted on all
and written to rag/decision.json with the smallest threshold that abstains on at least
--abstain of the unanswerable calibration questions. Plot: bench/results/decision/curve.png."""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone

import numpy as np
from bench_clapnq import CLAPNQ_DIR, INDEX_DIR, QUESTIONS, RESULTS_DIR, sample, write_questions
from run_all import markdown_table, save_figure, write_section

from rag.answering import AskOptions
from rag.beir import beir_settings, build_beir_index, load_beir
from rag.choice import choice_from_probabilities
from rag.config import Settings
from rag.decision import DECISION_FILE, DecisionModel, Signals
from rag.evaluation import EvalQuestion, load_questions
from rag.generation import first_token_probabilities
from rag.service import RagService

OUT_DIR = RESULTS_DIR / "decision"
PROBES = OUT_DIR / "probes.json"
FEATURES = ["retrieval", "evidence", "chosen", "log_p_choice", "log_p_none"]


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
    """The question's signals and label, or why it never reached the model."""
    answerer = service.answerer
    model = service.settings.answer.model
    draft = answerer.draft(q.question, model, AskOptions())
    if answerer.retrieval_guard(draft):
        return {"id": q.id, "answerable": q.answerable, "reached_model": False}
    cfg = service.settings.answer
    probabilities = first_token_probabilities(
        answerer.choice_prompt(draft), model=model, api_base=cfg.api_base, timeout_s=600,
        local_settings=service.settings.local_llm,
    )
    draft.choice = choice_from_probabilities(probabilities, len(draft.evidence))
    best = draft.choice.best
    quotes = [quote.quote for quote in q.quotes]
    return {
        "id": q.id, "answerable": q.answerable, "reached_model": True,
        "gold_in_evidence": any(covers(s.text, quotes) for s in draft.evidence) if q.answerable else None,
        "best": best, "p": list(draft.choice.p), "p_none": draft.choice.p_none,
        "signals": answerer.signals(draft, best).__dict__ if best is not None else None,
        "label": int(bool(q.answerable and best is not None and covers(draft.evidence[best].text, quotes))),
    }


def fit(rows: list[dict]):
    from sklearn.linear_model import LogisticRegression

    x = np.array([[r["signals"][f] for f in FEATURES] for r in rows])
    y = np.array([r["label"] for r in rows])
    return LogisticRegression(C=1.0, max_iter=1000).fit(x, y)


def confidences(model, rows: list[dict]) -> np.ndarray:
    return model.predict_proba(np.array([[r["signals"][f] for f in FEATURES] for r in rows]))[:, 1]


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def curve(rows: list[dict], scores: np.ndarray) -> list[dict]:
    """At each threshold: share of unanswerable questions abstained on (those that never reached
    the model abstain anyway) and share of answerable ones answered right."""
    unanswerable = sum(not r["answerable"] for r in rows)
    answerable = len(rows) - unanswerable
    by_id = {r["id"]: s for r, s in zip([r for r in rows if r.get("signals")], scores)}
    points = []
    for threshold in np.round(np.arange(0.0, 1.0001, 0.02), 2):
        shown = {i for i, s in by_id.items() if s >= threshold}
        abstain = sum(not r["answerable"] and r["id"] not in shown for r in rows) / max(unanswerable, 1)
        right = sum(r["answerable"] and r["id"] in shown and r["label"] for r in rows) / max(answerable, 1)
        wrong_answerable = sum(r["answerable"] and r["id"] in shown and not r["label"] for r in rows) / max(answerable, 1)
        points.append({"threshold": float(threshold), "abstains_unanswerable": abstain, "answerable_right": right,
                       "answerable_wrong": wrong_answerable})
    return points


def operating_point(points: list[dict], target: float) -> dict:
    return next(p for p in points if p["abstains_unanswerable"] >= target)


def write_plot(held_out: list[dict], fitted: list[dict], threshold: float, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for points, style, name in ((held_out, "o-", "held-out half (fitted on the other)"), (fitted, "s--", "all (final fit)")):
        left.plot([p["abstains_unanswerable"] for p in points], [p["answerable_right"] for p in points], style,
                  markersize=3, label=name)
        right.plot([p["threshold"] for p in points], [p["abstains_unanswerable"] for p in points], style, markersize=3,
                   label=f"abstains on unanswerable ({name})")
        right.plot([p["threshold"] for p in points], [p["answerable_right"] for p in points], style, markersize=3,
                   label=f"answerable answered right ({name})")
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
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": f"bench/bench_decision.py --per-class {args.per_class}",
            "seconds": round(time.perf_counter() - clock),
            "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
            "rows": rows,
        }
        PROBES.write_text(json.dumps(probes, indent=1))
    rows = probes["rows"]
    reached = [r for r in rows if r["reached_model"] and r["signals"]]
    # Fitted on one half, scored on the other: how well the decision generalises.
    train, test = reached[::2], reached[1::2]
    half = fit(train)
    test_ids = {r["id"] for r in test}
    held_out_points = curve([r for r in rows if r["id"] in test_ids or not r["reached_model"]][::1], confidences(half, test))
    final = fit(reached)
    final_points = curve(rows, confidences(final, reached))
    point = operating_point(final_points, args.abstain)
    model = DecisionModel(
        features=FEATURES, coefficients=[round(float(c), 4) for c in final.coef_[0]],
        intercept=round(float(final.intercept_[0]), 4), threshold=point["threshold"],
        fitted_on=f"{probes['command']} ({probes['date']}): {len(reached)} ClapNQ dev questions that reached the model",
    )
    DECISION_FILE.write_text(model.model_dump_json(indent=2) + "\n")
    write_plot(held_out_points, final_points, point["threshold"], OUT_DIR / "curve.png")

    labels = np.array([r["label"] for r in test])
    answerable = [r for r in rows if r["answerable"]]
    baseline = {
        "model's first choice right (answerable that reached it)": f"{sum(r['label'] for r in reached if r['answerable'])}/{sum(r['answerable'] for r in reached)}",
        "gold sentence in the evidence (answerable)": f"{sum(bool(r.get('gold_in_evidence')) for r in answerable)}/{len(answerable)}",
        "held-out AUC of the confidence (right answer vs not)": f"{auc(confidences(half, test), labels):.3f}",
        "held-out AUC of p(choice) alone": f"{auc(np.array([r['signals']['log_p_choice'] for r in test]), labels):.3f}",
        "held-out AUC of -p(none) alone": f"{auc(-np.array([r['signals']['log_p_none'] for r in test]), labels):.3f}",
    }
    table = [[f"{p['threshold']:.2f}", f"{p['abstains_unanswerable']:.3f}", f"{p['answerable_right']:.3f}",
              f"{p['answerable_wrong']:.3f}"] for p in final_points if round(p["threshold"] * 50) % 5 == 0]
    body = (
        f"`{probes['command']}`, {probes['date']}, {probes['seconds']} s, load {probes['load_average_1min']['start']}"
        f" -> {probes['load_average_1min']['end']}. {len(rows)} ClapNQ dev questions ({args.per_class} answerable +"
        f" {args.per_class} unanswerable, none in the answer benchmark's sample); {len(rows) - len(reached)}"
        " abstained at retrieval. Label: the model's first choice holds a gold supporting sentence.\n\n"
        + markdown_table(["figure", "value"], [[k, v] for k, v in baseline.items()])
        + f"\n\nFitted (rag/decision.json): features {FEATURES}, coefficients {model.coefficients}, intercept"
        f" {model.intercept}; threshold {model.threshold:g}, the lowest that abstains on >= {args.abstain:g} of the"
        " unanswerable calibration questions.\n\nThe final fit over all calibration questions, by threshold:\n\n"
        + markdown_table(["threshold", "abstains on unanswerable", "answerable answered right", "answerable answered wrong"], table)
        + "\n\nPlot: bench/results/decision/curve.png.\n"
    )
    print(body)
    write_section("bench_decision", "Calibrated decision to answer (embedded model, ClapNQ)", body)


if __name__ == "__main__":
    main()
