"""Production feedback → data for the next training round (`tuneserve data import-feedback`).

    report = import_feedback("artifacts/.tuneserve-feedback.db", Path("data/feedback"), model="clf-v2")
    # then: tuneserve data prepare data/feedback/data_classification.yaml

Reads the serving side's feedback store through its one format definition
(`training.artifact.feedback`; training never imports `service`) and writes, in `out`:
- `classification.jsonl` `{text, label}`: label feedback (the corrected or confirmed class of a served input);
- `instruction.jsonl` `{instruction, input, output}`: correct answers, and served outputs rated at least
  `keep_rating` (complete ones only);
- `preference.jsonl` `{prompt, chosen, rejected}`: a correct answer that differs from the served output
  (chosen: the answer, rejected: what was served; complete served outputs only) — the DPO format;
- `data_<task>.yaml` for each non-empty task file: a `tuneserve data prepare` config reading it
  (cleaning, dedup and splits as for any source);
- `import_report.json`: counts, and the rows skipped with why (no stored input: the server ran with
  `feedback.store_inputs=false`; a served output cut at `feedback.max_prediction_chars`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from training.artifact.errors import DataError
from training.artifact.feedback import FeedbackRow, read_feedback
from training.data.prepared import write_jsonl

FILES = {"classification": "classification.jsonl", "instruction": "instruction.jsonl", "preference": "preference.jsonl"}


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def rows_of(row: FeedbackRow, keep_rating: int | None) -> tuple[dict[str, dict], str | None]:
    """(task -> training row) made from one feedback, or the reason it gives none."""
    if not row.input:
        return {}, "no stored input"
    if row.kind == "label":
        return {"classification": {"text": row.input, "label": row.label}}, None
    if row.kind == "correct_answer":
        made = {"instruction": {"instruction": row.input, "input": "", "output": row.correct_answer}}
        if row.prediction is not None and not _same(row.prediction, row.correct_answer):
            if row.truncated:
                return made, None  # the served text is incomplete: no honest rejected side
            made["preference"] = {"prompt": row.input, "chosen": row.correct_answer, "rejected": row.prediction}
        return made, None
    if row.kind == "rating" and keep_rating is not None and row.task == "generation" and row.rating >= keep_rating:
        if row.truncated or not row.prediction:
            return {}, "rated output truncated"
        return {"instruction": {"instruction": row.input, "input": "", "output": row.prediction}}, None
    return {}, "rating (no training row)"


def import_feedback(store: str | Path, out: Path, model: str | None = None, since: float | None = None,
                    keep_rating: int | None = 5, overwrite: bool = False) -> dict[str, Any]:
    """Write the training rows of every feedback in `store` (of `model`, since a unix time) into `out`;
    returns the report (also written as `out/import_report.json`)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} exists and is not empty", "choose another --out, or pass --overwrite")
    tasks: dict[str, list[dict]] = {name: [] for name in FILES}
    skipped: Counter = Counter()
    models: Counter = Counter()
    total = 0
    for row in read_feedback(store, model, since):
        total += 1
        made, why = rows_of(row, keep_rating)
        if why:
            skipped[why] += 1
        for task, data in made.items():
            tasks[task].append(data)
            models[row.model] += 1
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for task, rows in tasks.items():
        path = out / FILES[task]
        path.unlink(missing_ok=True)
        if rows:
            write_jsonl(path, rows)
            written[task] = len(rows)
            if task != "preference":  # `data prepare` has no preference task; DPO training reads the file
                _write_prepare_config(out, task)
    report = {"store": str(store), "model": model, "since": since, "feedback": total, "rows": written,
              "skipped": dict(skipped), "models": dict(models)}
    (out / "import_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def _write_prepare_config(out: Path, task: str) -> None:
    config = {"name": f"feedback_{task}", "task": task,
              "sources": [{"path": str((out / FILES[task]).resolve()), "format": "jsonl"}],
              "output": {"dir": str((out / "prepared" / task).resolve()), "overwrite": True}}
    if task == "classification":
        config["split"] = {"stratify": False}  # feedback rarely covers every class twice
    text = f"# made by tuneserve data import-feedback\n#   tuneserve data prepare {out / f'data_{task}.yaml'}\n"
    (out / f"data_{task}.yaml").write_text(text + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
