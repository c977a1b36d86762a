"""Splitting (seeded, stratified or grouped) and the cross-split leakage check and fix.

Split sizes come from the ratios by largest remainder, so each split is within one row of
its ratio. Stratified splits allocate every label the same way, with the column totals
fixed, so each label's share per split is within one row of the whole. Grouped splits keep
every value of `group_by` in one split (and, when the leakage check is on, also keep
duplicate clusters together). The leakage check clusters exact and near duplicates over all
splits; `fix` moves each leaking row into the split holding most of its cluster and moves a
duplicate-free row of the same label back, so split sizes and label shares do not change.

    splits, info = split_rows(rows, cfg.split, spec, stratify=True)
    report = find_leakage(splits, spec, threshold=0.85)
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from training.artifact.errors import DataError
from training.data.config import SPLIT_NAMES, SplitConfig
from training.data.dedup import duplicate_clusters, normalize_key
from training.data.tasks import Row, TaskSpec


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Integer parts of `total` proportional to `weights`, summing exactly to `total`."""
    wsum = sum(weights.values())
    ideal = {k: total * w / wsum if wsum else 0.0 for k, w in weights.items()}
    out = {k: int(v) for k, v in ideal.items()}
    order = sorted(weights, key=lambda k: (-(ideal[k] - out[k]), list(weights).index(k)))
    for k in order[: total - sum(out.values())]:
        out[k] += 1
    return out


def allocate(strata: dict[str, int], targets: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per-stratum split counts: each close to its ratio, column totals equal to `targets`."""
    total = sum(strata.values())
    alloc = {s: {k: int(c * targets[k] / total) for k in targets} for s, c in strata.items()}
    left_s = {s: c - sum(alloc[s].values()) for s, c in strata.items()}
    left_k = {k: targets[k] - sum(alloc[s][k] for s in strata) for k in targets}
    fracs = sorted(((c * targets[k] / total) % 1.0, s, k) for s, c in strata.items() for k in targets)
    for _, s, k in reversed(fracs):
        if left_s[s] > 0 and left_k[k] > 0:
            alloc[s][k] += 1
            left_s[s] -= 1
            left_k[k] -= 1
    for s in sorted(strata):
        for k in targets:
            give = min(left_s[s], left_k[k])
            alloc[s][k] += give
            left_s[s] -= give
            left_k[k] -= give
    return alloc


def _stratum(row: Row, spec: TaskSpec, stratify: bool) -> str:
    return str(row.data.get(spec.label_field)) if stratify and spec.label_field else "all"


def _split_stratified(rows: list[Row], targets: dict[str, int], strata_of: list[str],
                      rng: random.Random) -> dict[str, list[Row]]:
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata_of):
        by_stratum[s].append(i)
    alloc = allocate({s: len(v) for s, v in by_stratum.items()}, targets)
    splits: dict[str, list[Row]] = {k: [] for k in targets}
    for s in sorted(by_stratum):
        idx = by_stratum[s]
        rng.shuffle(idx)
        start = 0
        for k in targets:
            splits[k].extend(rows[i] for i in idx[start:start + alloc[s][k]])
            start += alloc[s][k]
    for part in splits.values():
        rng.shuffle(part)
    return splits


def _split_grouped(rows: list[Row], targets: dict[str, int], groups_of: list[Any],
                   rng: random.Random) -> dict[str, list[Row]]:
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, g in enumerate(groups_of):
        groups[g].append(i)
    keys = sorted(groups, key=str)
    rng.shuffle(keys)
    keys.sort(key=lambda g: -len(groups[g]))
    filled = {k: 0 for k in targets}
    splits: dict[str, list[Row]] = {k: [] for k in targets}
    for g in keys:
        dest = max(targets, key=lambda k: (targets[k] - filled[k]) / max(targets[k], 1) if targets[k] else -1e9)
        splits[dest].extend(rows[i] for i in groups[g])
        filled[dest] += len(groups[g])
    for part in splits.values():
        rng.shuffle(part)
    return splits


def split_rows(rows: list[Row], cfg: SplitConfig, spec: TaskSpec, stratify: bool,
               threshold: float | None = None) -> tuple[dict[str, list[Row]], dict[str, Any]]:
    active = {k: r for k, r in cfg.ratios.items() if r > 0}
    if len(rows) < len(active):
        raise DataError(f"only {len(rows)} rows left, too few for splits {sorted(active)}",
                        "add data, relax the cleaning filters, or set split.ratios")
    targets = largest_remainder(len(rows), active)
    rng = random.Random(cfg.seed)
    info: dict[str, Any] = {"ratios": active, "targets": targets, "seed": cfg.seed}
    if cfg.group_by:
        keys = [r.extra.get(cfg.group_by) for r in rows]
        missing = sum(k is None for k in keys)
        keys = [k if k is not None else f"__row{i}" for i, k in enumerate(keys)]
        if threshold is not None:
            keys = _merge_with_duplicates(keys, [spec.leak_text(r.data) for r in rows], threshold)
        splits = _split_grouped(rows, targets, keys, rng)
        info.update(mode="grouped", group_by=cfg.group_by, groups=len(set(keys)), rows_without_group=missing)
    else:
        strata = [_stratum(r, spec, stratify) for r in rows]
        splits = _split_stratified(rows, targets, strata, rng)
        info.update(mode="stratified" if stratify else "random", strata=len(set(strata)))
    info["rows"] = {k: len(v) for k, v in splits.items()}
    return splits, info


def _merge_with_duplicates(keys: list[Any], texts: list[str], threshold: float) -> list[Any]:
    clusters = duplicate_clusters(texts, threshold)
    root_of_cluster: dict[int, Any] = {}
    group_root: dict[Any, Any] = {}

    def root(g: Any) -> Any:
        while group_root.get(g, g) != g:
            g = group_root[g]
        return g
    for key, cluster in zip(keys, clusters):
        if cluster in root_of_cluster:
            a, b = root(root_of_cluster[cluster]), root(key)
            if a != b:
                group_root[b] = a
        else:
            root_of_cluster[cluster] = key
    return [root(k) for k in keys]


def _flatten(splits: dict[str, list[Row]]) -> list[tuple[str, int]]:
    return [(k, i) for k in splits for i, r in enumerate(splits[k]) if not r.augmented]


def find_leakage(splits: dict[str, list[Row]], spec: TaskSpec, threshold: float | None) -> dict[str, Any]:
    """Rows with an exact or near duplicate in another split (augmented rows are ignored)."""
    where = _flatten(splits)
    texts = [spec.leak_text(splits[k][i].data) for k, i in where]
    clusters = duplicate_clusters(texts, threshold)
    members: dict[int, list[int]] = defaultdict(list)
    for pos, c in enumerate(clusters):
        members[c].append(pos)
    keys = [normalize_key(t) for t in texts]
    leaking = {"exact": 0, "near": 0}
    per_split = {k: 0 for k in splits}
    examples: list[dict[str, str]] = []
    spanning = [m for m in members.values() if len({where[p][0] for p in m}) > 1]
    for m in spanning:
        for p in m:
            others = [q for q in m if where[q][0] != where[p][0]]
            kind = "exact" if any(keys[q] == keys[p] for q in others) else "near"
            leaking[kind] += 1
            per_split[where[p][0]] += 1
        if len(examples) < 5:
            examples.append({where[p][0]: texts[p][:80] for p in m})
    return {"clusters": len(spanning), "rows": leaking, "per_split": per_split, "examples": examples,
            "_where": where, "_clusters": clusters, "_spanning": spanning}


def fix_leakage(splits: dict[str, list[Row]], leak: dict[str, Any], spec: TaskSpec, stratify: bool,
                seed: int) -> dict[str, int]:
    """Move leaking rows to their cluster's majority split, swapping clean rows back."""
    where, clusters = leak["_where"], leak["_clusters"]
    size: dict[int, int] = defaultdict(int)
    for c in clusters:
        size[c] += 1
    rng = random.Random(seed)
    spare: dict[tuple[str, str], list[int]] = defaultdict(list)
    for pos, (k, i) in enumerate(where):
        if size[clusters[pos]] == 1:
            spare[(k, _stratum(splits[k][i], spec, stratify))].append(i)
    for pool in spare.values():
        rng.shuffle(pool)
    moves: list[tuple[str, int, str]] = []
    swapped = unbalanced = 0
    for m in leak["_spanning"]:
        counts: dict[str, int] = defaultdict(int)
        for p in m:
            counts[where[p][0]] += 1
        dest = max(counts, key=lambda k: (counts[k], -SPLIT_NAMES.index(k)))
        for p in m:
            src, i = where[p]
            if src == dest:
                continue
            moves.append((src, i, dest))
            pool = spare.get((dest, _stratum(splits[src][i], spec, stratify)))
            if pool:
                moves.append((dest, pool.pop(), src))
                swapped += 1
            else:
                unbalanced += 1
    leaving = {(src, i) for src, i, _ in moves}
    arriving: dict[str, list[Row]] = defaultdict(list)
    for src, i, dest in moves:
        arriving[dest].append(splits[src][i])
    for k in list(splits):
        splits[k] = [r for i, r in enumerate(splits[k]) if (k, i) not in leaving] + arriving[k]
    return {"moved": len(moves) - swapped, "swapped_back": swapped, "unbalanced_moves": unbalanced}


def public(leak: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in leak.items() if not k.startswith("_")}
