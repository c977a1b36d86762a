"""Evaluation rows from a prepared dataset directory or a raw JSONL/JSON/CSV file.

A prepared directory (output of `tuneserve data prepare`) brings its task and label list in
`dataset.json`; the `split` file (`test.jsonl` by default) is read. A raw file needs `task`,
and `columns` maps task fields to source columns (`{"label": "category"}` for banking77's
CSV). `limit` draws a seeded random sample, so a subset covers all classes of a sorted file.

    data = load_eval_data("../shared/data/squad_v1.1_dev/squad_v1.1_dev_subset2k.jsonl", task="qa", limit=200)
    data.rows[0]    # {"context", "question", "answers": [...]}

Rows may carry a `slices` field (`{"column:group": "a", "keywords:women": "yes"}`): prepared
datasets with declared slices store it; `slices=SliceMembership(columns, keywords)` adds it here.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError, DataError
from training.data.slices import SLICES_FIELD, SliceMembership

DATASET_META = "dataset.json"


@dataclass
class EvalData:
    task: str
    rows: list[dict[str, Any]]
    source: str
    labels: list[str] | None = None
    fingerprint: str = ""
    skipped: int = 0

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "task": self.task, "rows": len(self.rows), "fingerprint": self.fingerprint,
                "skipped_rows": self.skipped, "labels": len(self.labels) if self.labels else None}


def fingerprint_rows(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def _read_prepared(path: Path, split: str) -> tuple[str, list[dict[str, Any]], list[str] | None]:
    try:
        meta = json.loads((path / DATASET_META).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path / DATASET_META} is not valid JSON ({exc})", "re-run tuneserve data prepare") from None
    split_file = path / f"{split}.jsonl"
    if not split_file.is_file():
        raise DataError(f"prepared dataset {path} has no split {split!r}",
                        f"choose split= one of {sorted(p.stem for p in path.glob('*.jsonl'))}")
    rows = [json.loads(line) for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return meta["task"], rows, meta.get("labels")


def _read_raw(path: Path, task: str, columns: dict[str, str],
              member: SliceMembership | None = None) -> tuple[list[dict[str, Any]], int]:
    from training.data.readers import BadRecord, infer_format, read_source
    from training.data.tasks import FieldProblem, get_task

    spec = get_task(task)
    rows, skipped = [], 0
    for _, record in read_source(path, infer_format(path)):
        if isinstance(record, BadRecord):
            skipped += 1
            continue
        mapped = {**record, **{name: record.get(col) for name, col in columns.items()}}
        try:
            row = spec.coerce(mapped)
        except FieldProblem:
            skipped += 1
            continue
        if member:
            row[SLICES_FIELD] = member.of(spec.text(row), record)
        rows.append(row)
    return rows, skipped


def _add_keyword_slices(rows: list[dict[str, Any]], task: str, member: SliceMembership) -> None:
    """Keyword groups of the eval config on rows that came with their own (prepared) slices."""
    from training.data.tasks import get_task

    spec, keywords = get_task(task), member.keywords_only()
    for row in rows:
        text = spec.text({k: v for k, v in row.items() if k != SLICES_FIELD})
        row[SLICES_FIELD] = {**row.get(SLICES_FIELD, {}), **keywords.of(text, {})}


def load_eval_data(source: str | Path, task: str | None = None, split: str = "test",
                   columns: dict[str, str] | None = None, limit: int | None = None, seed: int = 0,
                   slices: SliceMembership | None = None) -> EvalData:
    """Rows to evaluate; `slices` (eval-time slice columns of a raw file, keyword groups of any
    data) adds to the `slices` field that prepared rows may already carry."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"evaluation data {path} does not exist", "pass --data PREPARED_DIR or a JSONL/JSON/CSV file")
    labels = None
    skipped = 0
    if path.is_dir() and (path / DATASET_META).is_file():
        found, rows, labels = _read_prepared(path, split)
        if task and task != found:
            raise ConfigError(f"prepared dataset {path} is for task {found!r}, not {task!r}", "drop task= or fix it")
        task = found
        if slices and slices.patterns:
            _add_keyword_slices(rows, task, slices)
    elif task is None:
        raise ConfigError(f"cannot tell the task of {path}", "pass --task classification|instruction|qa|text")
    else:
        rows, skipped = _read_raw(path, task, columns or {}, slices)
    if not rows:
        raise DataError(f"no usable {task} rows in {path} ({skipped} skipped)",
                        "check the task and the column mapping (columns.label=category)")
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    if task == "classification" and not labels:
        labels = sorted({row["label"] for row in rows})
    return EvalData(task=task, rows=rows, source=str(path), labels=labels, fingerprint=fingerprint_rows(rows),
                    skipped=skipped)
