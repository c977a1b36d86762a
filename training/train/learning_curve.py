"""`tuneserve learning-curve`: how much data a method needs, and whether augmentation pays.

The training split (after the usual validation hold-out) is shuffled once per seed; fraction f
trains on the first round(f * n) rows of that order, so for one seed the subsets are nested
(5 % is inside 10 %, ...). Validation and test rows stay the same for every run. Each
(fraction, seed) is a normal `training.train.run.train` of `train` (the method's config),
written under `output/runs/`. The report gives the test metric (validation when there is no
test split) per fraction with its mean, a t confidence interval over seeds, and the smallest
fraction whose mean reaches `target` (0.95) x the full-data mean; `learning_curve.png` plots
it with the band. `compare=augmentation` trains every run twice, without and with
`training.data.augment` applied to that run's subset, and reports the paired difference per
fraction with its interval.

    tuneserve learning-curve training/configs/classify-minilm.yaml fractions=[0.05,0.1,0.25,0.5,1.0] \
        seeds=3 full_seeds=1 train.epochs=2 output=artifacts/curve
    tuneserve learning-curve ... compare=augmentation fractions=[0.1] seeds=3
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from training.artifact.config import StrictModel
from training.artifact.errors import ConfigError
from training.data.config import AugmentConfig
from training.train.config import TrainConfig

ENV_PREFIX = "TUNESERVE_CURVE__"
ARMS = {"none": ("plain",), "augmentation": ("plain", "augmented")}


class CurveConfig(StrictModel):
    train: TrainConfig = Field(default_factory=TrainConfig)
    fractions: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5, 1.0], min_length=1)
    seeds: int = Field(3, ge=1, le=20, description="seeds per fraction below small_fraction")
    full_seeds: int = Field(1, ge=1, le=20, description="seeds per fraction at or above small_fraction")
    small_fraction: float = Field(0.5, gt=0, le=1)
    target: float = Field(0.95, gt=0, le=1, description="report the smallest fraction reaching target x full-data metric")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    compare: Literal["none", "augmentation"] = "none"
    augmentation: AugmentConfig = Field(default_factory=lambda: AugmentConfig(enabled=True))
    test_rows: int | None = Field(None, ge=1, description="evaluate every run on a seeded sample of N test rows")
    keep_artifacts: bool = False
    output: str = "artifacts/learning-curve"

    @field_validator("fractions")
    @classmethod
    def _check(cls, fractions: list[float]) -> list[float]:
        bad = [f for f in fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"fractions must be in (0, 1], got {bad}")
        return sorted(set(fractions))


def nested_subsets(n: int, fractions: list[float], seed: int) -> dict[float, list[int]]:
    """Row indices per fraction: prefixes of one seeded permutation, so smaller subsets nest in larger ones."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return {f: order[: max(1, round(f * n))] for f in fractions}


def seeds_for(cfg: CurveConfig, fraction: float) -> list[int]:
    return list(range(cfg.seeds if fraction < cfg.small_fraction else cfg.full_seeds))


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval (one value: the interval is the value itself)."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, mean, mean
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size))
    return mean, mean - half, mean + half


def smallest_reaching(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first point (by fraction) whose mean reaches target x the largest fraction's mean."""
    points = sorted(points, key=lambda p: p["fraction"])
    goal = target * points[-1]["mean"]
    for point in points:
        if point["mean"] >= goal:
            return {"fraction": point["fraction"], "mean": point["mean"], "threshold": goal}
    return None


def _write_subset(splits: Any, rows: list[dict[str, Any]], dest: Path) -> Path:
    """A data dir the trainer reads like any other: train subset, the fixed validation/test, the full label list."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows), ("validation", splits.validation), ("test", splits.test)):
        with open(dest / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    meta = {"task": "classification" if splits.labels else "instruction", "labels": splits.labels}
    (dest / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return dest


def _augment(rows: list[dict[str, Any]], cfg: AugmentConfig, task: str) -> tuple[list[dict[str, Any]], int]:
    from training.data.augment import augment_rows
    from training.data.tasks import Row, get_task

    spec = get_task("classification" if task == "classification" else "instruction")
    source = [Row(dict(r), f"row{i}") for i, r in enumerate(rows)]
    added, _ = augment_rows(source, cfg, spec)
    return rows + [r.output() for r in added], len(added)


def _headline(metrics: dict[str, Any]) -> tuple[str, float]:
    for key in ("test_accuracy", "val_accuracy", "test_loss", "val_loss"):
        if key in metrics:
            return key, float(metrics[key])
    raise ConfigError("the run reported no accuracy or loss", "give the data a validation or test split")


def run_curve(cfg: CurveConfig, console: Any = None) -> dict[str, Any]:
    from training.train.data import load_splits
    from training.train.run import train

    splits = load_splits(cfg.train.data, cfg.train.task, cfg.train.seed)
    if cfg.test_rows and cfg.test_rows < len(splits.test):
        splits.test = random.Random(cfg.train.seed).sample(splits.test, cfg.test_rows)
    out = Path(cfg.output)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for seed in range(max(cfg.seeds, cfg.full_seeds)):
        subsets = nested_subsets(len(splits.train), cfg.fractions, seed)
        for fraction in cfg.fractions:
            if seed not in seeds_for(cfg, fraction):
                continue
            rows = [splits.train[i] for i in subsets[fraction]]
            for arm in ARMS[cfg.compare]:
                used, added = (_augment(rows, cfg.augmentation.model_copy(update={"seed": seed}), cfg.train.task)
                               if arm == "augmented" else (rows, 0))
                tag = f"f{fraction:g}-s{seed}-{arm}"
                data_dir = _write_subset(splits, used, out / "runs" / f"{tag}.data")
                run_cfg = cfg.train.model_copy(update={
                    "data": cfg.train.data.model_copy(update={"path": str(data_dir), "max_rows": None,
                                                              "text_field": None, "label_field": None}),
                    "output": str(out / "runs" / tag), "name": f"curve-{tag}", "seed": cfg.train.seed + seed,
                    "overwrite": True})
                if console is not None:
                    console.print(f"[bold]learning-curve:[/] {tag} ({len(used)} train rows)")
                outcome = train(run_cfg)
                metric, value = _headline(outcome.manifest.metrics)
                runs.append({"fraction": fraction, "seed": seed, "arm": arm, "train_rows": len(used),
                             "augmented_rows": added, "metric": metric, "value": value,
                             "train_seconds": outcome.manifest.wall_time_seconds,
                             "trainable_parameters": outcome.manifest.trainable_parameters})
                if not cfg.keep_artifacts:
                    shutil.rmtree(outcome.artifact, ignore_errors=True)
                shutil.rmtree(data_dir, ignore_errors=True)
                report = _write(runs, cfg, splits, out)  # after every run: an interrupted curve keeps what it measured
    return report


def _write(runs: list[dict[str, Any]], cfg: CurveConfig, splits: Any, out: Path) -> dict[str, Any]:
    from training.train.curve_report import write_curve_report

    report = summarize(runs, cfg)
    report["data"] = {"source": splits.source, "train_rows": len(splits.train), "validation_rows": len(splits.validation),
                      "test_rows": len(splits.test)}
    report["paths"] = {k: str(v) for k, v in write_curve_report(report, out).items()}
    return report


def summarize(runs: list[dict[str, Any]], cfg: CurveConfig) -> dict[str, Any]:
    """Per arm and fraction: mean and t interval over seeds; the 95 % rule; paired arm differences."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS[cfg.compare]:
        points = []
        for fraction in cfg.fractions:
            values = [r["value"] for r in runs if r["arm"] == arm and r["fraction"] == fraction]
            if not values:
                continue
            mean, low, high = t_interval(values, cfg.confidence)
            rows = [r["train_rows"] for r in runs if r["arm"] == arm and r["fraction"] == fraction]
            points.append({"fraction": fraction, "train_rows": rows[0], "n_seeds": len(values), "values": values,
                           "mean": mean, "low": low, "high": high})
        curves[arm] = points
    metric = runs[0]["metric"] if runs else None
    lower_is_better = bool(metric and metric.endswith("loss"))
    plain = curves.get("plain") or []
    complete = bool(plain) and plain[-1]["fraction"] == max(cfg.fractions)  # the reference point is the largest fraction
    reaching = smallest_reaching(plain, cfg.target) if complete and not lower_is_better else None
    missing = [f for f in cfg.fractions if f not in {p["fraction"] for p in plain}]
    report = {"metric": metric, "target": cfg.target, "confidence": cfg.confidence, "curves": curves,
              "smallest_fraction_reaching_target": reaching, "missing_fractions": missing, "runs": runs,
              "config": cfg.model_dump(mode="json")}
    if cfg.compare == "augmentation":
        report["augmentation"] = augmentation_effect(runs, cfg)
    return report


def augmentation_effect(runs: list[dict[str, Any]], cfg: CurveConfig) -> list[dict[str, Any]]:
    """Per fraction: augmented minus plain, paired by seed, with a t interval over seeds (points of the metric)."""
    effects = []
    for fraction in cfg.fractions:
        plain = {r["seed"]: r["value"] for r in runs if r["fraction"] == fraction and r["arm"] == "plain"}
        aug = {r["seed"]: r["value"] for r in runs if r["fraction"] == fraction and r["arm"] == "augmented"}
        diffs = [aug[s] - plain[s] for s in sorted(plain) if s in aug]
        if not diffs:
            continue
        mean, low, high = t_interval(diffs, cfg.confidence)
        relative = [(aug[s] - plain[s]) / plain[s] for s in sorted(plain) if s in aug and plain[s]]
        effects.append({"fraction": fraction, "n_seeds": len(diffs), "differences": diffs, "mean": mean,
                        "low": low, "high": high,
                        "relative_mean": sum(relative) / len(relative) if relative else None})
    return effects
