"""One calibrated decision to answer or abstain.

The signals an answer comes with (how close retrieval got, how relevant the evidence is, how
sure the model was of its choice and of "none") go into one logistic model whose output is the
answer's confidence: the estimated probability that the answer shown is right. The answer is
shown when the confidence reaches the threshold. Coefficients and threshold are fitted on
ClapNQ questions by bench/bench_decision.py and stored in `decision.json` beside this module;
the threshold was chosen there for the abstention rate on unanswerable questions."""

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
    chosen: float  # relevance score of the sentence the model chose
    log_p_choice: float  # log of the model's probability for its choice
    log_p_none: float  # log of the model's probability for "no sentence answers"

    @classmethod
    def of(cls, retrieval: float, evidence: float, chosen: float, p_choice: float, p_none: float) -> Signals:
        return cls(
            retrieval=retrieval, evidence=evidence, chosen=chosen,
            log_p_choice=math.log(max(p_choice, MIN_PROBABILITY)), log_p_none=math.log(max(p_none, MIN_PROBABILITY)),
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
