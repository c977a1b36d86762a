"""Splitting: sizes, stratification, groups, seeds; cross-split leakage detection and fix; bias."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from training.data.bias import bias_stats, mitigate
from training.data.config import BiasConfig, SplitConfig
from training.data.split import (
    allocate,
    find_leakage,
    fix_leakage,
    largest_remainder,
    split_rows,
)
from training.data.tasks import TASKS, Row

SPEC = TASKS["classification"]


def labelled_rows(counts: dict[str, int], seed: int = 0) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for label, n in counts.items():
        for i in range(n):
            words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]) for _ in range(6))
            rows.append(Row({"text": f"{label} {i} {words} {rng.random():.6f}", "label": label}, f"f:{len(rows)}",
                            {"user": f"u{len(rows) % 17}"}))
    return rows


def test_largest_remainder_and_allocation_are_exact():
    assert largest_remainder(10, {"train": 0.7, "validation": 0.15, "test": 0.15}) == {"train": 7, "validation": 2, "test": 1}
    targets = largest_remainder(101, {"train": 0.7, "validation": 0.15, "test": 0.15})
    alloc = allocate({"a": 50, "b": 30, "c": 21}, targets)
    assert {k: sum(a[k] for a in alloc.values()) for k in targets} == targets
    assert all(sum(a.values()) == n for a, n in zip(alloc.values(), [50, 30, 21]))


def test_stratified_split_keeps_sizes_and_label_shares():
    rows = labelled_rows({"a": 500, "b": 230, "c": 61, "d": 9})
    splits, _ = split_rows(rows, SplitConfig(), SPEC, stratify=True)
    n = len(rows)
    for name, ratio in {"train": 0.7, "validation": 0.15, "test": 0.15}.items():
        assert abs(len(splits[name]) - n * ratio) <= 1
    whole = Counter(r.data["label"] for r in rows)
    for part in splits.values():
        counts = Counter(r.data["label"] for r in part)
        for label, c in whole.items():
            assert abs(counts[label] / len(part) - c / n) <= 0.01
    assert sorted(r.origin for p in splits.values() for r in p) == sorted(r.origin for r in rows)


def test_split_is_reproducible_and_seed_dependent():
    rows = labelled_rows({"a": 60, "b": 40})
    first, _ = split_rows(rows, SplitConfig(seed=3), SPEC, stratify=True)
    again, _ = split_rows(rows, SplitConfig(seed=3), SPEC, stratify=True)
    other, _ = split_rows(rows, SplitConfig(seed=4), SPEC, stratify=True)
    ids = lambda s: [r.origin for r in s["test"]]
    assert ids(first) == ids(again) and ids(first) != ids(other)


def test_grouped_split_keeps_each_group_in_one_split():
    rows = labelled_rows({"a": 120, "b": 80})
    splits, info = split_rows(rows, SplitConfig(group_by="user"), SPEC, stratify=False)
    owner = {}
    for name, part in splits.items():
        for r in part:
            assert owner.setdefault(r.extra["user"], name) == name
    assert info["mode"] == "grouped" and info["groups"] == 17
    assert abs(len(splits["train"]) / len(rows) - 0.7) < 0.1


def test_too_few_rows_is_a_clear_error():
    from training.artifact.errors import DataError

    with pytest.raises(DataError, match="too few"):
        split_rows(labelled_rows({"a": 2}), SplitConfig(), SPEC, stratify=True)


def test_leakage_is_found_and_fixed_without_changing_sizes_or_label_shares():
    rows = labelled_rows({"a": 150, "b": 100})
    for i in range(0, 60, 3):  # exact and near copies of existing rows
        src = rows[i * 4]
        text = src.data["text"] if i % 2 else src.data["text"] + "!"
        rows.append(Row({"text": text, "label": src.data["label"]}, f"dup:{i}"))
    splits, _ = split_rows(rows, SplitConfig(seed=1), SPEC, stratify=True)
    sizes = {k: len(v) for k, v in splits.items()}
    shares = {k: Counter(r.data["label"] for r in v) for k, v in splits.items()}
    leak = find_leakage(splits, SPEC, threshold=0.85)
    assert leak["rows"]["exact"] > 0 and leak["rows"]["near"] > 0
    info = fix_leakage(splits, leak, SPEC, stratify=True, seed=1)
    assert info["unbalanced_moves"] == 0 and info["swapped_back"] > 0
    after = find_leakage(splits, SPEC, threshold=0.85)
    assert after["rows"] == {"exact": 0, "near": 0}
    assert {k: len(v) for k, v in splits.items()} == sizes
    assert {k: Counter(r.data["label"] for r in v) for k, v in splits.items()} == shares
    texts = {k: {r.data["text"] for r in v} for k, v in splits.items()}
    assert not (texts["train"] & texts["test"]) and not (texts["validation"] & texts["test"])


def test_bias_stats_slices_and_mitigations():
    rows = labelled_rows({"a": 90, "b": 30})
    rows[0].data["text"] += " refund please"
    rows[95].data["text"] += " a REFUND"
    splits = {"train": rows[:100], "validation": rows[100:110], "test": rows[110:]}
    stats = bias_stats(splits, BiasConfig(slices=["user"], keywords={"refund": ["refund"]}), SPEC)
    assert stats["labels"] == {"a": 90, "b": 30} and stats["imbalance_ratio"] == 3.0
    assert stats["slices"]["keywords:refund"]["train"]["rows"] == 2
    assert sum(stats["slices"]["column:user"]["train"].values()) == 100
    train = splits["train"]
    over, _, info = mitigate(train, "oversample", SPEC, seed=0)
    assert Counter(r.data["label"] for r in over) == {"a": 90, "b": 90} and info["imbalance_after"] == 1.0
    under, _, _ = mitigate(train, "undersample", SPEC, seed=0)
    assert Counter(r.data["label"] for r in under) == {"a": 10, "b": 10}
    same, weights, _ = mitigate(train, "class_weights", SPEC, seed=0)
    assert same is train and weights == pytest.approx({"a": 100 / (2 * 90), "b": 100 / (2 * 10)})
