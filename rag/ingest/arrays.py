"""Compact containers of the incremental ingest state (rag.ingest.incremental), so that it
stays small at millions of documents and opens in moments: each holds a *base* in numpy
arrays (memory-mapped from the saved state) and the changes since in small Python containers,
which `compact` folds into a new base. Numbers (of documents, of chunks) are never reused: a
removed name keeps its number, marked dead, until the state is built again from scratch."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

_U64 = np.dtype(np.uint64)


def hash64(texts: Iterable[str]) -> np.ndarray:
    """A 64-bit BLAKE2b hash of each text."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts], dtype=_U64
    )


class Part:
    """A container whose base arrays are saved as `<label>.<name>.npy` files."""

    label: str
    base: dict[str, np.ndarray]
    base_changed = True  # since it was saved or mapped

    def __getstate__(self) -> dict[str, Any]:
        # The arrays are saved beside the pickle; the pickle keeps their shapes and dtypes.
        state = dict(self.__dict__)
        state["base"] = {name: (array.shape, array.dtype.str) for name, array in self.base.items()}
        return state

    def save(self, folder: Path) -> None:
        for name, array in self.base.items():
            with (folder / f"{self.label}.{name}.npy").open("wb") as handle:
                np.save(handle, np.ascontiguousarray(array))
        self.base_changed = False

    def attach(self, folder: Path) -> None:
        """Map the saved base arrays; ValueError when one is not what the pickle describes."""
        spec: dict[str, tuple[tuple[int, ...], str]] = self.base  # type: ignore[assignment]
        base = {}
        for name, (shape, dtype) in spec.items():
            path = folder / f"{self.label}.{name}.npy"
            array = np.load(path, mmap_mode="r") if np.prod(shape) else np.load(path)
            if array.shape != tuple(shape) or array.dtype.str != dtype:
                raise ValueError(f"{path} does not match the saved state")
            base[name] = array
        self.base = base
        self.base_changed = False

    def delta_size(self) -> int:
        raise NotImplementedError

    def compact(self) -> None:
        raise NotImplementedError


class Names(Part):
    """Strings numbered in the order they were added (also a set of strings: `in`, `add`,
    `discard`). Base: the UTF-8 names end to end with their offsets, and their hashes sorted
    for lookup."""

    def __init__(self, label: str):
        self.label = label
        self.base = {
            "blob": np.zeros(0, np.uint8),
            "offsets": np.zeros(1, np.int64),
            "sorted_hashes": np.zeros(0, _U64),
            "order": np.zeros(0, np.int64),
            "dead": np.zeros(0, bool),
        }
        self.added: dict[str, int] = {}  # live names added since the base
        self.added_names: list[str] = []  # every name numbered since the base, live or not
        self.dead: set[int] = set()  # numbers removed since the base
        self.live = 0

    @property
    def base_count(self) -> int:
        return len(self.base["dead"])

    def __len__(self) -> int:
        return self.live

    def number(self, name: str) -> int | None:
        """The live number of `name`, None if it has none."""
        if name in self.added:
            return self.added[name]
        sorted_hashes = self.base["sorted_hashes"]
        key = hash64([name])[0]
        lo, hi = sorted_hashes.searchsorted(key, "left"), sorted_hashes.searchsorted(key, "right")
        for n in self.base["order"][lo:hi].tolist():
            if not self.is_dead(n) and self.name(n) == name:
                return n
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.number(name) is not None

    def __iter__(self) -> Iterator[str]:
        """The live names, in number order."""
        for n in range(self.base_count):
            if not self.is_dead(n):
                yield self.name(n)
        yield from self.added

    def is_dead(self, n: int) -> bool:
        return n in self.dead or (n < self.base_count and bool(self.base["dead"][n]))

    def name(self, n: int) -> str:
        if n < self.base_count:
            offsets = self.base["offsets"]
            return bytes(self.base["blob"][offsets[n] : offsets[n + 1]]).decode()
        return self.added_names[n - self.base_count]

    def add(self, name: str) -> int:
        """The live number of `name`, a new one if it has none."""
        n = self.number(name)
        if n is None:
            n = self.base_count + len(self.added_names)
            self.added[name] = n
            self.added_names.append(name)
            self.live += 1
        return n

    def discard(self, name: str) -> int | None:
        """Remove `name`; return the number it had."""
        n = self.number(name)
        if n is not None:
            self.dead.add(n)
            self.added.pop(name, None)
            self.live -= 1
        return n

    def delta_size(self) -> int:
        return len(self.added_names) + len(self.dead)

    def compact(self) -> None:
        if not self.delta_size():
            return
        encoded = [name.encode() for name in self.added_names]
        lengths = np.fromiter((len(e) for e in encoded), np.int64, len(encoded))
        offsets = np.concatenate([self.base["offsets"], self.base["offsets"][-1] + np.cumsum(lengths)])
        blob = np.concatenate([self.base["blob"], np.frombuffer(b"".join(encoded), np.uint8)])
        numbers = np.arange(self.base_count, self.base_count + len(encoded), dtype=np.int64)
        hashes = np.concatenate([self.base["sorted_hashes"], hash64(self.added_names)])
        order = np.concatenate([self.base["order"], numbers])
        by_hash = np.argsort(hashes, kind="stable")
        dead = np.concatenate([self.base["dead"], np.zeros(len(encoded), bool)])
        dead[list(self.dead)] = True
        self.base = {
            "blob": blob,
            "offsets": offsets,
            "sorted_hashes": hashes[by_hash],
            "order": order[by_hash],
            "dead": dead,
        }
        self.added, self.added_names, self.dead = {}, [], set()
        self.base_changed = True


class Multimap(Part):
    """64-bit keys to sets of numbers. Base: the (key, number) pairs sorted."""

    def __init__(self, label: str):
        self.label = label
        self.base = {"keys": np.zeros(0, _U64), "values": np.zeros(0, np.int64)}
        self.added: dict[int, set[int]] = {}
        self.removed: dict[int, set[int]] = {}  # base pairs removed since the base
        self._delta = 0

    def _range(self, key: int) -> tuple[int, int]:
        keys, key = self.base["keys"], np.uint64(key)  # a Python int would convert every key
        return int(keys.searchsorted(key, "left")), int(keys.searchsorted(key, "right"))

    def iter(self, key: int) -> Iterator[int]:
        """The numbers of `key`, lazily (a common key may have very many)."""
        lo, hi = self._range(key)
        removed = self.removed.get(key, ())
        for start in range(lo, hi, 4096):
            yield from (n for n in self.base["values"][start : min(hi, start + 4096)].tolist() if n not in removed)
        yield from self.added.get(key, ())

    def get(self, key: int) -> set[int]:
        return set(self.iter(key))

    def count(self, key: int) -> int:
        lo, hi = self._range(key)
        return hi - lo - len(self.removed.get(key, ())) + len(self.added.get(key, ()))

    def add(self, key: int, number: int) -> None:
        self.added.setdefault(key, set()).add(number)
        self._delta += 1

    def discard(self, key: int, number: int) -> None:
        """Remove the pair (`key`, `number`), which must be present."""
        added = self.added.get(key)
        if added is not None and number in added:
            added.remove(number)
            if not added:
                del self.added[key]
        else:
            self.removed.setdefault(key, set()).add(number)
        self._delta += 1

    def pop(self, key: int) -> set[int]:
        numbers = self.get(key)
        for number in numbers:
            self.discard(key, number)
        return numbers

    def delta_size(self) -> int:
        return self._delta

    def compact(self) -> None:
        if not self._delta:
            return
        keys, values = self.base["keys"], self.base["values"]
        keep = np.ones(len(keys), bool)
        for key, numbers in self.removed.items():
            lo, hi = self._range(key)
            keep[lo:hi] &= ~np.isin(values[lo:hi], list(numbers))
        added_keys = np.fromiter((k for k, ns in self.added.items() for _ in ns), _U64)
        added_values = np.fromiter((n for ns in self.added.values() for n in ns), np.int64)
        keys = np.concatenate([keys[keep], added_keys])
        values = np.concatenate([values[keep], added_values])
        order = np.lexsort((values, keys))
        self.base = {"keys": keys[order], "values": values[order]}
        self.added, self.removed, self._delta = {}, {}, 0
        self.base_changed = True


class Ragged(Part):
    """An array of `dtype` per number. Base: the arrays end to end with their offsets."""

    def __init__(self, label: str, dtype: type):
        self.label = label
        self.base = {"offsets": np.zeros(1, np.int64), "values": np.zeros(0, dtype)}
        self.added: dict[int, np.ndarray] = {}

    def get(self, n: int) -> np.ndarray:
        if n in self.added:
            return self.added[n]
        offsets = self.base["offsets"]
        if n < len(offsets) - 1:
            return self.base["values"][offsets[n] : offsets[n + 1]]
        return self.base["values"][:0]

    def set(self, n: int, values: np.ndarray) -> None:
        """The array of `n`, a number from after the base."""
        self.added[n] = np.asarray(values, self.base["values"].dtype)

    def delta_size(self) -> int:
        return len(self.added)

    def compact(self) -> None:
        if not self.added:
            return
        first, last = len(self.base["offsets"]) - 1, max(self.added) + 1
        arrays = [self.added.get(n, self.base["values"][:0]) for n in range(first, last)]
        lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
        self.base = {
            "offsets": np.concatenate([self.base["offsets"], self.base["offsets"][-1] + np.cumsum(lengths)]),
            "values": np.concatenate([self.base["values"], *arrays]),
        }
        self.added = {}
        self.base_changed = True


class Column(Part):
    """An integer per number, `missing` where none was set. Base: one array."""

    def __init__(self, label: str, missing: int = -1):
        self.label = label
        self.missing = missing
        self.base = {"values": np.zeros(0, np.int64)}
        self.changed: dict[int, int] = {}

    def get(self, n: int) -> int:
        if n in self.changed:
            return self.changed[n]
        values = self.base["values"]
        return int(values[n]) if n < len(values) else self.missing

    def set(self, n: int, value: int) -> None:
        self.changed[n] = value

    def delta_size(self) -> int:
        return len(self.changed)

    def compact(self) -> None:
        if not self.changed:
            return
        values = np.array(self.base["values"])
        last = max(self.changed) + 1
        if last > len(values):
            values = np.concatenate([values, np.full(last - len(values), self.missing, np.int64)])
        numbers = np.fromiter(self.changed, np.int64, len(self.changed))
        values[numbers] = np.fromiter(self.changed.values(), np.int64, len(self.changed))
        self.base = {"values": values}
        self.changed = {}
        self.base_changed = True
