"""`prepare(cfg)`: collect → annotations → clean → split → leakage → bias → augment → write.

Every step records rows in/out; every cleaning rule its counts. The result is a prepared
dataset directory (see `training.data.prepared`) written atomically, with its report.

    from training.data import DataConfig, prepare
    result = prepare(load_config(DataConfig, "training/configs/data_banking77.yaml"))
    result.path, result.fingerprint, result.report["rows"]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.data.bias import bias_stats, label_counts, mitigate
from training.data.cleaning import run_cleaning
from training.data.collect import collect
from training.data.config import DataConfig
from training.data.prepared import (
    DATASET_FILE,
    canonical_json,
    dataset_fingerprint,
    fingerprint_rows,
    write_atomic_dir,
    write_jsonl,
)
from training.data.report import write_report
from training.data.slices import SLICES_FIELD, SliceMembership
from training.data.split import find_leakage, fix_leakage, public, split_rows
from training.data.tasks import Row, get_task


@dataclass
class PrepareResult:
    path: Path
    fingerprint: str
    report: dict[str, Any]
    meta: dict[str, Any]


class _Steps:
    def __init__(self, progress: Any = None) -> None:
        self.items: list[dict[str, Any]] = []
        self.progress = progress

    def add(self, step: str, rows_in: int, rows_out: int) -> None:
        self.items.append({"step": step, "rows_in": rows_in, "rows_out": rows_out})
        if self.progress:
            self.progress(step, rows_out)


def _leakage(splits: dict[str, list[Row]], cfg: DataConfig, spec: Any, stratify: bool) -> dict[str, Any] | None:
    if cfg.split.leakage == "off":
        return None
    before = find_leakage(splits, spec, cfg.split.near_dup_threshold)
    info: dict[str, Any] = {"mode": cfg.split.leakage, "threshold": cfg.split.near_dup_threshold, "before": public(before)}
    leaking = sum(before["rows"].values())
    if leaking and cfg.split.leakage == "fail":
        raise DataError(f"{leaking} rows have an exact or near duplicate in another split "
                        f"(e.g. {before['examples'][:1]})", "set split.leakage=fix, or enable cleaning.near_dedup")
    if leaking:
        info["fix"] = fix_leakage(splits, before, spec, stratify, cfg.split.seed)
        info["after"] = public(find_leakage(splits, spec, cfg.split.near_dup_threshold))
    return info


def with_slices(row: Row, member: SliceMembership, spec: Any) -> dict[str, Any]:
    """The row as written; with declared slices, its membership in a `slices` field."""
    out = row.output()
    if member:
        out[SLICES_FIELD] = member.of(spec.text(row.data), row.extra)
    return out


def prepare(cfg: DataConfig, progress: Any = None) -> PrepareResult:
    """Run the whole preparation; `progress(step, rows)` is called after each step."""
    from training.data.annotate import apply_annotations

    start = time.perf_counter()
    if Path(cfg.output.dir).exists() and not cfg.output.overwrite:
        raise DataError(f"output directory {cfg.output.dir} already exists",
                        "pass output.overwrite=true or choose another output.dir")
    spec = get_task(cfg.task)
    steps = _Steps(progress)
    rows, bad = collect(cfg, allow_unlabeled=bool(cfg.annotations.files))
    steps.add("collect", len(rows) + bad.count, len(rows))
    report: dict[str, Any] = {"name": cfg.name, "task": cfg.task, "bad_rows": bad.summary()}
    if cfg.annotations.files:
        n = len(rows)
        rows, report["agreement"] = apply_annotations(rows, cfg.annotations, spec)
        steps.add("annotations", n, len(rows))
    n = len(rows)
    rows, rules = run_cleaning(rows, cfg.cleaning, spec, on_rule=lambda name, k: steps.progress and steps.progress(name, k))
    steps.add("clean", n, len(rows))
    report["rules"] = {name: r.as_dict() for name, r in rules.items()}
    if not rows:
        worst = max(rules.items(), key=lambda kv: kv[1].dropped)[0] if rules else "?"
        raise DataError(f"all {n} rows were dropped by cleaning (most by rule {worst!r}: "
                        f"{report['rules'].get(worst)})", f"relax cleaning.{worst} or check the columns mapping")
    stratify = cfg.stratify
    threshold = cfg.split.near_dup_threshold if cfg.split.leakage != "off" else None
    splits, report["split"] = split_rows(rows, cfg.split, spec, stratify, threshold)
    steps.add("split", len(rows), sum(len(v) for v in splits.values()))
    report["leakage"] = _leakage(splits, cfg, spec, stratify)
    report["bias"] = bias_stats(splits, cfg.bias, spec)
    class_weights = None
    if spec.label_field:
        n = len(splits["train"])
        splits["train"], class_weights, report["mitigation"] = mitigate(splits["train"], cfg.bias.mitigation, spec,
                                                                        cfg.split.seed)
        steps.add(f"mitigation:{cfg.bias.mitigation}", n, len(splits["train"]))
    if cfg.augmentation.enabled:
        from training.data.augment import augment_rows

        n = len(splits["train"])
        added, report["augmentation"] = augment_rows(splits["train"], cfg.augmentation, spec)
        splits["train"] = splits["train"] + added
        steps.add("augment", n, len(splits["train"]))
    member = SliceMembership.from_bias(cfg.bias)
    out_rows = {k: [with_slices(r, member, spec) for r in v] for k, v in splits.items()}
    split_fps = {k: fingerprint_rows(v) for k, v in out_rows.items()}
    config_dump = cfg.model_dump(mode="json", exclude={"output"})
    fingerprint = dataset_fingerprint(split_fps, config_dump)
    labels = sorted(label_counts(rows, spec)) if spec.label_field else None
    meta = {"task": cfg.task, "fingerprint": fingerprint, "rows": {k: len(v) for k, v in out_rows.items()},
            "labels": labels, "class_weights": class_weights,
            "fields": {f.name: f.kind for f in spec.fields}, "source": [s.path for s in cfg.sources],
            "name": cfg.name, "split_fingerprints": split_fps, "augmented_rows": sum(r.augmented for r in splits["train"]),
            "config_sha256": fingerprint_rows([config_dump])}
    if member:
        meta["slices"] = member.keys
    report.update(fingerprint=fingerprint, rows=meta["rows"], steps=steps.items, config=config_dump,
                  seconds=round(time.perf_counter() - start, 2))

    def fill(tmp: Path) -> None:
        for k, v in out_rows.items():
            write_jsonl(tmp / f"{k}.jsonl", v)
        (tmp / DATASET_FILE).write_text(canonical_json(meta), encoding="utf-8")
        write_report(tmp, report, splits, spec, cfg.output.plots)
    path = write_atomic_dir(Path(cfg.output.dir), fill, cfg.output.overwrite)
    report["seconds"] = round(time.perf_counter() - start, 2)
    return PrepareResult(path, fingerprint, report, meta)
