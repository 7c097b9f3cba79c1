"""Index integrity: what verifying a generation at every load costs (checksums, counts,
offsets), on the seeds and on SciFact (5,183 abstracts), and what each kind of damage leads to.

Only bytes matter for the cost, so the vectors come from a stand-in embedder (seeded random
unit vectors of the real model's dimension): the files have the real sizes without minutes of
embedding on a shared CPU."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from run_all import SCIFACT_DIR, markdown_table, write_section

from rag.config import Settings
from rag.doctor import BUNDLED_EMBEDDING_PACKAGE, package_problems
from rag.errors import IndexDamagedError
from rag.eval.beir import beir_settings, load_beir
from rag.ingest.dedup import TOKEN
from rag.ingest.pipeline import update_index
from rag.llm.gguf import BUNDLED_GGUF, default_cache_dir, verify_bundled_gguf
from rag.retrieve.retriever import Retriever
from rag.schema import Chunk
from rag.stores.faiss_bm25 import store as files_store
from rag.stores.faiss_bm25.store import (
    MANIFEST,
    FaissBm25Store,
    current_generation,
    file_problems,
    file_records,
    read_generation,
    read_index,
)

ROOT = Path(__file__).resolve().parent.parent
DIMENSION = 384  # all-MiniLM-L6-v2


class StandInEmbedder:
    dimension = DIMENSION

    def encode(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        rows = [
            np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:15], 16)).standard_normal(DIMENSION)
            for t in texts
        ]
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), DIMENSION)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-9)


def build(settings: Settings, **sources) -> Path:
    update_index(settings, embedder_factory=StandInEmbedder, **sources)
    return current_generation(settings.index.dir)


def median_ms(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        clock = time.perf_counter()
        action()
        times.append((time.perf_counter() - clock) * 1000)
    return statistics.median(times)


def blake2b_all(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as handle:
            hashlib.file_digest(handle, "blake2b")


def uncached(call: Callable[[], object]) -> Callable[[], object]:
    """`call` as a new process makes it: without the checksums and generations this one keeps."""

    def fresh() -> object:
        files_store._HASHED.clear()
        files_store._OPENED.clear()
        return call()

    return fresh


def cost_row(name: str, generation: Path, repeat: int) -> list[str]:
    data = read_generation(generation)
    size = sum(record.size for record in data.manifest.files.values())
    total = median_ms(uncached(lambda: read_generation(generation)), repeat)
    checksums = median_ms(uncached(lambda: file_problems(generation, data.manifest)), repeat)
    content = median_ms(data.content_problems, repeat)
    paths = [generation / name for name in data.manifest.files]
    blake2b = median_ms(lambda: blake2b_all(paths), repeat)
    return [
        name,
        f"{data.manifest.documents:,}",
        f"{data.manifest.chunks:,}",
        f"{size / 1e6:.1f} MB",
        f"{total:.0f}",
        f"{checksums:.0f} ({checksums / total:.0%})",
        f"{content:.0f} ({content / total:.0%})",
        f"{blake2b:.0f}",
    ]


def near_copy_rows(generation: Path) -> list[list[str]]:
    """On the seeds (BM25, no embedder needed): does each near-duplicate group show once when
    its passage is searched, and is every word that only one member holds found in it?"""
    data = read_generation(generation)
    settings = Settings()
    retriever = Retriever(FaissBm25Store(data, settings.retrieval, settings.index), None, settings)  # type: ignore[arg-type]
    groups: dict[str, list[Chunk]] = {}
    for chunk in data.chunks:
        groups.setdefault(chunk.duplicate_of or chunk.chunk_id, []).append(chunk)
    copied = [members for members in groups.values() if len(members) > 1]
    shown_once = found = own_words = 0
    for members in copied:
        ids = {m.chunk_id for m in members}
        hits = retriever.search(" ".join(members[0].text.split()[:40]), k=10, mode="bm25").results
        shown_once += sum(h.chunk_id in ids for h in hits) == 1
        for member in members:
            others = {w for m in members if m is not member for w in TOKEN.findall(m.text.lower())}
            for word in {w for w in TOKEN.findall(member.text.lower()) if w.isalpha() and len(w) > 3} - others:
                own_words += 1
                found += any(h.chunk_id == member.chunk_id for h in retriever.search(word, k=10, mode="bm25").results)
    return [
        ["passages (all indexed) / distinct (groups)", f"{len(data.chunks)} / {len(groups)}"],
        ["near-duplicate groups shown once when their passage is searched", f"{shown_once} / {len(copied)}"],
        ["words only one member of a group holds, found in that member (top 10)", f"{found} / {own_words}"],
    ]


# ---------------------------------------------------------------------------- damage cases


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scramble(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def resign(generation: Path) -> None:
    manifest = json.loads((generation / MANIFEST).read_text())
    manifest["files"] = {name: record.model_dump() for name, record in file_records(generation).items()}
    (generation / MANIFEST).write_text(json.dumps(manifest))


def segment(generation: Path) -> Path:
    """The first (largest) segment of a generation, where its data files are."""
    return generation / json.loads((generation / MANIFEST).read_text())["segments"][0]


def shift_offsets(generation: Path) -> None:
    lines = (segment(generation) / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
    chunk = json.loads(lines[3])
    chunk["start"], chunk["end"] = chunk["start"] + 3, chunk["end"] + 3
    lines[3] = json.dumps(chunk)
    (segment(generation) / "chunks.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def damage_cases(foreign_faiss: Path) -> dict[str, Callable[[Path], None]]:
    cases: dict[str, Callable[[Path], None]] = {}
    for name in (
        "dense.faiss",
        "vectors.npy",
        "chunks.jsonl",
        "documents.jsonl",
        "embedding_keys.json",
        "bm25/tf.npy",
        "bm25/vocab.json",
        MANIFEST,
    ):
        where = (lambda g: g) if name == MANIFEST else segment
        cases[f"{name} truncated"] = lambda g, n=name, w=where: truncate(w(g) / n)
        cases[f"{name} random bytes"] = lambda g, n=name, w=where: scramble(w(g) / n)
    cases["dense.faiss from another index"] = lambda g: shutil.copy(foreign_faiss, segment(g) / "dense.faiss")
    cases["dense.faiss from another index, manifest re-signed"] = lambda g: (
        shutil.copy(foreign_faiss, segment(g) / "dense.faiss"),
        resign(g),
    )
    cases["offsets of one chunk shifted by 3"] = shift_offsets
    cases["offsets shifted, manifest re-signed"] = lambda g: (shift_offsets(g), resign(g))
    cases["generation folder deleted (CURRENT names a missing one)"] = shutil.rmtree
    return cases


def damage_row(case: str, damage: Callable[[Path], None], pristine: Path, corpus: Path, work: Path) -> list[str]:
    index_dir = work / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    shutil.copytree(pristine, index_dir)
    damage(current_generation(index_dir))
    try:
        read_index(index_dir)
        noticed = "**not noticed**"
    except IndexDamagedError as exc:
        noticed = exc.problems[0]
    settings = Settings().replace(index={"corpus_dir": corpus, "dir": index_dir})
    report = update_index(settings, paths=[corpus], embedder_factory=StandInEmbedder)
    # The warning's last part, without the generation's (random) name.
    recovered = (
        report.rebuilt_because[0].rsplit("; ", 1)[-1].split(" gen-")[0] if report.rebuilt_because else "nothing done"
    )
    read_index(index_dir)  # sound again, or this raises
    return [case, noticed.replace("|", "\\|"), f"{recovered}, embedded {report.embedded}"]


def gguf_assembled() -> bool:
    return (default_cache_dir() / BUNDLED_GGUF.filename).is_file()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seeds = Settings().replace(index={"corpus_dir": ROOT / "seeds", "dir": work / "seeds-index"})
        seeds_generation = build(seeds, paths=[ROOT / "seeds"])
        # A second generation (one document fewer), so damage can fall back to the previous one.
        corpus = work / "corpus"
        shutil.copytree(ROOT / "seeds", corpus)
        case_settings = Settings().replace(index={"corpus_dir": corpus, "dir": work / "pristine"})
        (corpus / "002_be266ad687065662.txt").rename(work / "002.txt")
        build(case_settings, paths=[corpus])
        (work / "002.txt").rename(corpus / "002_be266ad687065662.txt")
        build(case_settings, paths=[corpus])
        foreign = Settings().replace(index={"dir": work / "foreign"})
        foreign_faiss = segment(build(foreign, paths=[ROOT / "seeds" / "000_c1a45aa062b469e9.txt"])) / "dense.faiss"

        scifact = beir_settings(Settings(), work / "scifact-index")
        clock = time.perf_counter()
        scifact_generation = build(scifact, documents=load_beir(SCIFACT_DIR).documents)
        print(f"SciFact index built in {time.perf_counter() - clock:.0f} s", flush=True)

        near_copies = near_copy_rows(seeds_generation)
        costs = [cost_row("seeds", seeds_generation, args.repeat), cost_row("SciFact", scifact_generation, args.repeat)]
        cases = [
            damage_row(case, damage, case_settings.index.dir, corpus, work / "case")
            for case, damage in damage_cases(foreign_faiss).items()
        ]
    model_checks = [
        [
            "embedding model files against their package RECORD",
            f"{median_ms(lambda: package_problems(BUNDLED_EMBEDDING_PACKAGE), 1):.0f}",
        ],
        [
            "bundled GGUF (1.1 GB), full sha256",
            f"{median_ms(verify_bundled_gguf, 1):.0f}" if gguf_assembled() else "not assembled",
        ],
    ]
    cost_table = markdown_table(
        [
            "index",
            "documents",
            "passages",
            "files",
            "load ms",
            "xxh3 checksums ms (share)",
            "counts + offsets ms (share)",
            "blake2b instead, ms",
        ],
        costs,
    )
    case_table = markdown_table(["damage (to the current generation)", "noticed at load as", "then `rag index`"], cases)
    body = f"""`bench/bench_integrity.py --repeat {args.repeat}` (medians). Loading verifies every generation in
full: the xxh3-128 checksum of every file against the manifest, then row counts (chunks = vectors = FAISS =
BM25 = embedding keys), dimensions, and `document_text[start:end] == text` for every chunk.

{cost_table}

`rag doctor` runs the same index checks and re-hashes the model files that everyday runs trust:

{markdown_table(["model check", "ms"], model_checks)}

### Near-duplicates: collapsed in results, nothing unsearchable

Every passage is indexed; near-duplicate groups (MinHash Jaccard >= 0.8, rag.ingest.dedup) collapse
only in results. On the seeds (001 and 003 are one article scraped twice), BM25:

{markdown_table(["measure", "value"], near_copies)}

Before this change only one passage per group was indexed, so a word that only another
member held could not be found at all.

### Index damage cases

Each case damages the current generation of a two-generation seed index; "noticed" is the first
problem `IndexDamagedError` names (a search prints ``error: index in ... is damaged (...); run
`rag index` ``, exit 1), then plain `rag index` on the corpus recovers, with one warning line,
and the index is sound again. The previous generation lacks one document, whose 12 passages are
embedded again; the rest reuse that generation's vectors.

{case_table}
"""
    print(body)
    write_section("bench_integrity", "Index integrity: verification cost and damage cases", body)


if __name__ == "__main__":
    main()
