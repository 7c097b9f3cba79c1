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
build chunk for chunk."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datasketch import LeanMinHash, MinHash, MinHashLSH

from rag.config import Settings
from rag.ingest.cleaning import PAIRING_MAX_DF, SAME_PAGE_OVERLAP, _normalise, split_blocks
from rag.ingest.dedup import _shingles, band_params
from rag.schema import Chunk, Document

STATE_FILE = "ingest-state.pkl"
# Bump when the pickled layout changes: an older state is then rebuilt from the documents.
STATE_VERSION = 1


def document_lines(doc: Document) -> frozenset[str]:
    """The normalised distinct lines of a document, as `repeated_lines` counts them."""
    return frozenset(_normalise(raw) for raw in doc.text.splitlines() if raw.strip())


def document_probes(doc: Document) -> frozenset[str]:
    """The normalised block texts that cleaning looks up among the boilerplate lines."""
    return frozenset(_normalise(block.text) for block in split_blocks(doc.text))


@dataclass
class LineStats:
    """Lines -> documents and the same-page groups of documents, updated in place."""

    min_docs: int
    max_words: int
    doc_lines: dict[str, frozenset[str]] = field(default_factory=dict)
    line_docs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    doc_probes: dict[str, frozenset[str]] = field(default_factory=dict)
    probe_docs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    group: dict[str, int] = field(default_factory=dict)
    members: dict[int, set[str]] = field(default_factory=dict)
    next_group: int = 0

    def is_boilerplate(
        self, line: str, group_of: Callable[[str], int] | None = None, holders: Iterable[str] | None = None
    ) -> bool:
        """The verdict of `repeated_lines` on `line` (with other groups or holders: as it was)."""
        if len(line.split()) > self.max_words:
            return False
        group_of = self.group.__getitem__ if group_of is None else group_of
        holders = self.line_docs.get(line, ()) if holders is None else holders
        return bool(holders) and len({group_of(d) for d in holders}) >= self.min_docs

    def boilerplate_of(self, doc_id: str) -> set[str]:
        """The boilerplate lines among a document's blocks: what `clean_document` needs."""
        return {probe for probe in self.doc_probes[doc_id] if self.is_boilerplate(probe)}

    def update(self, removed: Iterable[str], added: Iterable[Document]) -> set[str]:
        """Drop the documents `removed` and add `added` (a changed document is in both);
        return the doc ids, other than those added, whose boilerplate lines changed."""
        removed, added = list(removed), list(added)
        new_lines = {doc.doc_id: document_lines(doc) for doc in added}
        touched_lines = {line for d in removed for line in self.doc_lines.get(d, ())}
        touched_lines.update(line for lines in new_lines.values() for line in lines)
        old_holders = {line: set(self.line_docs.get(line, ())) for line in touched_lines}

        for doc_id in removed:
            for line in self.doc_lines.pop(doc_id, ()):
                self._discard(self.line_docs, line, doc_id)
            for probe in self.doc_probes.pop(doc_id, ()):
                self._discard(self.probe_docs, probe, doc_id)
        for doc in added:
            self.doc_lines[doc.doc_id] = new_lines[doc.doc_id]
            for line in new_lines[doc.doc_id]:
                self.line_docs[line].add(doc.doc_id)
            self.doc_probes[doc.doc_id] = document_probes(doc)
            for probe in self.doc_probes[doc.doc_id]:
                self.probe_docs[probe].add(doc.doc_id)

        # Pairs can change only among the holders of a touched line that counts for pairing.
        near = {doc.doc_id for doc in added}
        for line in touched_lines:
            holders = self.line_docs.get(line, set())
            if min(len(holders), len(old_holders[line])) <= PAIRING_MAX_DF:
                near |= holders | old_holders[line]
        old_groups: dict[str, int] = {}
        regrouped = self._regroup(near | set(removed), old_groups)

        # Verdicts can flip for the touched lines and the lines of regrouped documents.
        candidates = set(touched_lines)
        for doc_id in regrouped:
            candidates |= self.doc_lines.get(doc_id, frozenset())

        def old_group_of(doc_id: str) -> int:
            return old_groups[doc_id] if doc_id in old_groups else self.group[doc_id]

        flipped = {
            line
            for line in candidates
            if self.is_boilerplate(line, old_group_of, old_holders.get(line)) != self.is_boilerplate(line)
        }
        added_ids = {doc.doc_id for doc in added}
        return {d for line in flipped for d in self.probe_docs.get(line, ())} - added_ids

    @staticmethod
    def _discard(index: dict[str, set[str]], key: str, doc_id: str) -> None:
        holders = index.get(key)
        if holders is not None:
            holders.discard(doc_id)
            if not holders:
                del index[key]

    def _regroup(self, seeds: set[str], old_groups: dict[str, int]) -> set[str]:
        """Recompute the same-page groups of `seeds` and of every document grouped with one of
        them before; record their former groups in `old_groups`; return the documents
        (present ones) whose group may have changed."""
        scope: set[str] = set(seeds)
        for doc_id in seeds:
            if doc_id in self.group:
                scope |= self.members.pop(self.group[doc_id], set())
        for doc_id in scope:
            if doc_id in self.group:
                old_groups[doc_id] = self.group.pop(doc_id)
        scope = {d for d in scope if d in self.doc_lines}
        parent = {d: d for d in scope}

        def find(d: str) -> str:
            while parent[d] != d:
                parent[d] = parent[parent[d]]
                d = parent[d]
            return d

        for a in scope:
            shared: dict[str, int] = defaultdict(int)
            for line in self.doc_lines[a]:
                holders = self.line_docs[line]
                if 1 < len(holders) <= PAIRING_MAX_DF:
                    for b in holders:
                        if b != a:
                            shared[b] += 1
            for b, n in shared.items():
                # Edges leave the scope only to documents already grouped with it (see module doc).
                if b in parent and n >= SAME_PAGE_OVERLAP * min(len(self.doc_lines[a]), len(self.doc_lines[b])):
                    parent[find(a)] = find(b)
        roots: dict[str, int] = {}
        for doc_id in sorted(scope):
            root = find(doc_id)
            if root not in roots:
                roots[root] = self.next_group
                self.members[self.next_group] = set()
                self.next_group += 1
            self.group[doc_id] = roots[root]
            self.members[roots[root]].add(doc_id)
        return scope


@dataclass
class ChunkSketches:
    """The MinHash signature of every chunk, all in one LSH (near-copies included)."""

    threshold: float
    num_perm: int
    lsh: MinHashLSH = None  # type: ignore[assignment]
    signatures: dict[str, LeanMinHash] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lsh is None:
            self.lsh = MinHashLSH(num_perm=self.num_perm, params=band_params(self.threshold, self.num_perm))

    def _matches(self, chunk_id: str) -> list[str]:
        signature = self.signatures[chunk_id]
        return [
            other
            for other in self.lsh.query(signature)
            if other != chunk_id and signature.jaccard(self.signatures[other]) >= self.threshold
        ]

    def update(self, removed: Iterable[str], added: list[Chunk]) -> set[str]:
        """Drop the chunk ids `removed`, add `added`; return the ids of every chunk whose
        near-copy group must be recomputed (the components touching a change)."""
        seeds: set[str] = set()
        removed = [c for c in dict.fromkeys(removed) if c in self.signatures]
        for chunk_id in removed:
            seeds.update(self._matches(chunk_id))
        for chunk_id in removed:
            self.lsh.remove(chunk_id)
            del self.signatures[chunk_id]
        seeds -= set(removed)
        signatures = MinHash.bulk([_shingles(c.text) for c in added], num_perm=self.num_perm)
        for chunk, signature in zip(added, signatures):
            self.signatures[chunk.chunk_id] = signature
            self.lsh.insert(chunk.chunk_id, signature)
            seeds.add(chunk.chunk_id)
        if len(self.signatures) == len(added):
            return seeds  # a fresh build: every chunk is regrouped anyway
        component, frontier = set(seeds), list(seeds)
        while frontier:  # bounded: each chunk enters the frontier once
            for other in self._matches(frontier.pop()):
                if other not in component:
                    component.add(other)
                    frontier.append(other)
        return component


@dataclass
class IngestState:
    """LineStats and ChunkSketches of one index state, saved beside the index."""

    key: str
    lines: LineStats
    sketches: ChunkSketches
    # Documents whose title is their heading (rag.ingest.cleaning.heading_title): cleaned
    # again, they take the heading that cleaning keeps now, as a fresh build would.
    heading_titles: set[str] = field(default_factory=set)
    version: int = STATE_VERSION


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
    try:
        with (index_dir / STATE_FILE).open("rb") as handle:
            state = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        return None
    if not isinstance(state, IngestState) or state.version != STATE_VERSION or state.key != key:
        return None
    return state


def save_state(index_dir: Path, state: IngestState) -> None:
    """Replace the saved state atomically; a kill before the rename leaves the old one, whose
    key no longer matches the index, so it is rebuilt. With a store that keeps no files here
    (Milvus), the folder holds only this cache of the state."""
    index_dir.mkdir(parents=True, exist_ok=True)
    tmp = index_dir / f".{STATE_FILE}.tmp"
    with tmp.open("wb") as handle:
        pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, index_dir / STATE_FILE)


@dataclass
class HeldState:
    """An ingest state held in memory between the updates of one long-running process (`rag
    serve`), so that an update neither reads nor writes `ingest-state.pkl` (large for a large
    corpus); `flush` writes it, as the service does when it closes."""

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
