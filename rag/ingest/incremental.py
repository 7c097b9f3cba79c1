"""What an update must redo, kept between updates: the cross-document cleaning statistics and
the MinHash LSH of every chunk, so that one changed document costs work near that document.

Cleaning a document depends on other documents only through `repeated_lines` (rag.ingest.
cleaning): a short line is boilerplate when the documents holding it fall into enough distinct
"same page" groups (documents sharing most of their lines). `LineStats` keeps the line ->
documents index and those groups, and after an update names the lines whose verdict flipped;
every document holding a flipped line as one of its blocks is cleaned and chunked again (that
is how a document whose cleaning changes because of a new document is found).

Near-copy grouping (rag.ingest.dedup) is greedy in (doc_id, start) order, but a chunk only
ever looks at chunks it matches, so its outcome depends only on its connected component of
the match graph (shares an LSH band and estimated Jaccard >= threshold). `ChunkSketches`
keeps every chunk's signature in one LSH; an update regroups exactly the components that
touch a removed or added chunk, with `group_duplicates` itself, and so agrees with a fresh
build chunk for chunk.

Both keep numbers, not strings or objects, in numpy arrays with the changes since beside them
(rag.ingest.arrays), so a state of millions of passages fits in memory and is saved and opened
again as memory-mapped files."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHash

from rag.config import Settings
from rag.ingest.arrays import Column, Multimap, Names, Part, Ragged, hash64
from rag.ingest.cleaning import (
    PAIRING_MAX_DF,
    SAME_PAGE_OVERLAP,
    _normalise,
    document_lines,
    find_root,
    split_blocks,
)
from rag.ingest.dedup import _shingles, band_params
from rag.schema import Chunk, Document
from rag.stores.faiss_bm25.store import fsync_path

# The hashing scheme of the signatures MinHash.bulk computes (LeanMinHash needs it stated).
SCHEME = MinHash(num_perm=1).scheme

STATE_DIR = "ingest-state"
# Bump when the saved layout changes: an older state is then rebuilt from the documents.
STATE_VERSION = 2
# The changes are folded into the arrays after a step of an update once they pass this many
# entries and a quarter of the arrays (memory), and before a save once they pass this many
# (a save writes the changes in full each time, a fold rewrites the arrays once).
DELTA_MAX = 20_000
# Documents or chunks per step of a large update (a first build): bounds the Python containers.
STEP = 20_000


def document_probes(doc: Document) -> frozenset[str]:
    """The normalised block texts that cleaning looks up among the boilerplate lines."""
    return frozenset(_normalise(block.text) for block in split_blocks(doc.text))


def _fold_if_large(parts: list[Part], base_count: int) -> None:
    """Fold the changes into the arrays once they outgrow a quarter of them (memory)."""
    if sum(part.delta_size() for part in parts) > max(DELTA_MAX, base_count // 4):
        for part in parts:
            part.compact()


def _steps(items: Iterable, size: int = STEP) -> Iterator[list]:
    """`items` a step at a time; one empty step when there are none."""
    items = iter(items)
    step = list(islice(items, size))
    yield step
    while step := list(islice(items, size)):
        yield step


class LineStats:
    """Lines -> documents and the same-page groups of documents, updated in place. A line is
    known by a 64-bit hash whose lowest bit says whether it is short enough to be boilerplate
    (`repeated_line_max_words`), so two lines are confused only if their hashes collide;
    documents by their number in `docs`."""

    def __init__(self, min_docs: int, max_words: int):
        self.min_docs, self.max_words = min_docs, max_words
        self.docs = Names("lines.docs")
        self.doc_lines = Ragged("lines.doc_lines", np.uint64)
        self.doc_probes = Ragged("lines.doc_probes", np.uint64)
        self.line_docs = Multimap("lines.line_docs")
        self.probe_docs = Multimap("lines.probe_docs")
        self.group = Column("lines.group")
        self.members = Multimap("lines.members")
        self.next_group = 0

    def parts(self) -> list[Part]:
        return [self.docs, self.doc_lines, self.doc_probes, self.line_docs, self.probe_docs, self.group, self.members]

    def keys(self, lines: Iterable[str]) -> np.ndarray:
        lines = list(lines)
        short = np.array([len(line.split()) <= self.max_words for line in lines], dtype=np.uint64)
        return np.unique((hash64(lines) & ~np.uint64(1)) | short)

    def _repeated(self, key: int, holders: Iterable[int], group_of: Callable[[int], int]) -> bool:
        """The verdict of `repeated_lines` on the line `key` held by `holders`."""
        if not key & 1:
            return False
        groups: set[int] = set()
        for d in holders:
            groups.add(group_of(d))
            if len(groups) >= self.min_docs:
                return True
        return False

    def is_repeated(self, line: str) -> bool:
        """Whether `repeated_lines` finds `line` (normalised) among the documents now."""
        key = int(self.keys([line])[0])
        return self._repeated(key, self.line_docs.iter(key), self.group.get)

    def boilerplate_of(self, doc: Document) -> set[str]:
        """The boilerplate lines among a document's blocks: what `clean_document` needs."""
        probes = sorted(document_probes(doc))
        return {probe for probe in probes if self.is_repeated(probe)}

    def update(self, removed: Iterable[str], added: Iterable[Document]) -> set[str]:
        """Drop the documents `removed` and add `added` (a changed document is in both; read a
        step at a time); return the doc ids, other than those added, whose boilerplate lines
        changed."""
        removed, added_ids = list(removed), set()
        recleaned: set[str] = set()
        for step in _steps(added):
            recleaned |= self._update(removed, step)
            removed = []
            added_ids.update(doc.doc_id for doc in step)
            _fold_if_large(self.parts(), self.docs.base_count)
        return recleaned - added_ids

    def _update(self, removed: Iterable[str], added: list[Document]) -> set[str]:
        gone = [(d, n) for d in removed if (n := self.docs.number(d)) is not None]
        new_lines = {doc.doc_id: self.keys(document_lines(doc)).tolist() for doc in added}
        touched = {line for _, n in gone for line in self.doc_lines.get(n).tolist()}
        touched.update(line for lines in new_lines.values() for line in lines)
        # How each touched line's holders differ from before: restored to judge it as it was.
        dropped_holders: dict[int, set[int]] = {}
        new_holders: dict[int, set[int]] = {}

        for doc_id, n in gone:
            for line in self.doc_lines.get(n).tolist():
                self.line_docs.discard(line, n)
                dropped_holders.setdefault(line, set()).add(n)
            for probe in self.doc_probes.get(n).tolist():
                self.probe_docs.discard(probe, n)
            self.docs.discard(doc_id)
        for doc in added:
            n = self.docs.add(doc.doc_id)
            self.doc_lines.set(n, new_lines[doc.doc_id])
            for line in new_lines[doc.doc_id]:
                self.line_docs.add(line, n)
                new_holders.setdefault(line, set()).add(n)
            probes = self.keys(document_probes(doc))
            self.doc_probes.set(n, probes)
            for probe in probes.tolist():
                self.probe_docs.add(probe, n)

        def old_holders(line: int) -> Iterator[int]:
            fresh = new_holders.get(line, ())
            yield from (d for d in self.line_docs.iter(line) if d not in fresh)
            yield from dropped_holders.get(line, ())

        def old_count(line: int) -> int:
            return self.line_docs.count(line) - len(new_holders.get(line, ())) + len(dropped_holders.get(line, ()))

        # Pairs can change only among the holders of a touched line that counts for pairing.
        near = {self.docs.number(doc.doc_id) for doc in added}
        for line in touched:
            if min(self.line_docs.count(line), old_count(line)) <= PAIRING_MAX_DF:
                near.update(self.line_docs.iter(line))
                near.update(old_holders(line))
        old_groups: dict[int, int] = {}
        regrouped = self._regroup(near | {n for _, n in gone}, old_groups)

        # Verdicts can flip for the touched lines and the lines of regrouped documents.
        candidates = set(touched)
        for n in regrouped:
            candidates.update(self.doc_lines.get(n).tolist())

        def old_group_of(n: int) -> int:
            return old_groups[n] if n in old_groups else self.group.get(n)

        flipped = [
            line
            for line in candidates
            if self._repeated(line, old_holders(line), old_group_of)
            != self._repeated(line, self.line_docs.iter(line), self.group.get)
        ]
        return {self.docs.name(n) for line in flipped for n in self.probe_docs.iter(line)}

    def _regroup(self, seeds: set[int], old_groups: dict[int, int]) -> set[int]:
        """Recompute the same-page groups of `seeds` and of every document grouped with one of
        them before; record their former groups in `old_groups`; return the documents
        (present ones) whose group may have changed."""
        scope = set(seeds)
        for n in seeds:
            if (group := self.group.get(n)) >= 0:
                scope |= self.members.pop(group)
        for n in scope:
            if (group := self.group.get(n)) >= 0:
                old_groups[n] = group
                self.group.set(n, -1)
        scope = {n for n in scope if not self.docs.is_dead(n)}
        parent = {n: n for n in scope}
        for a in scope:
            lines_a = self.doc_lines.get(a).tolist()
            shared: dict[int, int] = defaultdict(int)
            for line in lines_a:
                if 1 < self.line_docs.count(line) <= PAIRING_MAX_DF:
                    for b in self.line_docs.iter(line):
                        if b != a:
                            shared[b] += 1
            for b, n in shared.items():
                # Edges leave the scope only to documents already grouped with it (see module doc).
                if b in parent and n >= SAME_PAGE_OVERLAP * min(len(lines_a), len(self.doc_lines.get(b))):
                    parent[find_root(parent, a)] = find_root(parent, b)
        roots: dict[int, int] = {}
        for n in sorted(scope):
            root = find_root(parent, n)
            if root not in roots:
                roots[root] = self.next_group
                self.next_group += 1
            self.group.set(n, roots[root])
            self.members.add(roots[root], n)
        return scope


class Signatures(Mapping[str, LeanMinHash]):
    """The MinHash of each live chunk by chunk id, as `group_duplicates` takes them."""

    def __init__(self, sketches: ChunkSketches):
        self.sketches = sketches

    def __getitem__(self, chunk_id: str) -> LeanMinHash:
        n = self.sketches.chunks.number(chunk_id)
        if n is None:
            raise KeyError(chunk_id)
        return LeanMinHash(seed=1, hashvalues=self.sketches.signature(n), scheme=SCHEME)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sketches.chunks)

    def __len__(self) -> int:
        return len(self.sketches.chunks)


class ChunkSketches:
    """The MinHash signature of every chunk (near-copies included) and its LSH bands, each
    band as a 64-bit key; a shared key is checked against the band's values themselves, so
    that the candidates are exactly those datasketch's MinHashLSH proposes."""

    def __init__(self, threshold: float, num_perm: int):
        self.threshold, self.num_perm = threshold, num_perm
        self.bands, self.rows = band_params(threshold, num_perm)
        self.chunks = Names("sketches.chunks")
        self.signatures_ = Ragged("sketches.signatures", np.uint32)
        self.band_chunks = Multimap("sketches.band_chunks")

    def parts(self) -> list[Part]:
        return [self.chunks, self.signatures_, self.band_chunks]

    @property
    def signatures(self) -> Signatures:
        return Signatures(self)

    def signature(self, n: int) -> np.ndarray:
        return np.asarray(self.signatures_.get(n))

    def _band_values(self, signature: np.ndarray) -> np.ndarray:
        """The hash values of each LSH band, a row per band (the last values are in none)."""
        return signature[: self.bands * self.rows].reshape(self.bands, self.rows)

    def _band_keys(self, signature: np.ndarray) -> list[int]:
        bands = self._band_values(signature)
        return [
            int.from_bytes(hashlib.blake2b(bytes([b]) + band.tobytes(), digest_size=8).digest(), "little")
            for b, band in enumerate(bands)
        ]

    def _matches(self, n: int) -> list[int]:
        signature = self.signature(n)
        bands = self._band_values(signature)
        candidates = {other for key in self._band_keys(signature) for other in self.band_chunks.iter(key)}
        found = []
        for other in sorted(candidates - {n}):
            theirs = self.signature(other)
            shares_a_band = (bands == self._band_values(theirs)).all(1).any()
            if shares_a_band and np.count_nonzero(signature == theirs) / self.num_perm >= self.threshold:
                found.append(other)
        return found

    def update(self, removed: Iterable[str], added: Iterable[Chunk]) -> set[str]:
        """Drop the chunk ids `removed`, add `added`; return the ids of every chunk whose
        near-copy group must be recomputed (the components touching a change)."""
        seeds: set[int] = set()
        gone = [n for chunk_id in dict.fromkeys(removed) if (n := self.chunks.number(chunk_id)) is not None]
        for n in gone:
            seeds.update(self._matches(n))
        for n in gone:
            for key in self._band_keys(self.signature(n)):
                self.band_chunks.discard(key, n)
            self.chunks.discard(self.chunks.name(n))
        seeds -= set(gone)
        fresh = len(self.chunks) == 0
        for step in _steps(added):
            for chunk, minhash in zip(step, MinHash.bulk([_shingles(c.text) for c in step], num_perm=self.num_perm)):
                n = self.chunks.add(chunk.chunk_id)
                self.signatures_.set(n, minhash.hashvalues)
                for key in self._band_keys(self.signatures_.get(n)):
                    self.band_chunks.add(key, n)
                seeds.add(n)
            _fold_if_large(self.parts(), self.chunks.base_count)
        if fresh:
            return {self.chunks.name(n) for n in seeds}  # a fresh build: every chunk is regrouped anyway
        component, frontier = set(seeds), list(seeds)
        while frontier:  # bounded: each chunk enters the frontier once
            for other in self._matches(frontier.pop()):
                if other not in component:
                    component.add(other)
                    frontier.append(other)
        return {self.chunks.name(n) for n in component}


@dataclass
class IngestState:
    """LineStats and ChunkSketches of one index state, saved beside the index: a pickle of
    the changes since the base, and the base arrays in the folder it names."""

    key: str
    lines: LineStats
    sketches: ChunkSketches
    # Documents whose title is their heading (rag.ingest.cleaning.heading_title): cleaned
    # again, they take the heading that cleaning keeps now, as a fresh build would.
    heading_titles: Names = field(default_factory=lambda: Names("heading_titles"))
    version: int = STATE_VERSION
    base_folder: str | None = None  # where the base arrays were saved

    def parts(self) -> list[Part]:
        return [*self.lines.parts(), *self.sketches.parts(), self.heading_titles]

    def delta_size(self) -> int:
        return sum(part.delta_size() for part in self.parts())


def state_key(settings: Settings, corpus_fingerprint: str) -> str:
    """Which index state a saved IngestState describes: the documents and the settings that
    decide cleaning and grouping."""
    digest = hashlib.sha256(corpus_fingerprint.encode())
    digest.update(settings.cleaning.model_dump_json().encode())
    digest.update(f"{settings.index.dedup_threshold}/{settings.index.dedup_num_perm}/{STATE_VERSION}".encode())
    return digest.hexdigest()


def new_state(settings: Settings, key: str) -> IngestState:
    lines = LineStats(settings.cleaning.repeated_line_min_docs, settings.cleaning.repeated_line_max_words)
    return IngestState(key, lines, ChunkSketches(settings.index.dedup_threshold, settings.index.dedup_num_perm))


def load_state(index_dir: Path, key: str) -> IngestState | None:
    """The saved state when it describes the index as it is now; None otherwise (then the
    update rebuilds it from the stored documents: slower, never wrong)."""
    folder = index_dir / STATE_DIR
    try:
        with (folder / "state.pkl").open("rb") as handle:
            state = pickle.load(handle)
        if not isinstance(state, IngestState) or state.version != STATE_VERSION or state.key != key:
            return None
        for part in state.parts():
            part.attach(folder / str(state.base_folder))
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        return None
    return state


def save_state(index_dir: Path, state: IngestState) -> None:
    """Save the state: its changes since the base in `state.pkl`, replaced atomically, and the
    base arrays, written to a new folder when they changed. A kill before the rename leaves the
    old state, whose key no longer matches the index, so it is rebuilt. With a store that keeps
    no files here (Milvus), the folder holds only this cache of the state."""
    folder = index_dir / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if state.delta_size() > DELTA_MAX:
        for part in state.parts():
            part.compact()
    parts = state.parts()
    if state.base_folder is None or any(p.base_changed for p in parts) or not (folder / state.base_folder).is_dir():
        name = f"base-{uuid.uuid4().hex}"
        tmp = folder / f".{name}.tmp"
        tmp.mkdir()
        for part in parts:
            part.save(tmp)
        for path in tmp.iterdir():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, folder / name)
        state.base_folder = name
    tmp_pickle = folder / ".state.pkl.tmp"
    with tmp_pickle.open("wb") as handle:
        pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_pickle, folder / "state.pkl")
    fsync_path(folder)
    for stale in folder.iterdir():
        if stale.is_dir() and stale.name != state.base_folder:
            shutil.rmtree(stale, ignore_errors=True)
    (index_dir / "ingest-state.pkl").unlink(missing_ok=True)  # the layout before STATE_VERSION 2


@dataclass
class HeldState:
    """An ingest state held in memory between the updates of one long-running process (`rag
    serve`), so that an update neither reads nor writes the saved state (its base is rewritten
    whenever the changes are folded into it); `flush` writes it, as the service does when it
    closes."""

    index_dir: Path | None = None
    state: IngestState | None = None

    def take(self, index_dir: Path, key: str) -> IngestState | None:
        """The state for `key`: the one held, else the saved one. The held one is given up: an
        update that fails after changing it must not leave it behind."""
        held, self.state = self.state, None
        if held is not None and held.key == key and self.index_dir == index_dir:
            return held
        return load_state(index_dir, key)

    def keep(self, index_dir: Path, state: IngestState) -> None:
        self.index_dir, self.state = index_dir, state

    def flush(self) -> None:
        if self.state is not None and self.index_dir is not None:
            save_state(self.index_dir, self.state)
