"""Baselines and fine-tuned models side by side with their cost: `tuneserve compare --report DIR ...`.

Each reference is an evaluation report directory (`tuneserve evaluate` or `tuneserve baseline`
output) on the same rows. A row gives the accuracy (or the task's first metric) with a 95 %
interval, trainable parameters (0 for a prompt/embedding baseline; the artifact manifest's for
a fine-tuned model), train time (manifest) and latency per example (evaluation wall time / rows).

    table = cost_table(["evals/b77-smollm2/zero-shot-calibrated", "artifacts/minilm-intents.eval"])
    write_cost_table(table, Path("evals/b77-cost"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.evaluation.render import md_table, write_json, write_text
from training.evaluation.report import read_eval_report

NAME = "cost_table"


def _manifest(model: dict[str, Any]) -> dict[str, Any]:
    path = model.get("path")
    if model.get("source") != "artifact" or not path or not (Path(path) / "manifest.json").is_file():
        return {}
    return json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))


def cost_row(ref: str) -> dict[str, Any]:
    from training.evaluation.prompt_baseline import mean_ci

    result = read_eval_report(Path(ref))
    metric = "accuracy" if "accuracy" in result.per_sample else next(iter(result.per_sample), None)
    values = result.per_sample.get(metric, []) if metric else []
    value, low, high = mean_ci(values) if metric == "accuracy" else (result.metrics.get(metric or ""), None, None)
    manifest = _manifest(result.model)
    baseline = result.model.get("transport") == "baseline"
    trainable = 0 if baseline else manifest.get("trainable_parameters")
    return {"name": result.name, "kind": "baseline" if baseline else "fine-tuned" if manifest else "model",
            "report": ref, "data_fingerprint": result.data.get("fingerprint"), "rows": result.data.get("rows"),
            "metric": metric, "value": value, "ci95": [low, high], "trainable_parameters": trainable,
            "train_seconds": 0.0 if baseline else manifest.get("wall_time_seconds"),
            "latency_per_example_s": result.model.get("seconds_per_example",
                                                      result.wall_time_s / max(result.data.get("rows") or 1, 1))}


def cost_table(refs: list[str]) -> dict[str, Any]:
    rows = [cost_row(ref) for ref in refs]
    if len({r["data_fingerprint"] for r in rows}) > 1:
        raise DataError("the reports were made on different rows (data fingerprints differ)",
                        "evaluate every model with the same data, split, limit and seed")
    return {"rows": rows}


def write_cost_table(table: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    body = [[r["name"], r["kind"], r["rows"], r["value"],
             f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" if r["ci95"][0] is not None else "",
             r["trainable_parameters"], r["train_seconds"], r["latency_per_example_s"]] for r in table["rows"]]
    md = ["# Baselines vs fine-tuned", "",
          md_table(["model", "kind", "rows", "accuracy", "95% CI", "trainable params", "train s", "s / example"], body)]
    return {"json": write_json(out / f"{NAME}.json", table), "md": write_text(out / f"{NAME}.md", "\n".join(md) + "\n")}
