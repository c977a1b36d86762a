"""How a `--model` string becomes a `Predictor` (the protocol is in `predictions`).

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

from training.artifact.errors import ConfigError
from training.evaluation.baselines import open_baseline
from training.evaluation.endpoint import EndpointPredictor
from training.evaluation.local import LocalPredictor
from training.evaluation.predictions import Predictor

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
        return open_baseline(ref[len(BASELINE_PREFIX):])
    if is_endpoint(ref):
        url, model = split_endpoint(ref)
        return EndpointPredictor(url, model=model, api_key=api_key, timeout_s=timeout_s, route=route)
    return LocalPredictor(ref, task=task, batch_size=batch_size, dtype=dtype)
