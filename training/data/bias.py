"""Bias checks (label distribution, slices, imbalance) and mitigation for the train split.

Slices are declared source columns (`bias.slices`, kept beside the task fields) or keyword
lists (`bias.keywords: {name: [words]}`, matched as whole words, case-insensitive).
Mitigation is a registry: `oversample` / `undersample` rebalance the train split (seeded),
`class_weights` leaves rows alone and returns weights `n / (k * count)` for the trainer.

    stats = bias_stats(splits, cfg.bias, spec)
    splits["train"], weights, info = mitigate(splits["train"], "class_weights", spec, seed=1)
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from training.data.config import BiasConfig
from training.data.registry import registrar
from training.data.slices import keyword_patterns
from training.data.tasks import Row, TaskSpec


def label_counts(rows: list[Row], spec: TaskSpec) -> dict[str, int]:
    if not spec.label_field:
        return {}
    counts = Counter(str(r.data.get(spec.label_field)) for r in rows)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def imbalance_ratio(counts: dict[str, int]) -> float | None:
    values = [v for v in counts.values() if v > 0]
    return round(max(values) / min(values), 3) if values else None


def slice_stats(splits: dict[str, list[Row]], cfg: BiasConfig, spec: TaskSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in cfg.slices:
        per_split = {k: dict(Counter(str(r.extra.get(column)) for r in rows)) for k, rows in splits.items()}
        out[f"column:{column}"] = per_split
    for name, pattern in keyword_patterns(cfg.keywords).items():
        per_split: dict[str, Any] = {}
        for k, rows in splits.items():
            hits = [r for r in rows if pattern.search(spec.text(r.data))]
            entry: dict[str, Any] = {"rows": len(hits), "share": round(len(hits) / len(rows), 4) if rows else 0.0}
            if spec.label_field and hits:
                entry["labels"] = label_counts(hits, spec)
            per_split[k] = entry
        out[f"keywords:{name}"] = per_split
    return out


def bias_stats(splits: dict[str, list[Row]], cfg: BiasConfig, spec: TaskSpec) -> dict[str, Any]:
    everything = [r for rows in splits.values() for r in rows if not r.augmented]
    overall = label_counts(everything, spec)
    stats: dict[str, Any] = {"slices": slice_stats(splits, cfg, spec)}
    if spec.label_field:
        total = max(len(everything), 1)
        per_split = {k: label_counts(v, spec) for k, v in splits.items()}
        drift = 0.0
        for counts in per_split.values():
            n = max(sum(counts.values()), 1)
            for label, c in overall.items():
                drift = max(drift, abs(counts.get(label, 0) / n - c / total))
        stats.update(labels=overall, labels_per_split=per_split, num_labels=len(overall),
                     imbalance_ratio=imbalance_ratio(overall), max_label_share_gap_pts=round(100 * drift, 3))
    return stats


Mitigation = Callable[[list[Row], TaskSpec, random.Random], tuple[list[Row], dict[str, float] | None]]
MITIGATIONS: dict[str, Mitigation] = {}
mitigation = registrar(MITIGATIONS)


def _by_label(rows: list[Row], spec: TaskSpec) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[str(r.data.get(spec.label_field))].append(r)
    return dict(sorted(groups.items()))


@mitigation("none")
def _none(rows: list[Row], spec: TaskSpec, rng: random.Random) -> tuple[list[Row], None]:
    return rows, None


@mitigation("oversample")
def _oversample(rows: list[Row], spec: TaskSpec, rng: random.Random) -> tuple[list[Row], None]:
    groups = _by_label(rows, spec)
    top = max(len(g) for g in groups.values())
    out = list(rows)
    for group in groups.values():
        out.extend(Row(dict(r.data), r.origin, dict(r.extra), r.augmented) for r in rng.choices(group, k=top - len(group)))
    rng.shuffle(out)
    return out, None


@mitigation("undersample")
def _undersample(rows: list[Row], spec: TaskSpec, rng: random.Random) -> tuple[list[Row], None]:
    groups = _by_label(rows, spec)
    low = min(len(g) for g in groups.values())
    out = [r for group in groups.values() for r in rng.sample(group, low)]
    rng.shuffle(out)
    return out, None


@mitigation("class_weights")
def _class_weights(rows: list[Row], spec: TaskSpec, rng: random.Random) -> tuple[list[Row], dict[str, float]]:
    counts = label_counts(rows, spec)
    n, k = sum(counts.values()), len(counts)
    return rows, {label: round(n / (k * c), 6) for label, c in sorted(counts.items())}


def mitigate(train: list[Row], method: str, spec: TaskSpec, seed: int) -> tuple[list[Row], dict[str, float] | None,
                                                                             dict[str, Any]]:
    before = label_counts(train, spec)
    rows, weights = MITIGATIONS[method](train, spec, random.Random(seed))
    after = label_counts(rows, spec)
    info = {"method": method, "train_rows_before": len(train), "train_rows_after": len(rows),
            "imbalance_before": imbalance_ratio(before), "imbalance_after": imbalance_ratio(after)}
    return rows, weights, info
