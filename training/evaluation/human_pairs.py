"""Human-eval ratings as preference pairs: `tuneserve human-eval import ... --pairs pairs.jsonl --sheet DIR`.

A filled sheet says, per row, which response a rater preferred. Un-blinded with the key, each row
whose raters' majority preferred one response becomes {prompt, chosen, rejected} pairs: the
preferred response against every other response of the row. Ties and rows where raters split
evenly give no pair. The rows are ready for `tuneserve data prepare` task=preference (extra
columns `row_id`, `chosen_model`, `rejected_model`, `votes` say where each pair came from).

    pairs = ratings_to_pairs(read_key(key_path), read_sheet(sheet_dir), ratings)   # ratings from unblind()
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.evaluation.human_import import TIE


def read_sheet(path: Path) -> dict[str, dict[str, Any]]:
    """The exported sheet's rows by row_id (`sheet.jsonl`, given as the file or its directory)."""
    path = Path(path)
    file = path / "sheet.jsonl" if path.is_dir() else path
    try:
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the sheet {file} ({exc})", "pass the directory written by human-eval export") from None
    return {str(r["row_id"]): r for r in rows if isinstance(r, dict) and "row_id" in r}


def ratings_to_pairs(key: dict[str, Any], sheet: dict[str, dict[str, Any]],
                     ratings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Majority-preferred response vs each other response of the row, per rated row."""
    if sheet and next(iter(sheet.values())).get("sheet_id") not in (None, key["sheet_id"]):
        raise DataError("the sheet and the key belong to different exports", "pass the sheet written with this key")
    votes: dict[str, Counter] = defaultdict(Counter)
    for rating in ratings:
        if rating["winner"] not in (None, TIE):
            votes[rating["row_id"]][rating["winner"]] += 1
    pairs = []
    for row_id, counts in sorted(votes.items()):
        ranked = counts.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            continue  # raters split evenly: no preference to learn
        if row_id not in sheet:
            raise DataError(f"row {row_id} is rated but not in the sheet", "pass the sheet written with this key")
        winner = ranked[0][0]
        letters = {model: letter for letter, model in key["rows"][row_id]["positions"].items()}
        row = sheet[row_id]
        chosen = str(row[f"response_{letters[winner]}"])
        for model, letter in sorted(letters.items()):
            rejected = str(row[f"response_{letter}"])
            if model != winner and rejected.strip() != chosen.strip():
                pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "row_id": row_id,
                              "chosen_model": winner, "rejected_model": model, "votes": sum(counts.values())})
    return pairs


def write_pairs(pairs: list[dict[str, Any]], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return path
