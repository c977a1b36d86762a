"""`tuneserve compare`: train several methods on the same data and tabulate the results.

Each method runs with the shared `train:` settings (its own `output` under `output/`)
plus optional per-method overrides. The table holds the headline metric (test accuracy
or loss when the data has a test split, else validation), trainable parameters, train
time and artifact size; it is written as `comparison.md`, `comparison.json` and
`comparison.png` (matplotlib) in `output/`.

    tuneserve compare methods=[lora,full] train.base=all-minilm-l6-v2 train.task=classification \
        train.data.path=prepared/banking77 output=artifacts/compare
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from training.artifact.config import StrictModel
from training.train.config import TrainConfig
from training.train.methods import get_method

ENV_PREFIX = "TUNESERVE_COMPARE__"
METRIC_ORDER = ("test_accuracy", "val_accuracy", "test_loss", "val_loss")


class CompareConfig(StrictModel):
    methods: list[str] = Field(default_factory=lambda: ["lora", "full"], min_length=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                 description="per-method TrainConfig fields, e.g. {full: {optim: {lr: 5e-5}}}")
    output: str = "artifacts/compare"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def method_config(cfg: CompareConfig, method: str) -> TrainConfig:
    data = _merge(cfg.train.model_dump(), cfg.overrides.get(method, {}))
    data.update(method=method, output=str(Path(cfg.output) / method), name=f"compare-{method}")
    return TrainConfig.model_validate(data)


def headline(metrics: dict[str, Any]) -> tuple[str, float | None]:
    for key in METRIC_ORDER:
        if key in metrics:
            return key, metrics[key]
    return "train_loss", metrics.get("train_loss")


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | metric | value | trainable params | train time (s) | artifact size (MB) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        value = f"{r['value']:.4f}" if r["value"] is not None else "n/a"
        lines.append(f"| {r['method']} | {r['metric']} | {value} | {r['trainable_parameters']:,} | "
                     f"{r['train_seconds']:.1f} | {r['artifact_bytes'] / 1e6:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = ((rows[0]["metric"], [r["value"] or 0 for r in rows], False),
              ("trainable parameters", [r["trainable_parameters"] for r in rows], True),
              ("train time (s)", [r["train_seconds"] for r in rows], False))
    for ax, (title, values, log) in zip(axes, panels):
        ax.bar(names, values, color="#4c72b0")
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(cfg: CompareConfig, console: Any = None) -> dict[str, Any]:
    from training.train.run import train

    configs = [method_config(cfg, m) for m in cfg.methods]  # validates every method before training any
    for c in configs:
        get_method(c.method)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in configs:
        if console is not None:
            console.print(f"[bold]compare:[/] training {c.method}")
        outcome = train(c)
        metrics = outcome.manifest.metrics
        metric, value = headline(metrics)
        rows.append({"method": c.method, "metric": metric, "value": value, "metrics": metrics,
                     "trainable_parameters": outcome.manifest.trainable_parameters,
                     "train_seconds": outcome.manifest.wall_time_seconds,
                     "artifact_bytes": dir_size(outcome.artifact), "artifact": str(outcome.artifact)})
    paths = {"markdown": out / "comparison.md", "json": out / "comparison.json", "plot": out / "comparison.png"}
    paths["markdown"].write_text(markdown_table(rows), encoding="utf-8")
    paths["json"].write_text(json.dumps({"config": cfg.model_dump(), "results": rows}, indent=2), encoding="utf-8")
    plot(rows, paths["plot"])
    if console is not None:
        console.print(paths["markdown"].read_text(encoding="utf-8"))
    return {**{k: str(v) for k, v in paths.items()}, "results": rows}
