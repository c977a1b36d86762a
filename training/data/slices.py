"""Slice membership of one row: which group of each declared slice (`bias.slices`, `bias.keywords`) it is in.

A prepared dataset whose config declares slices stores this on every row as a `slices` field,
`{"column:<name>": "<value>", "keywords:<group>": "yes" | "no"}`, and lists the keys in
`dataset.json` (`"slices": [...]`). Evaluation reports a metric per group of each key
(`training.evaluation.fairness`); `debias: adversarial` trains against one key
(`training.train.debias`). Datasets prepared without slices have no such field and load as before.

    member = SliceMembership(cfg.bias, spec)
    member.keys                                     # ["column:group", "keywords:women"]
    member.of(text, {"group": "a"})                 # {"column:group": "a", "keywords:women": "no"}
    resolve_slice_key("group", ["column:group"])    # "column:group"
"""

from __future__ import annotations

import re
from typing import Any

from training.artifact.errors import ConfigError
from training.data.config import BiasConfig

SLICES_FIELD = "slices"
MISSING = "(missing)"


def keyword_patterns(keywords: dict[str, list[str]]) -> dict[str, re.Pattern]:
    """One whole-word, case-insensitive pattern per keyword group (empty groups are left out)."""
    return {name: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
            for name, words in keywords.items() if words}


class SliceMembership:
    """Computes the `slices` field of a row from its text and its kept source columns."""

    def __init__(self, columns: list[str], keywords: dict[str, list[str]]) -> None:
        self.columns = list(columns)
        self.keywords = dict(keywords)
        self.patterns = keyword_patterns(keywords)

    @classmethod
    def from_bias(cls, cfg: BiasConfig) -> SliceMembership:
        return cls(cfg.slices, cfg.keywords)

    def keywords_only(self) -> SliceMembership:
        return SliceMembership([], self.keywords)

    @property
    def keys(self) -> list[str]:
        return [f"column:{c}" for c in self.columns] + [f"keywords:{k}" for k in self.patterns]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def of(self, text: str, extra: dict[str, Any]) -> dict[str, str]:
        out = {f"column:{c}": MISSING if extra.get(c) is None else str(extra.get(c)) for c in self.columns}
        out.update({f"keywords:{k}": "yes" if p.search(text) else "no" for k, p in self.patterns.items()})
        return out


def resolve_slice_key(name: str, keys: list[str]) -> str:
    """`group` -> `column:group` (or `keywords:group`); a full key is returned as it is."""
    if name in keys:
        return name
    found = [k for k in keys if k.split(":", 1)[-1] == name]
    if len(found) == 1:
        return found[0]
    if not keys:
        raise ConfigError(f"slice {name!r} is not in the data: the rows carry no slices",
                          "declare bias.slices (columns) or bias.keywords in the data config and re-run "
                          "`tuneserve data prepare`")
    raise ConfigError(f"slice {name!r} is {'ambiguous' if found else 'unknown'}", f"the data's slices: {', '.join(keys)}")
