"""One-document updates against a full rebuild, in one run: SciFact's corpus is indexed, then
single documents are uploaded, changed and removed, with this checkout's incremental pipeline
and with the whole-corpus pipeline of another checkout (`--baseline`, default: the main
worktree) in a subprocess, one after the other.

Embedding is excluded, as in issue 13's target: both sides use the same stand-in embedder
(a deterministic unit vector per text), so the figures are the cost of everything else:
loading and verifying the index, cleaning, chunking, grouping near-copies, FAISS, BM25 and
writing. The incremental pipeline holds its ingest state in memory between updates, as
`rag serve` does."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

BENCH_DIR = Path(__file__).resolve().parent
DIMENSION = 384  # all-MiniLM-L6-v2


class StandInEmbedder:
    """A deterministic unit vector per text: no model time in the figures."""

    dimension = DIMENSION

    def encode(self, texts: list[str], progress=None) -> np.ndarray:
        vectors = (
            np.stack(
                [np.random.default_rng(xxhash.xxh64_intdigest(t.encode())).standard_normal(DIMENSION) for t in texts]
            )
            if texts
            else np.zeros((0, DIMENSION))
        )
        if progress:
            progress(len(texts))
        return (
            (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
            if texts
            else vectors.astype(np.float32)
        )


def measure(scifact: Path, index_dir: Path, uploads: int) -> dict:
    """Runs inside the checkout under test: build, then timed one-document updates."""
    import inspect

    from rag.config import Settings
    from rag.eval.beir import load_beir
    from rag.ingest.pipeline import update_index

    settings = Settings()
    settings = settings.model_copy(update={"index": settings.index.model_copy(update={"dir": index_dir})})
    documents = load_beir(scifact).documents
    base, extra = documents[:-uploads], documents[-uploads:]
    load = os.getloadavg()[0]

    # As a server runs updates: the ingest state held in memory, where the pipeline can.
    if "held_state" in inspect.signature(update_index).parameters:
        from rag.ingest.incremental import HeldState

        held = {"held_state": HeldState()}
    else:
        held = {}

    def timed(**kwargs) -> tuple[float, dict]:
        clock = time.perf_counter()
        report = update_index(settings, embedder_factory=StandInEmbedder, **held, **kwargs)
        return time.perf_counter() - clock, report.seconds

    build, build_stages = timed(documents=base)
    upload = [timed(documents=[doc]) for doc in extra]
    changed = base[0].model_copy(update={"text": base[0].text + " Revised.", "sha256": "changed"})
    change = timed(documents=[changed])
    remove = timed(remove=[base[1].doc_id])
    return {
        "documents": len(documents),
        "build_s": build,
        "build_stages": build_stages,
        "upload_s": [u[0] for u in upload],
        "upload_stages": upload[len(upload) // 2][1],
        "change_s": change[0],
        "remove_s": remove[0],
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def run(code_dir: Path, scifact: Path, work: Path, uploads: int) -> dict:
    """`measure` in a fresh interpreter that imports `rag` from `code_dir`."""
    script = (
        f"import sys, json; sys.path.insert(0, {str(code_dir)!r}); sys.path.insert(1, {str(BENCH_DIR)!r});"
        f"from bench_update import measure; from pathlib import Path;"
        f"print(json.dumps(measure(Path({str(scifact)!r}), Path({str(work)!r}), {uploads})))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=work.parent)
    if out.returncode:
        raise SystemExit(f"the measurement with {code_dir} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def commit_of(code_dir: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(code_dir), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    from run_all import SCIFACT_DIR, markdown_table, write_section

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--baseline", type=Path, default=Path("/work/main"), help="checkout with the whole-corpus pipeline"
    )
    parser.add_argument("--uploads", type=int, default=5)
    args = parser.parse_args(argv)
    repo = BENCH_DIR.parent
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, code in (("whole corpus per update", args.baseline), ("incremental (segments)", repo)):
            result = run(code, SCIFACT_DIR, Path(tmp) / label.split()[0], args.uploads)
            print(label, json.dumps(result, indent=1))
            rows.append(
                [
                    f"{label} ({commit_of(code)})",
                    str(result["documents"]),
                    f"{result['build_s']:.1f}",
                    f"{statistics.median(result['upload_s']):.2f}",
                    f"{result['change_s']:.2f}",
                    f"{result['remove_s']:.2f}",
                    ", ".join(f"{k} {v:.2f}" for k, v in result["upload_stages"].items()),
                    f"{result['load_before']:.1f} / {result['load_after']:.1f}",
                ]
            )
    table = markdown_table(
        [
            "pipeline (commit)",
            "SciFact docs",
            "build s",
            "upload 1 doc s (median)",
            "change 1 doc s",
            "remove 1 doc s",
            "upload stages s",
            "load avg before / after",
        ],
        rows,
    )
    ratio = float(rows[0][3]) / max(float(rows[1][3]), 1e-9)
    write_section(
        "bench_update",
        "One-document updates vs the whole-corpus pipeline",
        "SciFact corpus minus the uploaded documents indexed first; then each of the last "
        f"{args.uploads} documents uploaded alone (median), one changed, one removed. Embedding excluded "
        "(a stand-in embedder on both sides, as issue 13's target excludes it); same run, one after the other.\n\n"
        + table
        + f"\n\nOne-document upload: **{ratio:.1f}×** faster than re-indexing the whole corpus per update.\n",
    )


if __name__ == "__main__":
    main()
