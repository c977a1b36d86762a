"""Training rows: read a prepared dataset dir or a raw JSON/JSONL/CSV file, split, fingerprint.

A prepared dir (output of `tuneserve data prepare`) holds `train/validation/test.jsonl` and
`dataset.json` with labels and class weights. A raw file of `{instruction, input, output}`
rows (or `{text, label}` rows for classification, `{prompt, chosen, rejected}` for a preference
objective) is split here: the last
`validation_fraction` of a seeded shuffle becomes validation. A directory of raw files
(`train.csv`, `test.csv`, ...) works too. Multi-turn chats are rows `{messages: [{role, content},
...]}` (roles system / user / assistant, at least one assistant turn; ShareGPT's
`{conversations: [{from, value}]}` is read too) and may be mixed with instruction rows.

    splits = load_splits(cfg.data, task="classification", seed=42)
    splits.train[0] -> {"text": "...", "label": "card_arrival"}
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.train.config import DataConfig

SPLITS = ("train", "validation", "test")
RAW_SUFFIXES = (".jsonl", ".json", ".csv")
LABEL_FIELDS = ("label", "category", "intent")


@dataclass
class Splits:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    source: str
    fingerprint: str
    labels: list[str] | None = None
    class_weights: dict[str, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of one JSON array, JSONL or CSV file."""
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}", "pass a JSON array, JSONL or CSV file") from None
    if not isinstance(rows, list):
        raise DataError(f"data file {path} must hold a JSON array of rows", "wrap the rows in [...] or use JSONL")
    return rows


def fingerprint_rows(*splits: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for rows in splits:
        for row in rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\x00split\x00")
    return digest.hexdigest()


def _find_split_file(directory: Path, split: str) -> Path | None:
    for suffix in RAW_SUFFIXES:
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _split_off(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(rows) * fraction)))
    held = set(order[-n_val:])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _read_source(cfg: DataConfig, seed: int) -> tuple[dict[str, list], dict[str, Any], str]:
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist",
                        "pass data.path=<prepared dir or JSON/JSONL/CSV file> (see `tuneserve data prepare`)")
    meta: dict[str, Any] = {}
    if path.is_dir():
        if (path / "dataset.json").is_file():
            meta = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
        found = {split: _find_split_file(path, split) for split in SPLITS}
        if found["train"] is None:
            raise DataError(f"data directory {path} has no train.jsonl/train.json/train.csv",
                            "prepare it with `tuneserve data prepare`, or pass a single data file")
        splits = {split: read_rows(p) if p else [] for split, p in found.items()}
    elif path.suffix in RAW_SUFFIXES:
        splits = {"train": read_rows(path), "validation": [], "test": []}
    else:
        raise DataError(f"unsupported data file {path}", f"use one of {', '.join(RAW_SUFFIXES)} or a prepared directory")
    if not splits["validation"]:
        splits["train"], splits["validation"] = _split_off(splits["train"], cfg.validation_fraction, seed)
    if cfg.max_rows:
        splits["train"] = splits["train"][: cfg.max_rows]
    if not splits["train"]:
        raise DataError(f"data at {path} has no training rows", "check the file, or lower data.validation_fraction")
    return splits, meta, str(path)


CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant",
              "human": "user", "gpt": "assistant"}  # the last two: ShareGPT's `from` names


def _chat_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    turns = row.get("messages") if "messages" in row else row.get("conversations")
    hint = "a chat row is {messages: [{role: system|user|assistant, content: str}, ...]} with an assistant turn"
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: messages must be a non-empty list", hint)
    messages = []
    for k, turn in enumerate(turns):
        role = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
        content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        if role not in CHAT_ROLES or not isinstance(content, str):
            raise DataError(f"{where}: turn {k} is not {{role, content}} with a known role (got {turn!r:.80})", hint)
        messages.append({"role": CHAT_ROLES[role], "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the chat has no assistant turn, so nothing to learn", hint)
    return {"messages": messages}


def _instruction_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, dict) and ("messages" in row or "conversations" in row):
            out.append(_chat_row(row, f"{where} row {i}"))
            continue
        if not isinstance(row, dict) or "instruction" not in row or "output" not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{where} row {i} is not an instruction row (has {keys})",
                            "instruction data needs fields instruction, input (optional), output "
                            "(or a multi-turn chat: messages)")
        out.append({"instruction": str(row["instruction"]), "input": str(row.get("input") or ""),
                    "output": str(row["output"])})
    return out


def _classification_rows(rows: list[dict[str, Any]], cfg: DataConfig, where: str) -> list[dict[str, Any]]:
    if not rows:
        return []
    text_key = cfg.text_field or "text"
    label_key = cfg.label_field or next((k for k in LABEL_FIELDS if k in rows[0]), LABEL_FIELDS[0])
    out = []
    for i, row in enumerate(rows):
        if text_key not in row or label_key not in row:
            raise DataError(f"{where} row {i} lacks {text_key!r} or {label_key!r} (has {sorted(row)})",
                            "set data.text_field / data.label_field to the right column names")
        kept = {"text": str(row[text_key]), "label": str(row[label_key])}
        if isinstance(row.get("slices"), dict):  # slice membership, for debias=adversarial
            kept["slices"] = row["slices"]
        out.append(kept)
    return out


def balanced_class_weights(labels: list[str], rows: list[dict[str, Any]]) -> dict[str, float]:
    """n / (k * count): rare classes weigh more; a label absent from train gets weight 1."""
    counts = Counter(row["label"] for row in rows)
    n, k = len(rows), len(labels)
    return {label: (n / (k * counts[label]) if counts[label] else 1.0) for label in labels}


def load_splits(cfg: DataConfig, task: str, seed: int = 42, objective: str = "sft") -> Splits:
    """The run's rows by split; a preference `objective` reads {prompt, chosen, rejected} rows
    (KTO also {prompt, completion, label}; see `training.train.preference.validate_rows`)."""
    raw, meta, source = _read_source(cfg, seed)
    if objective != "sft":
        from training.train.preference import validate_rows

        rows = {split: validate_rows(r, objective, f"{split} split") for split, r in raw.items()}
        labels, class_weights = None, None
    elif task == "classification":
        rows = {split: _classification_rows(r, cfg, f"{split} split") for split, r in raw.items()}
        labels = [str(x) for x in meta.get("labels") or sorted({r["label"] for r in rows["train"]})]
        unknown = sorted({r["label"] for split in rows.values() for r in split} - set(labels))
        if unknown:
            raise DataError(f"labels {unknown[:5]} appear in the data but not in the label list",
                            "re-prepare the dataset so every split uses the same labels")
        weights = meta.get("class_weights") or balanced_class_weights(labels, rows["train"])
        class_weights = {label: float(weights.get(label, 1.0)) for label in labels}
    else:
        rows = {split: _instruction_rows(r, f"{split} split") for split, r in raw.items()}
        labels, class_weights = None, None
    fingerprint = meta.get("fingerprint") or fingerprint_rows(rows["train"], rows["validation"], rows["test"])
    if cfg.max_rows:
        fingerprint = hashlib.sha256(f"{fingerprint}:{cfg.max_rows}".encode()).hexdigest()
    return Splits(train=rows["train"], validation=rows["validation"], test=rows["test"], source=source,
                  fingerprint=fingerprint, labels=labels, class_weights=class_weights,
                  info={"rows": {split: len(r) for split, r in rows.items()}})
