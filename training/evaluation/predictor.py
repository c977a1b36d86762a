"""What the evaluator needs from a model: the `Predictor` protocol and how a `--model` string becomes one.

Two implementations: `LocalPredictor` (an artifact directory or an HF model directory, loaded
in-process) and `EndpointPredictor` (a running OpenAI-compatible server, evaluated exactly as
users call it). A model reference that starts with http:// or https:// is an endpoint; the
part after `#` names the served model or adapter (`http://localhost:8000#my-adapter`);
`baseline:lead-sentence` is a model-free reference (see `baselines`).

    predictor = open_predictor("artifacts/banking77", task="classification")
    predictor.classify(["card not arrived"])      # [ClassPrediction(label=..., scores={...})]
    predictor.generate(["### Instruction: ..."], max_new_tokens=32)
    predictor.score(["prompt"], ["continuation"]) # [(summed NLL in nats, tokens scored)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from training.artifact.errors import ConfigError


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


BASELINE_PREFIX = "baseline:"


def is_endpoint(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def split_endpoint(ref: str) -> tuple[str, str | None]:
    """`http://host:8000/v1#adapter` -> (`http://host:8000`, `adapter`)."""
    url, _, model = ref.partition("#")
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    return url, model or None


def open_predictor(ref: str, task: str, api_key: str | None = None, batch_size: int = 8, dtype: str = "float32",
                   timeout_s: float = 60.0, route: str = "chat") -> Predictor:
    """An artifact path, HF model directory or http(s) endpoint URL becomes a Predictor."""
    if not ref:
        raise ConfigError("no model to evaluate", "pass --model PATH (artifact or HF directory) or an http:// endpoint")
    if ref.startswith(BASELINE_PREFIX):
        from training.evaluation.baselines import open_baseline

        return open_baseline(ref[len(BASELINE_PREFIX):])
    if is_endpoint(ref):
        from training.evaluation.endpoint import EndpointPredictor

        url, model = split_endpoint(ref)
        return EndpointPredictor(url, model=model, api_key=api_key, timeout_s=timeout_s, route=route)
    from training.evaluation.local import LocalPredictor

    return LocalPredictor(ref, task=task, batch_size=batch_size, dtype=dtype)
