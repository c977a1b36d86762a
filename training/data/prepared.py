"""The prepared-dataset directory: atomic writing, fingerprints and `load_prepared` for the trainer.

Layout: `train.jsonl`, `validation.jsonl`, `test.jsonl`, `dataset.json` (task, fingerprint,
rows per split, labels, class_weights, fields, source, split_fingerprints), `data_report.json`,
`data_report.md` and PNG plots. The directory is built as `<dir>.tmp-*` and renamed into place.

    ds = load_prepared("data/prepared/banking77")
    ds.splits["train"][0]       # {"text": ..., "label": "card_arrival"}
    ds.task, ds.labels, ds.class_weights, ds.fingerprint
    fingerprint_rows(rows)      # sha256 over canonical JSON lines
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.data.config import SPLIT_NAMES

DATASET_FILE = "dataset.json"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def fingerprint_rows(rows: Iterable[dict[str, Any]]) -> str:
    """sha256 over the canonical JSON of each row, one per line, in order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(canonical_json(row).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def dataset_fingerprint(split_fingerprints: dict[str, str], config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"splits": split_fingerprints, "config": config}).encode()).hexdigest()


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_atomic_dir(dest: Path, fill: Callable[[Path], None], overwrite: bool) -> Path:
    """Build a directory with `fill(tmp)` then rename it to `dest` (replacing it if allowed)."""
    dest = dest.resolve()
    if dest.exists() and not overwrite:
        raise DataError(f"output directory {dest} already exists", "pass output.overwrite=true or choose output.dir")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{dest.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        fill(tmp)
        if dest.exists():
            old = dest.parent / f"{dest.name}.old-{secrets.token_hex(4)}"
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


@dataclass
class PreparedDataset:
    path: Path
    meta: dict[str, Any]
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def labels(self) -> list[str] | None:
        return self.meta.get("labels")

    @property
    def class_weights(self) -> dict[str, float] | None:
        return self.meta.get("class_weights")

    @property
    def rows(self) -> dict[str, int]:
        return dict(self.meta["rows"])


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})",
                                "re-run tuneserve data prepare; prepared files are not meant to be edited") from None
    return rows


def load_prepared(path: str | Path, verify: bool = True) -> PreparedDataset:
    """Read a prepared dataset directory; with `verify`, check row counts and split fingerprints."""
    path = Path(path)
    meta_file = path / DATASET_FILE
    if not meta_file.is_file():
        raise DataError(f"{path} is not a prepared dataset (no {DATASET_FILE})",
                        "run `tuneserve data prepare CONFIG.yaml` and pass its output directory")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_file} is not valid JSON: {exc.msg}", "re-run tuneserve data prepare") from None
    ds = PreparedDataset(path, meta)
    for split in SPLIT_NAMES:
        file = path / f"{split}.jsonl"
        if not file.is_file():
            raise DataError(f"{path} lacks {file.name}", "re-run tuneserve data prepare")
        ds.splits[split] = _read_jsonl(file)
        if not verify:
            continue
        expected = meta.get("rows", {}).get(split)
        if expected is not None and expected != len(ds.splits[split]):
            raise DataError(f"{file} has {len(ds.splits[split])} rows, dataset.json says {expected}",
                            "the directory was modified after preparation; re-run tuneserve data prepare")
        expected_fp = meta.get("split_fingerprints", {}).get(split)
        if expected_fp and expected_fp != fingerprint_rows(ds.splits[split]):
            raise DataError(f"{file} does not match its fingerprint in dataset.json",
                            "the directory was modified after preparation; re-run tuneserve data prepare")
    return ds
