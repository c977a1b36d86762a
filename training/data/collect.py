"""Collection: read every source, map columns to task fields, validate, and account for bad rows.

A bad row (missing field, wrong type, undecodable text, unparsable line) is reported with its
file and line; with `on_error: fail` the first one stops the run, with `skip` it is counted
and a few examples are kept for the report. Nothing is dropped silently.

    rows, log = collect(cfg)                  # rows: list[Row]; log.summary() for the report
    rows, log = collect(cfg, allow_unlabeled=True)   # for annotation export
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.data.config import DataConfig, SourceConfig
from training.data.readers import BadRecord, expand_source, read_source
from training.data.tasks import FieldProblem, Row, TaskSpec, get_task

MAX_EXAMPLES = 20


@dataclass
class BadRowLog:
    on_error: str = "skip"
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def bad(self, where: str, reason: str) -> None:
        if self.on_error == "fail":
            raise DataError(f"bad row at {where}: {reason}",
                            "fix the row in the source file, or set on_error=skip to skip and count bad rows")
        self.reasons[_reason_kind(reason)] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> dict[str, Any]:
        return {"skipped": self.count, "by_reason": dict(self.reasons), "examples": list(self.examples),
                "per_source": self.per_source}


def _reason_kind(reason: str) -> str:
    return reason.split(" '")[0].split(":")[0]


def lookup(record: dict[str, Any], column: str) -> Any:
    """`answers.text` reaches into nested objects; a plain name is a plain key."""
    if column in record:
        return record[column]
    value: Any = record
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def map_record(record: dict[str, Any], source: SourceConfig, spec: TaskSpec) -> dict[str, Any]:
    return {name: lookup(record, source.columns.get(name, name)) for name in spec.field_names}


def collect_source(source: SourceConfig, spec: TaskSpec, extra_columns: list[str], log: BadRowLog,
                   allow_unlabeled: bool = False) -> list[Row]:
    unknown = sorted(set(source.columns) - set(spec.field_names))
    if unknown:
        from training.artifact.errors import ConfigError

        raise ConfigError(f"sources[].columns maps unknown fields {unknown} for task {spec.name}",
                          f"map the task's fields {spec.field_names} to source columns")
    rows: list[Row] = []
    for path, fmt in expand_source(Path(source.path), source.format):
        read = bad = 0
        for where, record in read_source(path, fmt, text_mode=source.text_mode, hf_split=source.hf_split):
            origin = f"{path}:{where}"
            if isinstance(record, BadRecord):
                bad += 1
                log.bad(origin, record.reason)
                continue
            try:
                data = spec.coerce(map_record(record, source, spec), source.label_names, allow_unlabeled)
            except FieldProblem as exc:
                bad += 1
                log.bad(origin, str(exc))
                continue
            extra = {col: lookup(record, col) for col in extra_columns}
            rows.append(Row(data, origin, extra))
            read += 1
        log.per_source[str(path)] = {"rows": read, "bad": bad}
    return rows


def collect(cfg: DataConfig, allow_unlabeled: bool = False) -> tuple[list[Row], BadRowLog]:
    spec = get_task(cfg.task)
    log = BadRowLog(cfg.on_error)
    rows: list[Row] = []
    for source in cfg.sources:
        rows.extend(collect_source(source, spec, cfg.extra_columns(), log, allow_unlabeled))
    if not rows:
        detail = f"; {log.count} bad rows were skipped, e.g. {log.examples[0]}" if log.examples else ""
        raise DataError(f"no usable rows were read from {[s.path for s in cfg.sources]}{detail}",
                        "check the source files are not empty and that sources[].columns maps "
                        f"the {cfg.task} fields {spec.field_names} to real columns")
    return rows, log
