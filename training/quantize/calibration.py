"""Calibration and evaluation texts: from a prepared dataset directory, a .jsonl or a .txt file.

The fingerprint recorded in the manifest is the prepared dataset's own fingerprint
(`dataset.json`) or the sha256 of the file read.

    calib = load_calibration(Path("data/prepared"), split="train", limit=64)
    calib.texts, calib.fingerprint
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from training.artifact import sha256_file
from training.artifact.errors import DataError

# Default prompts for parity checks when no calibration data is given.
DEFAULT_PROMPTS = [
    "The quick brown fox", "Once upon a time", "To be, or not to be", "First Citizen:\nBefore we proceed",
    "The king said", "In the morning we", "What is the capital of", "Write a short poem about the sea.",
]
LABEL_FIELDS = ("label", "category")


@dataclass
class Calibration:
    texts: list[str]
    fingerprint: str
    source: str
    labels: list[str | None]

    def manifest_fields(self) -> dict:
        return {"fingerprint": self.fingerprint, "rows": len(self.texts), "source": self.source}


def row_text(row: dict) -> str:
    """The text a model sees for one prepared row, whatever the task."""
    if "instruction" in row:
        parts = [row.get("instruction", ""), row.get("input", ""), row.get("output", "")]
    elif "question" in row:
        parts = [row.get("context", ""), row.get("question", "")]
    else:
        parts = [row.get("text", "")]
    return "\n".join(str(p) for p in parts if p)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise DataError(f"{path}:{number} is not valid JSON", "fix the line or re-run `tuneserve data prepare`") from None
    return rows


def load_calibration(path: Path | None, split: str = "train", limit: int = 64) -> Calibration:
    """Read up to `limit` calibration texts; missing or empty data is a DataError."""
    if path is None:
        raise DataError("this scheme needs calibration data, and none was given",
                        "pass --calibration with a prepared dataset directory, a .jsonl or a .txt file")
    path = Path(path).expanduser()
    if path.is_dir():
        split_file = path / f"{split}.jsonl"
        if not split_file.is_file():
            raise DataError(f"calibration directory {path} has no {split}.jsonl",
                            "point --calibration at the output of `tuneserve data prepare`, or set calibration_split")
        info_file = path / "dataset.json"
        info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
        rows = _read_jsonl(split_file)
        fingerprint = info.get("fingerprint") or sha256_file(split_file)
    elif path.is_file():
        fingerprint = sha256_file(path)
        if path.suffix == ".jsonl":
            rows = _read_jsonl(path)
        else:
            rows = [{"text": block.strip()} for block in path.read_text(encoding="utf-8").split("\n\n") if block.strip()]
    else:
        raise DataError(f"calibration data {path} does not exist", "check the path passed to --calibration")
    rows = [row for row in rows if isinstance(row, dict) and row_text(row).strip()][:limit]
    if not rows:
        raise DataError(f"calibration data {path} holds no usable text rows", "give a non-empty dataset")
    labels = [next((str(row[f]) for f in LABEL_FIELDS if f in row), None) for row in rows]
    return Calibration([row_text(row) for row in rows], fingerprint, str(path), labels)
