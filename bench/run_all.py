"""Run every benchmark in order (`make bench`), and the helpers they share: machine facts,
timing summaries and the sections of bench/RESULTS.md.

Each benchmark owns one section of RESULTS.md between `<!-- bench:NAME -->` markers and
replaces only that section, so benchmarks can be re-run one at a time."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
# Persistent indexes (git-ignored): vectors embedded once are reused by later runs.
CACHE_DIR = BENCH_DIR / ".cache"
SEEDS_DIR = REPO_DIR / "seeds"
BENCHMARKS_DIR = Path(os.environ.get("RAG_BENCHMARKS_DIR", "/work/shared/benchmarks"))
SCIFACT_DIR = BENCHMARKS_DIR / "scifact"

PACKAGES = ("torch", "sentence-transformers", "transformers", "faiss-cpu", "bm25s", "ranx", "numpy")
RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Written by the scripts in `bench/` (`make bench` runs them all); each section is replaced\n"
    "when its script runs again. Figures are measured, never edited by hand.\n"
)

# Models load from the bundled package; never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO_DIR))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> str:
    try:
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return f"{int(match.group(1)) / 2**20:.1f} GiB" if match else "unknown"
    except OSError:
        return "unknown"


def machine_facts() -> str:
    import torch

    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return (
        f"CPU {_cpu_model()}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), "
        f"RAM {_ram_gib()}; Python {platform.python_version()}; " + ", ".join(versions)
    )


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def rich_table(title: str, headers: list[str], rows: list[list[object]]):
    from rich.table import Table

    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header == headers[0] else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


def save_figure(fig, title: str, path: Path) -> None:
    """Title, lay out and write a matplotlib figure, then free it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_section(name: str, title: str, body: str, script: str | None = None) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, dated and with machine facts;
    `script`: the script's name when it writes several sections (default: `name`)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Run {stamp} by `bench/{script or name}.py`. Machine: {machine_facts()}.\n\n{body.strip()}\n<!-- /bench:{name} -->"
    )
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else RESULTS_HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    import bench_embed_backends
    import bench_index
    import bench_query
    import bench_scifact

    for module in (bench_index, bench_query, bench_scifact, bench_embed_backends):
        clock = time.perf_counter()
        print(f"== {module.__name__} ==", flush=True)
        module.main([])
        print(f"== {module.__name__} done in {time.perf_counter() - clock:.0f}s ==\n", flush=True)


if __name__ == "__main__":
    main()
