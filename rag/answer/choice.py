"""The model chooses among numbered evidence: which candidate sentence answers the question,
or none. The choice is read from the model's first-token probabilities over the labels, so it
costs one forward pass and comes with a probability for every candidate."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rag.answer.prompts import CHOICE_LABELS, NONE_LABEL


@dataclass(frozen=True)
class Choice:
    """The model's probabilities: `p_none` for "no sentence answers", `p[i]` for candidate i
    (0-based), renormalised over the labels so they sum to one."""

    p_none: float
    p: tuple[float, ...]

    @property
    def best(self) -> int | None:
        """The likeliest candidate, or None when the model gave the candidates no probability."""
        if not self.p or max(self.p) <= 0:
            return None
        return max(range(len(self.p)), key=lambda i: (self.p[i], -i))


def choice_from_probabilities(token_probabilities: dict[str, float], candidates: int) -> Choice:
    """A Choice from the first token's probabilities ({token text: p}, e.g. top-20 logprobs);
    tokens that are no label of the `candidates` shown are ignored, and so is surrounding
    whitespace ("3" and " 3" are the same label)."""
    labels = [NONE_LABEL, *CHOICE_LABELS[:candidates]]
    mass = dict.fromkeys(labels, 0.0)
    for token, probability in token_probabilities.items():
        label = token.strip()
        if label in mass:
            mass[label] += probability
    total = sum(mass.values())
    if total <= 0:
        return Choice(p_none=1.0, p=(0.0,) * candidates)
    return Choice(p_none=mass[NONE_LABEL] / total, p=tuple(mass[label] / total for label in labels[1:]))


LABEL = re.compile(r"(?<!\d)\d(?!\d)")


def parse_choice(reply: str, candidates: int) -> list[int]:
    """The candidates (0-based, in order, no repeats) a free-text reply names, e.g. "3", "[3]",
    "3, 7", "Sentence 2."; [] for "0", for a decline and for anything naming no shown label."""
    chosen: list[int] = []
    for match in LABEL.finditer(reply):
        label = match.group()
        if label == NONE_LABEL:
            break
        if label in CHOICE_LABELS[:candidates]:
            index = CHOICE_LABELS.index(label)
            if index not in chosen:
                chosen.append(index)
    return chosen


def choice_from_reply(reply: str, candidates: int) -> Choice:
    """A Choice from a model's text reply, for providers that return no token probabilities: the
    candidates it names share the probability, and naming none is a sure "none"."""
    chosen = parse_choice(reply, candidates)
    if not chosen:
        return Choice(p_none=1.0, p=(0.0,) * candidates)
    return Choice(p_none=0.0, p=tuple(1 / len(chosen) if i in chosen else 0.0 for i in range(candidates)))
