"""One calibrated decision: which evidence sentence answers, and whether to answer at all.

Each candidate sentence comes with signals (how close retrieval got, how relevant the best
evidence and this sentence are, where the sentence stood in the list the model saw, the
model's probability for it and for "none"). One logistic model turns them into the
candidate's confidence: the estimated probability that it answers the question. The most
confident candidate is the answer, shown when its confidence reaches the threshold. Weighing
the model's vote against the ranking this way corrects the small model's position bias.
Coefficients and threshold are fitted on ClapNQ questions by bench/bench_decision.py and
stored in `decision.json` beside this module; the threshold was chosen there for the
abstention rate on unanswerable questions."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel

DECISION_FILE = Path(__file__).with_name("decision.json")
# Probabilities are floored before their log is taken: the model's top-20 list leaves rare
# labels out entirely.
MIN_PROBABILITY = 1e-4


@dataclass(frozen=True)
class Signals:
    """What the decision sees about one answer; every field is a feature of the model."""

    retrieval: float  # best dense cosine of a retrieved passage
    evidence: float  # relevance score of the best-ranked evidence sentence
    chosen: float  # relevance score of this candidate sentence
    position: float  # where the model saw it: 0 = first
    log_p_choice: float  # log of the model's probability for this candidate
    log_p_none: float  # log of the model's probability for "no sentence answers"

    @classmethod
    def of(
        cls, retrieval: float, evidence: float, chosen: float, position: int, p_choice: float, p_none: float
    ) -> Signals:
        return cls(
            retrieval=retrieval,
            evidence=evidence,
            chosen=chosen,
            position=float(position),
            log_p_choice=math.log(max(p_choice, MIN_PROBABILITY)),
            log_p_none=math.log(max(p_none, MIN_PROBABILITY)),
        )

    def vector(self, names: list[str]) -> list[float]:
        values = asdict(self)
        return [values[name] for name in names]


class DecisionModel(BaseModel):
    """A fitted logistic model over named Signals fields, and the confidence needed to answer."""

    features: list[str]
    coefficients: list[float]
    intercept: float
    threshold: float
    fitted_on: str = ""

    def confidence(self, signals: Signals) -> float:
        z = self.intercept + sum(c * x for c, x in zip(self.coefficients, signals.vector(self.features), strict=True))
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


@lru_cache(maxsize=4)
def load_decision_model(path: Path = DECISION_FILE) -> DecisionModel:
    return DecisionModel.model_validate(json.loads(path.read_text(encoding="utf-8")))
