"""Citation-checker calibration on ClapNQ dev: our Verifier (the logic behind `rag check`) as a
binary classifier of (sentence, passage) pairs.

Claims are the sentences of the human-written long-form gold answers of the 300 answerable
questions (sentences with fewer than 3 content words are dropped, as `makes_claim` does).
Each claim gives three pairs:
- supported: the claim with its question's gold passage;
- hard mismatch: the claim with the passage BM25 ranks highest for it among the other
  passages (passages of the same Wikipedia article excluded: they may state it too);
- random mismatch: the claim with a random other passage (same exclusion).
So the class mix is 1 supported : 2 mismatched (1 hard + 1 random).

Questions are split in two halves by a hash of their id: lexical_weight and threshold are
chosen on the tuning half (the pair maximising min(precision, recall) of "supported"), and
precision/recall are reported on the held-out half. Two conditions: as `rag check` runs
(no question known) and as `rag ask` runs (the question given: words the claim repeats
from it need no support).

Writes bench/results/clapnq-checker/report.json and curve.png, and its RESULTS.md section."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np
from run_all import (
    BENCH_DIR,
    BENCHMARKS_DIR,
    markdown_table,
    rich_table,
    save_figure,
    write_section,
)

from rag.config import Settings
from rag.embed.encoder import Embedder
from rag.stores.faiss_bm25.lexical import build_lexical_index, lexical_scores
from rag.text.sentences import sentence_spans
from rag.text.words import makes_claim
from rag.verify.verifier import Verifier

CLAPNQ_DIR = BENCHMARKS_DIR / "clapnq"
OUT_DIR = BENCH_DIR / "results" / "clapnq-checker"
WEIGHTS = [round(w, 2) for w in np.arange(0.3, 0.91, 0.1)]
THRESHOLDS = [round(t, 2) for t in np.arange(0.30, 0.901, 0.01)]
SEED = 13


class CachedEmbedder:
    """The embedder with every text embedded once, so each lexical weight re-scores without
    re-embedding (the Verifier only calls `encode`)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.vectors: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.embedder.encode(missing)))
        return np.stack([self.vectors[t] for t in texts])


def article(passage_id: str) -> str:
    return passage_id.split("_")[0]


def half(question_id: str) -> str:
    return "tune" if hashlib.sha1(question_id.encode()).digest()[0] % 2 == 0 else "test"


def build_pairs() -> tuple[list[dict], dict[str, str]]:
    corpus = {r["_id"]: r for r in map(json.loads, (CLAPNQ_DIR / "corpus.jsonl").read_text().splitlines())}
    ids = list(corpus)
    position = {i: n for n, i in enumerate(ids)}
    texts = {i: corpus[i]["text"] for i in ids}
    bm25 = build_lexical_index([f"{corpus[i]['title']} {corpus[i]['text']}" for i in ids])
    rng = random.Random(SEED)
    pairs = []
    for record in map(json.loads, (CLAPNQ_DIR / "answers.jsonl").read_text().splitlines()):
        if not record["answerable"]:
            continue
        gold = record["gold_passage_id"]
        others = [i for i in ids if article(i) != article(gold)]
        claims = dict.fromkeys(
            " ".join(answer[s.start : s.end].split()) for answer in record["answers"] for s in sentence_spans(answer)
        )
        for claim in (c for c in claims if makes_claim(c)):
            scores = lexical_scores(bm25, claim, len(ids))
            hard = max(others, key=lambda i: scores[position[i]])
            common = {
                "question_id": record["_id"],
                "question": record["question"],
                "claim": claim,
                "half": half(record["_id"]),
            }
            pairs += [
                common | {"kind": "supported", "passage_id": gold, "label": True},
                common | {"kind": "hard", "passage_id": hard, "label": False},
                common | {"kind": "random", "passage_id": rng.choice(others), "label": False},
            ]
    return pairs, texts


def judge(
    verifier: Verifier, pairs: list[dict], texts: dict[str, str], with_question: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(score, hard checks passed, reason) per pair. The threshold is applied afterwards, so the
    verifier runs with one that nothing falls below."""
    # Grouped by question: the question changes what the claim must be supported on.
    by_question: dict[str, list[int]] = {}
    for n, pair in enumerate(pairs):
        by_question.setdefault(pair["question"] if with_question else "", []).append(n)
    out: dict[int, tuple[float, bool, str]] = {}
    for question, members in by_question.items():
        verdicts = verifier.verify(
            [
                (pairs[n]["claim"], texts[pairs[n]["passage_id"]], 0, len(texts[pairs[n]["passage_id"]]))
                for n in members
            ],
            question,
        )
        out.update({n: (v.score, v.supported, v.reason) for n, v in zip(members, verdicts)})
    scores, passed, reasons = zip(*(out[n] for n in range(len(pairs))))
    return np.array(scores), np.array(passed), list(reasons)


def precision_recall(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    true_positive = int((predicted & labels).sum())
    precision = true_positive / int(predicted.sum()) if predicted.any() else 1.0
    return precision, true_positive / int(labels.sum())


def curve(scores: np.ndarray, passed: np.ndarray, labels: np.ndarray) -> list[dict]:
    rows = []
    for threshold in THRESHOLDS:
        precision, recall = precision_recall(passed & (scores >= threshold), labels)
        rows.append({"threshold": threshold, "precision": precision, "recall": recall})
    return rows


def write_plot(curves: dict[str, dict[str, list[dict]]], chosen: dict[str, float], default: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), squeeze=False)
    for ax, (name, variants) in zip(axes[0], curves.items()):
        for (variant, rows), style in zip(variants.items(), ("-", "--")):
            t = [r["threshold"] for r in rows]
            ax.plot(t, [r["precision"] for r in rows], style, color="tab:blue", label=f"precision, {variant}")
            ax.plot(t, [r["recall"] for r in rows], style, color="tab:orange", label=f"recall, {variant}")
        ax.axhline(0.9, color="grey", linestyle=":", linewidth=1, label="target 0.9")
        ax.axvline(
            chosen[name], color="black", linestyle="-.", linewidth=1, label=f"tuned threshold {chosen[name]:.2f}"
        )
        ax.axvline(default, color="grey", linestyle="-.", linewidth=1, label=f"default threshold {default:.2f}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("threshold")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, "ClapNQ checker calibration, held-out half: 'supported' precision / recall vs threshold", path)


def calibrate() -> dict:
    clock = time.perf_counter()
    pairs, texts = build_pairs()
    labels = np.array([p["label"] for p in pairs])
    halves = np.array([p["half"] for p in pairs])
    kinds = np.array([p["kind"] for p in pairs])
    settings = Settings()
    default_weight = settings.verification.lexical_weight
    embedder = CachedEmbedder(Embedder(settings.embedding))
    report: dict = {
        "pairs": len(pairs),
        "claims": len(pairs) // 3,
        "mix": {k: int((kinds == k).sum()) for k in ("supported", "hard", "random")},
        "halves": {h: int((halves == h).sum()) for h in ("tune", "test")},
        "defaults": {"threshold": settings.verification.threshold, "lexical_weight": default_weight},
        "conditions": {},
    }
    for condition, with_question in (("rag check (no question)", False), ("rag ask (question given)", True)):
        grid = {}
        for weight in WEIGHTS:
            verification = settings.verification.model_copy(update={"lexical_weight": weight, "threshold": -1.0})
            grid[weight] = judge(Verifier(embedder, verification), pairs, texts, with_question)  # type: ignore[arg-type]
        tune, test = halves == "tune", halves == "test"

        def measure(weight: float, threshold: float, mask: np.ndarray) -> tuple[float, float]:
            scores, passed, _ = grid[weight]
            return precision_recall((passed & (scores >= threshold))[mask], labels[mask])

        weight, threshold = max(
            ((w, t) for w in WEIGHTS for t in THRESHOLDS), key=lambda wt: (min(measure(*wt, tune)), -abs(wt[1] - 0.55))
        )
        scores, passed, reasons = grid[weight]
        report["conditions"][condition] = {
            "chosen": {"lexical_weight": weight, "threshold": threshold},
            "tune": dict(zip(("precision", "recall"), measure(weight, threshold, tune))),
            "test": dict(zip(("precision", "recall"), measure(weight, threshold, test))),
            "defaults_test": dict(
                zip(("precision", "recall"), measure(default_weight, settings.verification.threshold, test))
            ),
            # Share of each mismatched kind wrongly accepted on the held-out half.
            "false_accept": {
                kind: float((passed & (scores >= threshold))[test & (kinds == kind)].mean())
                for kind in ("hard", "random")
            },
            "hard_check_rejections_of_supported": float((~passed)[test & labels].mean()),
            # What the number/name checks object to in held-out supported pairs (gold answers
            # written in other words than the passage).
            "hard_check_rejection_examples": [
                {"claim": pairs[n]["claim"], "reason": reasons[n]} for n in np.flatnonzero(test & labels & ~passed)[:12]
            ],
            "curve_test": curve(scores[test], passed[test], labels[test]),
            # The shipped lexical weight's curve, for comparison with the tuned one.
            "curve_test_default_weight": curve(
                grid[default_weight][0][test], grid[default_weight][1][test], labels[test]
            ),
        }
    report["seconds"] = round(time.perf_counter() - clock, 1)
    return report


def write_results(report: dict) -> None:
    """Table on the terminal, plot, and the RESULTS.md section, all from the report."""
    defaults = report["defaults"]
    curves = {
        condition: {
            f"tuned weight {r['chosen']['lexical_weight']}": r["curve_test"],
            f"default weight {defaults['lexical_weight']}": r["curve_test_default_weight"],
        }
        for condition, r in report["conditions"].items()
    }
    chosen = {condition: r["chosen"]["threshold"] for condition, r in report["conditions"].items()}
    write_plot(curves, chosen, defaults["threshold"], OUT_DIR / "curve.png")

    def pr(values: dict) -> str:
        return f"{values['precision']:.3f} / {values['recall']:.3f}"

    headers = [
        "condition",
        "chosen weight / threshold",
        "tune P / R",
        "held-out P / R",
        f"held-out P / R at defaults ({defaults['lexical_weight']} / {defaults['threshold']})",
        "held-out false accepts hard / random",
        "supported pairs failing number/name checks",
    ]
    rows = [
        [
            condition,
            f"{r['chosen']['lexical_weight']} / {r['chosen']['threshold']:.2f}",
            pr(r["tune"]),
            pr(r["test"]),
            pr(r["defaults_test"]),
            f"{r['false_accept']['hard']:.3f} / {r['false_accept']['random']:.3f}",
            f"{r['hard_check_rejections_of_supported']:.3f}",
        ]
        for condition, r in report["conditions"].items()
    ]
    from rich.console import Console

    Console().print(rich_table("ClapNQ checker calibration", headers, rows))
    # One row per threshold (every 0.05), precision / recall per condition and weight.
    columns = [
        (condition, variant, points) for condition, variants in curves.items() for variant, points in variants.items()
    ]
    curve_rows = [
        [
            f"{columns[0][2][i]['threshold']:.2f}",
            *(f"{points[i]['precision']:.3f} / {points[i]['recall']:.3f}" for _, _, points in columns),
        ]
        for i in range(0, len(THRESHOLDS), 5)
    ]
    met = {c: min(r["defaults_test"].values()) >= 0.9 for c, r in report["conditions"].items()}
    verdict = "\n".join(
        f"- {c}: target precision and recall >= 0.9 at the defaults on the held-out half: {'met' if ok else 'NOT met'}"
        for c, ok in met.items()
    )
    body = (
        f"`.venv/bin/python bench/bench_clapnq_checker.py` ({report['seconds']:.0f} s on the shared 2-core machine). Our "
        "Verifier as a binary classifier of (sentence, passage) pairs from ClapNQ dev: "
        f"{report['claims']} claims (sentences of the human long-form gold answers, >= 3 content words) x 3 pairs = "
        f"{report['pairs']} pairs; mix 1 supported (claim + its gold passage) : 1 hard mismatch (the top-BM25 other "
        "passage for the claim) : 1 random mismatch; passages of the gold passage's Wikipedia article are never used as "
        "mismatches. Halves by a hash of the question id "
        f"(tune {report['halves']['tune']} / held-out {report['halves']['test']} pairs); weight and threshold chosen on the "
        "tuning half by max min(precision, recall), reported on the held-out half. Precision/recall are of the class "
        "'supported'; they depend on the 1:2 class mix.\n\n"
        + markdown_table(headers, rows)
        + f"\n\n{verdict}\n\nHeld-out precision / recall by threshold (full curves in "
        "`bench/results/clapnq-checker/report.json`, plot `bench/results/clapnq-checker/curve.png`):\n\n"
        + markdown_table(["threshold", *(f"{c}, {v}" for c, v, _ in columns)], curve_rows)
    )
    write_section("bench_clapnq_checker", "ClapNQ citation-checker calibration", body)
    print(f"report: {OUT_DIR / 'report.json'}  plot: {OUT_DIR / 'curve.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--section-only", action="store_true", help="redraw plot and RESULTS.md section from report.json"
    )
    args = parser.parse_args(argv)
    if args.section_only:
        report = json.loads((OUT_DIR / "report.json").read_text(encoding="utf-8"))
    else:
        report = calibrate()
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUT_DIR / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_results(report)


if __name__ == "__main__":
    main()
