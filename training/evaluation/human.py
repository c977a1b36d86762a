"""Blinded side-by-side human evaluation: build the rater sheet and keep the key apart.

`export_sheet` writes `sheet.csv`, `sheet.jsonl` and a self-contained `sheet.html` (a rater
opens it in a browser, fills preference and 1–5 scores, and downloads `ratings-<rater>.csv`).
Responses appear as A, B, C… in an order shuffled per row (seeded); `key.json`, written
outside the sheet directory (default `<out>.key/key.json`), maps each row's positions back
to model names. `import_ratings` (in `human_import`) un-blinds and analyses the ratings.

    items = load_prompts(Path("prompts.jsonl"), n=50)
    answers = collect_responses(items, ["a=artifacts/a", "b=http://localhost:8000#b"], [])
    export_sheet(items, answers, Path("human-eval"), ["helpfulness", "correctness"])
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError, DataError
from training.evaluation.human_format import KEY_SCHEMA, positions, rating_columns, read_records
from training.evaluation.human_sheet import render_sheet_html
from training.evaluation.render import write_json, write_jsonl, write_text


def load_prompts(path: Path, n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Rows with `prompt`, or `instruction` (+ `input`); an `id` column is kept, else the row number is used."""
    items = []
    for i, rec in enumerate(read_records(path)):
        instruction = rec.get("prompt") or rec.get("instruction")
        if not instruction:
            raise DataError(f"{path} row {i + 1} has no 'prompt' or 'instruction' field", "add one of these fields")
        items.append({"id": str(rec.get("id", i)), "instruction": str(instruction), "input": str(rec.get("input") or "")})
    if not items:
        raise DataError(f"{path} holds no prompts", "give a JSONL/JSON/CSV file with a prompt column")
    if n is not None and n < len(items):
        items = random.Random(seed).sample(items, n)
    return items


def _named(spec: str, what: str) -> tuple[str, str]:
    name, sep, ref = spec.partition("=")
    if not sep or not name or not ref:
        raise ConfigError(f"{what} {spec!r} is not NAME=VALUE", f"write e.g. --{what} base=artifacts/base")
    return name, ref


def _from_file(items: list[dict[str, str]], path: Path) -> list[str]:
    found = {str(rec.get("prompt_id", rec.get("id"))): str(rec.get("response", "")) for rec in read_records(path)}
    missing = [it["id"] for it in items if it["id"] not in found]
    if missing:
        raise DataError(f"{path} has no response for prompt ids {missing[:5]}{'…' if len(missing) > 5 else ''}",
                        "give one {prompt_id, response} row per prompt")
    return [found[it["id"]] for it in items]


def _from_model(items: list[dict[str, str]], ref: str, max_new_tokens: int, api_key: str | None) -> list[str]:
    from training.evaluation.predictor import open_predictor
    from training.evaluation.tasks import RunSettings, map_batches

    predictor = open_predictor(ref, "instruction", api_key=api_key)
    try:
        prompts = [predictor.render_instruction(it["instruction"], it["input"]) for it in items]
        gens = map_batches(prompts, lambda chunk: predictor.generate(list(chunk), max_new_tokens), RunSettings(),
                       f"answering with {ref}")
    finally:
        predictor.close()
    return [g.text.strip() for g in gens]


def collect_responses(items: list[dict[str, str]], models: list[str], response_files: list[str],
                      max_new_tokens: int = 128, api_key: str | None = None) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = {}
    for spec in response_files:
        name, ref = _named(spec, "responses")
        answers[name] = _from_file(items, Path(ref))
    for spec in models:
        name, ref = _named(spec, "model")
        if name in answers:
            raise ConfigError(f"model name {name!r} is given twice", "give each model a unique NAME")
        answers[name] = _from_model(items, ref, max_new_tokens, api_key)
    return answers


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def export_sheet(items: list[dict[str, str]], answers: dict[str, list[str]], out: Path, criteria: list[str],
                 key_path: Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Write the blinded sheet (csv, jsonl, html) into `out` and the key file apart from it."""
    models = list(answers)
    if len(models) < 2:
        raise ConfigError(f"human evaluation needs 2+ models, got {models}", "pass --model/--responses at least twice")
    if len(models) > 26:
        raise ConfigError("at most 26 models fit one sheet (positions A-Z)", "split the comparison")
    if not criteria or any(not c.isidentifier() for c in criteria):
        raise ConfigError(f"criteria {criteria} must be simple names", "use e.g. helpfulness,correctness")
    out = Path(out)
    key_path = Path(key_path) if key_path else Path(f"{out}.key") / "key.json"
    if key_path.resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"the key {key_path} would sit inside the rater sheet directory {out}",
                          "keep the key apart: choose --key outside --out")
    rng = random.Random(seed)
    letters = positions(len(models))
    sheet_id = uuid.uuid4().hex[:12]
    rows, key_rows = [], {}
    for i, item in enumerate(items):
        order = models[:]
        rng.shuffle(order)
        row_id = f"r{i + 1:04d}"
        prompt = item["instruction"] + (f"\n\n{item['input']}" if item["input"] else "")
        rows.append({"sheet_id": sheet_id, "row_id": row_id, "prompt": prompt,
                     **{f"response_{p}": answers[m][i] for p, m in zip(letters, order)}})
        key_rows[row_id] = {"prompt_id": item["id"], "positions": dict(zip(letters, order))}
    out.mkdir(parents=True, exist_ok=True)
    columns = ["sheet_id", "row_id", "prompt", *[f"response_{p}" for p in letters]]
    blanks = [c for c in rating_columns(len(models), criteria) if c != "row_id"]
    paths = {"csv": write_text(out / "sheet.csv", _csv_text(columns + blanks, rows)),
             "jsonl": write_jsonl(out / "sheet.jsonl", rows),
             "html": write_text(out / "sheet.html", render_sheet_html(sheet_id, rows, letters, criteria))}
    key_path.parent.mkdir(parents=True, exist_ok=True)
    paths["key"] = write_json(key_path, {
        "schema": KEY_SCHEMA, "sheet_id": sheet_id, "models": models, "criteria": criteria, "positions": letters,
        "rows": key_rows, "seed": seed, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sheet_sha256": hashlib.sha256(paths["jsonl"].read_bytes()).hexdigest()})
    return paths
