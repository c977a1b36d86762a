"""What the evaluator needs from a model: the `Predictor` protocol and the predictions it returns.

Implemented by `local.LocalPredictor`, `endpoint.EndpointPredictor` and the `baselines`;
`predictor.open_predictor` turns a `--model` string into one.

    predictor.classify(["card not arrived"])      # [ClassPrediction(label=..., scores={...})]
    predictor.generate(["### Instruction: ..."], max_new_tokens=32)   # [Generation(text, latency_s, tokens)]
    predictor.score(["prompt"], ["continuation"]) # [(summed NLL in nats, tokens scored)] or ScoringUnsupported
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ClassPrediction:
    label: str
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        return float(self.scores.get(self.label, max(self.scores.values(), default=float("nan"))))


@dataclass
class Generation:
    text: str
    latency_s: float
    tokens: int | None = None


class ScoringUnsupported(Exception):
    """The model source cannot return token log-probabilities (perplexity is then reported as unavailable)."""


@runtime_checkable
class Predictor(Protocol):
    name: str
    info: dict[str, Any]

    def classify(self, texts: list[str]) -> list[ClassPrediction]: ...

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Generation]: ...

    def score(self, prompts: list[str], continuations: list[str]) -> list[tuple[float, int]]: ...

    def render_instruction(self, instruction: str, input_text: str = "") -> str: ...

    def close(self) -> None: ...
