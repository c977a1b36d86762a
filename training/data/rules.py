"""The registry every cleaning rule joins, and what a rule reports.

A rule is `fn(rows, opts, spec) -> (rows, RuleResult)` registered under the name of its
`CleaningConfig` field; text rules live in `training.data.cleaning`, filter and dedup rules in
`training.data.filters`, and `cleaning.run_cleaning` runs them.

    @rule("length")
    def length_rule(rows, opts, spec):
        return drop_where(rows, lambda row: "too_short" if ... else None)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.data.registry import registrar
from training.data.tasks import Row, TaskSpec


@dataclass
class RuleResult:
    rows_in: int = 0
    changed: int = 0
    dropped: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "changed": self.changed, "dropped": self.dropped, **self.details}


Rule = Callable[[list[Row], Any, TaskSpec], tuple[list[Row], RuleResult]]
CLEANING_RULES: dict[str, Rule] = {}
rule = registrar(CLEANING_RULES)


def drop_where(rows: list[Row], drop: Callable[[Row], str | None]) -> tuple[list[Row], RuleResult]:
    """Keep rows for which `drop` returns None; count the others by the reason it returned."""
    kept: list[Row] = []
    reasons: dict[str, int] = {}
    for row in rows:
        reason = drop(row)
        if reason is None:
            kept.append(row)
        else:
            reasons[reason] = reasons.get(reason, 0) + 1
    result = RuleResult(rows_in=len(rows), dropped=len(rows) - len(kept))
    if reasons:
        result.details["reasons"] = reasons
    return kept, result
