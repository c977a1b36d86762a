"""`evaluate` and `compare`: data + model -> task runner -> reports on disk -> tracked run.

Rows with slice membership (a prepared dataset with declared slices, or `fairness.columns` /
`fairness.keywords`) add the metric per slice, the worst-slice gap with its bootstrap interval and
flags over `fairness.threshold` (`training.evaluation.fairness`).

Reports go to `cfg.out`, by default `<artifact>.eval/` next to an artifact (artifacts are
immutable and checksummed, so results are never written into them) or
`evals/<endpoint-model>/` for a server. The same numbers are logged to MLflow/TensorBoard.

    cfg = load_config(EvalConfig, None, ["model=artifacts/a", "data=data/banking77", "limit=200"])
    result, out = evaluate(cfg)
    table, out = compare(cfg, "artifacts/a", "artifacts/b")      # either side may be an existing report dir
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from training.artifact.config import StrictModel
from training.evaluation.compare import compare_results, write_compare_report
from training.evaluation.datasets import load_eval_data
from training.evaluation.fairness import FairnessOptions, slice_report
from training.evaluation.predictions import Predictor
from training.evaluation.predictor import BASELINE_PREFIX, is_endpoint, open_predictor, split_endpoint
from training.evaluation.report import REPORT_NAME, EvalResult, read_eval_report, write_eval_report
from training.evaluation.tasks import TASK_RUNNERS, RunSettings
from training.tracking import Tracker, TrackingConfig

ENV_PREFIX = "TUNESERVE_EVAL__"


class EvalConfig(StrictModel):
    model: str | None = None
    data: str | None = None
    task: Literal["classification", "instruction", "qa", "text", "preference"] | None = None
    split: str = "test"
    columns: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    ece_bins: int = Field(15, ge=1, le=100)
    perplexity: bool = True
    dtype: str = "float32"
    threads: int = Field(2, ge=1)
    api_key: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    endpoint_route: Literal["chat", "completions"] = Field(
        "chat", description="chat: the server applies the model's chat template; completions: plain template + perplexity")
    out: str | None = None
    bootstrap_resamples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    fairness: FairnessOptions = Field(default_factory=FairnessOptions)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    baseline: str | None = Field(None, description="preference data: the adapter to compute a win rate against "
                                 "(e.g. the SFT-only adapter; training.evaluation.preference)")
    beta: float = Field(0.1, gt=0, description="preference data: scale of the implicit reward")

    def settings(self, progress: bool) -> RunSettings:
        return RunSettings(batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, ece_bins=self.ece_bins,
                           perplexity=self.perplexity, progress=progress)

    def public(self) -> dict:
        return self.model_dump(exclude={"api_key", "tracking"})


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def default_out(model: str) -> Path:
    if model.startswith(BASELINE_PREFIX):
        return Path("evals") / _slug(model)
    if is_endpoint(model):
        url, name = split_endpoint(model)
        return Path("evals") / _slug(name or url)
    return Path(f"{Path(model).resolve()}.eval")


def _start_run(cfg: EvalConfig, name: str, params: dict, tags: dict):
    return Tracker(cfg.tracking).start_run(name, params=params, tags={"command": "evaluate", **tags})


def evaluate(cfg: EvalConfig, predictor: Predictor | None = None, progress: bool = True,
             out: Path | None = None) -> tuple[EvalResult, Path]:
    """Evaluate one model on `cfg.data`; write reports and log the run. Returns the result and its directory."""
    from training.artifact.errors import ConfigError

    if cfg.data is None:
        raise ConfigError("no evaluation data given", "pass --data PREPARED_DIR or a JSONL/JSON/CSV file with --task")
    data = load_eval_data(cfg.data, cfg.task, cfg.split, cfg.columns, cfg.limit, cfg.seed,
                          slices=cfg.fairness.membership())
    if data.task == "preference":
        return _evaluate_preference(cfg, data, out)
    own = predictor is None
    if own:
        _limit_threads(cfg.threads)
        api_key = cfg.api_key or os.environ.get("TUNESERVE_API_KEY")
        predictor = open_predictor(cfg.model or "", data.task, api_key, cfg.batch_size, cfg.dtype, cfg.timeout_s,
                                   cfg.endpoint_route)
    out = Path(out or cfg.out or default_out(cfg.model or predictor.name))
    try:
        started = time.perf_counter()
        task_result = TASK_RUNNERS[data.task](predictor, data, cfg.settings(progress))
        wall = time.perf_counter() - started
    finally:
        if own:
            predictor.close()
    result = EvalResult(task=data.task, model=predictor.info | {"name": predictor.name}, data=data.describe(),
                        settings=cfg.public(), metrics=task_result.metrics, per_sample=task_result.per_sample,
                        details=task_result.details, notes=task_result.notes, wall_time_s=wall,
                        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), samples=task_result.samples)
    for sample, row in zip(result.samples, data.rows):
        if "slices" in row:
            sample["slices"] = row["slices"]
    result.fairness = slice_report(data.rows, task_result.per_sample, data.task, cfg.fairness,
                                   cfg.bootstrap_resamples, cfg.confidence, cfg.seed)
    result.notes += [f"slice flag: {flag}" for flag in result.fairness.get("flags", [])]
    run = _start_run(cfg, f"evaluate:{predictor.name}", {**cfg.public(), "data_fingerprint": data.fingerprint},
                     {"task": data.task, "model": predictor.name,
                      **{f"model.{k}": v for k, v in predictor.info.items() if v is not None}})
    with run:
        result.tracking = {"run_id": run.run_id, "backends": run.active, "uri": cfg.tracking.uri}
        paths = write_eval_report(result, out)
        gaps = {f"slice_gap.{s['slice']}": s["gap"] for s in result.fairness.get("slices", []) if "gap" in s}
        run.log_metrics(result.metrics | gaps | {"wall_time_s": wall, "rows": len(data.rows)}, step=0)
        for key in ("json", "md", "html", *result.plots):
            run.log_artifact(paths[key])
    return result, out


def _evaluate_preference(cfg: EvalConfig, data: Any, out: Path | None) -> tuple[EvalResult, Path]:
    """Reward accuracy/margin and the win rate against cfg.baseline on preference pairs (local artifacts)."""
    from training.evaluation.preference import run_preference

    _limit_threads(cfg.threads)
    started = time.perf_counter()
    task_result = run_preference(cfg.model or "", data.rows, cfg.beta, cfg.baseline, batch_size=cfg.batch_size)
    wall = time.perf_counter() - started
    out = Path(out or cfg.out or default_out(cfg.model or "model"))
    result = EvalResult(task="preference", model={"name": cfg.model, "baseline": cfg.baseline}, data=data.describe(),
                        settings=cfg.public(), metrics=task_result.metrics, per_sample=task_result.per_sample,
                        details=task_result.details, notes=task_result.notes, wall_time_s=wall,
                        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), samples=task_result.samples)
    with _start_run(cfg, f"evaluate:{cfg.model}", {**cfg.public(), "data_fingerprint": data.fingerprint},
                    {"task": "preference", "model": str(cfg.model)}) as run:
        result.tracking = {"run_id": run.run_id, "backends": run.active, "uri": cfg.tracking.uri}
        write_eval_report(result, out)
        run.log_metrics(result.metrics | {"wall_time_s": wall, "rows": len(data.rows)}, step=0)
    return result, out


def _limit_threads(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def load_or_evaluate(cfg: EvalConfig, ref: str, progress: bool = True) -> EvalResult:
    """An existing report directory is reused; anything else is a model to evaluate now."""
    path = Path(ref)
    if (path / f"{REPORT_NAME}.json").is_file() or path.name == f"{REPORT_NAME}.json":
        return read_eval_report(path)
    result, _ = evaluate(cfg.model_copy(update={"model": ref, "out": None}), progress=progress)
    return result


def compare(cfg: EvalConfig, ref_a: str, ref_b: str, progress: bool = True) -> tuple[dict, Path]:
    a = load_or_evaluate(cfg, ref_a, progress)
    b = load_or_evaluate(cfg, ref_b, progress)
    table = compare_results(a, b, cfg.bootstrap_resamples, cfg.confidence, cfg.seed)
    out = Path(cfg.out or Path("evals") / f"compare-{_slug(a.name)}-vs-{_slug(b.name)}")
    with _start_run(cfg, f"compare:{a.name}:{b.name}", {"a": ref_a, "b": ref_b, **cfg.public()},
                    {"task": a.task, "kind": "compare"}) as run:
        paths = write_compare_report(table, out)
        run.log_metrics({f"delta.{r['metric']}": r["delta"] for r in table["headline"]}, step=0)
        for path in paths.values():
            run.log_artifact(path)
    return table, out
