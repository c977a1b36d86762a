"""Evaluation per declared slice: the task's per-example metric per group, the worst-slice gap and flags.

Rows carry their slice membership in a `slices` field (`{"column:group": "a", "keywords:women": "yes"}`;
see `training.data.slices`). For each slice key, every group with at least `min_rows` rows gets the
mean of the task's per-example score (accuracy for classification, F1 for qa, ROUGE-L for
instruction). The **worst-slice gap** is the best group's mean minus the worst group's mean (in the
score's own units: 0.10 = 10 points of accuracy), with a stratified bootstrap interval
(`metrics.slice_gap_bootstrap`); the worst group's shortfall against the overall mean is reported
beside it. A slice is **flagged** when its gap exceeds `threshold`.

    report = slice_report(data.rows, task_result.per_sample, "classification", FairnessOptions(threshold=0.05))
    report["slices"][0]["gap"], report["flags"]
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from pydantic import Field

from training.artifact.config import StrictModel
from training.data.slices import MISSING, SLICES_FIELD, SliceMembership
from training.evaluation.metrics import slice_gap_bootstrap

PRIMARY_METRIC = {"classification": "accuracy", "qa": "f1", "instruction": "rougeL"}
GAP_DEFINITION = ("gap = best group's mean per-example score minus the worst group's (groups with >= min_rows "
                  "rows); CI: stratified bootstrap (rows resampled within each group); flagged when gap > threshold")


class FairnessOptions(StrictModel):
    """Slices in `tuneserve evaluate` (prepared datasets bring theirs; these add to them)."""

    threshold: float = Field(0.1, ge=0.0, description="flag a slice whose worst-slice gap exceeds this "
                             "(per-example score units: 0.1 = 10 points of accuracy)")
    min_rows: int = Field(10, ge=1, description="groups with fewer test rows are listed but left out of the gap")
    columns: list[str] = Field(default_factory=list, description="slice columns of a raw data file")
    keywords: dict[str, list[str]] = Field(default_factory=dict, description="keyword groups, matched on the text")

    def membership(self) -> SliceMembership | None:
        member = SliceMembership(self.columns, self.keywords)
        return member if member else None


def slice_report(rows: list[dict[str, Any]], per_sample: dict[str, list[float]], task: str,
                 options: FairnessOptions, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> dict[str, Any]:
    """Per-slice metric, gap with CI and flags; empty when the rows carry no slices or the task has no score."""
    metric = PRIMARY_METRIC.get(task)
    memberships = [row.get(SLICES_FIELD) or {} for row in rows]
    keys = sorted({k for m in memberships for k in m})
    if metric not in per_sample or not keys:
        return {}
    scores = np.asarray(per_sample[metric], dtype=float)
    report: dict[str, Any] = {"metric": metric, "overall": float(np.nanmean(scores)), "threshold": options.threshold,
                              "min_rows": options.min_rows, "definition": GAP_DEFINITION, "slices": [], "flags": []}
    for key in keys:
        groups = [str(m.get(key, MISSING)) for m in memberships]
        sizes = Counter(groups)
        entry: dict[str, Any] = {"slice": key, "groups": [
            {"group": g, "n": n, metric: float(np.nanmean(scores[[i for i, x in enumerate(groups) if x == g]]))}
            for g, n in sorted(sizes.items())]}
        kept = [i for i, g in enumerate(groups) if sizes[g] >= options.min_rows and scores[i] == scores[i]]
        if len({groups[i] for i in kept}) < 2:
            entry["note"] = f"fewer than two groups with >= {options.min_rows} rows: no gap"
            report["slices"].append(entry)
            continue
        boot = slice_gap_bootstrap(scores[kept], [groups[i] for i in kept], n_resamples, confidence, seed)
        entry.update(gap=boot["gap"], low=boot["low"], high=boot["high"], best=boot["best"], worst=boot["worst"],
                     worst_shortfall=report["overall"] - boot["groups"][boot["worst"]],
                     flagged=boot["gap"] > options.threshold, confidence=confidence)
        report["slices"].append(entry)
        if entry["flagged"]:
            report["flags"].append(f"{key}: {metric} gap {boot['gap']:.3f} (CI {boot['low']:.3f}-{boot['high']:.3f}) "
                                   f"between {boot['best']!r} and {boot['worst']!r} exceeds {options.threshold}")
    gaps = [s["gap"] for s in report["slices"] if "gap" in s]
    if gaps:
        report["max_gap"] = max(gaps)
    return report


def group_rows(report: dict[str, Any]) -> list[list[Any]]:
    """Table rows: slice, group, n, metric (for the md/html report)."""
    metric = report["metric"]
    return [[s["slice"], g["group"], g["n"], g[metric]] for s in report["slices"] for g in s["groups"]]


def gap_rows(report: dict[str, Any]) -> list[list[Any]]:
    """Table rows: slice, gap, CI low, CI high, best, worst, worst shortfall, flagged."""
    return [[s["slice"], s["gap"], s["low"], s["high"], s["best"], s["worst"], s["worst_shortfall"], s["flagged"]]
            for s in report["slices"] if "gap" in s]


GROUP_HEADERS = ["slice", "group", "n"]
GAP_HEADERS = ["slice", "gap (best - worst)", "CI low", "CI high", "best", "worst", "overall - worst", "flagged"]
