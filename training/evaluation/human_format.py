"""The shape of a blinded human-evaluation sheet, shared by export (`human`), the rating page
(`human_sheet`) and import (`human_import`): position letters, the columns a filled sheet
carries, the key's schema tag, and reading prompt/response/rating files.

    rating_columns(2, ["helpfulness"])   # ["row_id", "rater", "preference", "score_A_helpfulness", ...]
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.data.readers import BadRecord, infer_format, read_source

KEY_SCHEMA = "tuneserve.human-eval-key/1"


def positions(k: int) -> list[str]:
    return list(string.ascii_uppercase[:k])


def rating_columns(k: int, criteria: list[str]) -> list[str]:
    """The columns a filled sheet carries (the HTML page downloads exactly these)."""
    return ["row_id", "rater", "preference", *[f"score_{p}_{c}" for p in positions(k) for c in criteria], "comment"]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The well-formed records of a JSONL/JSON/CSV file (malformed ones are skipped)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist", "check the path")
    return [rec for _, rec in read_source(path, infer_format(path)) if not isinstance(rec, BadRecord)]
