"""Task registry: which fields each task's rows have, their types, and which text each step looks at.

    spec = TASKS["classification"]
    data = spec.coerce({"text": "hi", "label": 3}, label_names=None)   # -> {"text": "hi", "label": "3"}
    spec.text(row_data)          # the text used for length filters and language detection
    spec.dedup_text(row_data)    # the text compared by exact / near-duplicate detection

Rows travel through the pipeline as `Row` (task fields + origin "file:line" + kept extra columns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.artifact.errors import ConfigError


class FieldProblem(ValueError):
    """A value that cannot become the task field (missing, wrong type)."""


@dataclass
class Row:
    data: dict[str, Any]
    origin: str
    extra: dict[str, Any] = field(default_factory=dict)
    augmented: bool = False

    def output(self) -> dict[str, Any]:
        out = dict(self.data)
        if self.augmented:
            out["augmented"] = True
        return out


def _as_text(value: Any, name: str, label_names: list[str] | None) -> str:
    if value is None:
        raise FieldProblem(f"missing field {name!r}")
    if not isinstance(value, str):
        raise FieldProblem(f"field {name!r} must be text, got {type(value).__name__}")
    return value


def _as_texts(value: Any, name: str, label_names: list[str] | None) -> list[str]:
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if isinstance(value, str):
        value = [value]
    if value is None:
        raise FieldProblem(f"missing field {name!r}")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FieldProblem(f"field {name!r} must be a list of strings, got {type(value).__name__}")
    return list(value)


def _as_label(value: Any, name: str, label_names: list[str] | None) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise FieldProblem(f"missing field {name!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldProblem(f"field {name!r} must be a class name or index, got {type(value).__name__}")
    if isinstance(value, int):
        if label_names is None:
            return str(value)
        if not 0 <= value < len(label_names):
            raise FieldProblem(f"label index {value} is outside label_names (0..{len(label_names) - 1})")
        return label_names[value]
    return value.strip()


TRUE_WORDS = {"true", "yes", "1", "good", "up", "thumbs_up", "desirable", "positive"}
FALSE_WORDS = {"false", "no", "0", "bad", "down", "thumbs_down", "undesirable", "negative"}


def _as_flag(value: Any, name: str, label_names: list[str] | None) -> bool:
    """A KTO label: true/false, 1/0, or words like good/bad, up/down."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    if value is None:
        raise FieldProblem(f"missing field {name!r}")
    raise FieldProblem(f"field {name!r} must be true/false (or 1/0, good/bad, up/down), got {value!r}")


COERCERS: dict[str, Callable[[Any, str, list[str] | None], Any]] = {
    "text": _as_text, "texts": _as_texts, "label": _as_label, "flag": _as_flag,
}


def _distinct_answers(data: dict[str, Any]) -> None:
    if data["chosen"].strip() == data["rejected"].strip():
        raise FieldProblem("chosen and rejected are the same text (a pair must prefer one answer over another)")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str = "text"
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fields: tuple[FieldSpec, ...]
    text_fields: tuple[str, ...]
    dedup_fields: tuple[str, ...]
    augment_fields: tuple[str, ...]
    label_field: str | None = None
    leak_fields: tuple[str, ...] | None = None  # what split grouping and leakage compare (default: dedup_fields)
    check: Callable[[dict[str, Any]], None] | None = None  # a whole-row rule; raises FieldProblem

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def coerce(self, record: dict[str, Any], label_names: list[str] | None = None,
               allow_unlabeled: bool = False) -> dict[str, Any]:
        """Build the task row from an already column-mapped record; raises FieldProblem."""
        out: dict[str, Any] = {}
        for spec in self.fields:
            value = record.get(spec.name)
            if value is None and not spec.required:
                value = spec.default
            if spec.kind == "label" and allow_unlabeled and (value is None or value == ""):
                out[spec.name] = None
                continue
            value = COERCERS[spec.kind](value, spec.name, label_names)
            if spec.required and spec.kind == "text" and not value.strip():
                raise FieldProblem(f"field {spec.name!r} is empty")
            out[spec.name] = value
        if self.check is not None:
            self.check(out)
        return out

    def _join(self, data: dict[str, Any], names: tuple[str, ...]) -> str:
        parts: list[str] = []
        for name in names:
            value = data.get(name)
            if isinstance(value, list):
                parts.extend(value)
            elif value:
                parts.append(value)
        return "\n".join(parts)

    def text(self, data: dict[str, Any]) -> str:
        return self._join(data, self.text_fields)

    def dedup_text(self, data: dict[str, Any]) -> str:
        return self._join(data, self.dedup_fields)

    def leak_text(self, data: dict[str, Any]) -> str:
        return self._join(data, self.leak_fields or self.dedup_fields)

    def string_fields(self) -> list[str]:
        """Fields holding text that cleaning transforms (everything but the label)."""
        return [f.name for f in self.fields if f.kind in ("text", "texts")]

    def validate_clean(self, data: dict[str, Any]) -> str | None:
        """Why a cleaned row breaks the task's whole-row rule (None when it holds)."""
        try:
            if self.check is not None:
                self.check(data)
        except FieldProblem as exc:
            return str(exc)
        return None


TASKS: dict[str, TaskSpec] = {
    "instruction": TaskSpec(
        "instruction",
        (FieldSpec("instruction"), FieldSpec("input", required=False, default=""), FieldSpec("output")),
        text_fields=("instruction", "input", "output"),
        dedup_fields=("instruction", "input", "output"),
        augment_fields=("instruction",)),
    "classification": TaskSpec(
        "classification", (FieldSpec("text"), FieldSpec("label", "label")),
        text_fields=("text",), dedup_fields=("text",), augment_fields=("text",), label_field="label"),
    "qa": TaskSpec(
        "qa", (FieldSpec("context"), FieldSpec("question"), FieldSpec("answers", "texts")),
        text_fields=("context", "question"),
        # Many questions share one context: compare question + answers, not the long context.
        dedup_fields=("question", "answers"),
        augment_fields=("question",)),
    "text": TaskSpec("text", (FieldSpec("text"),), text_fields=("text",), dedup_fields=("text",),
                     augment_fields=("text",)),
    # Preference pairs (DPO/ORPO; also KTO): one prompt may have several pairs, so exact/near dedup
    # compares whole pairs, while splitting and leakage compare prompts (a prompt stays in one split).
    "preference": TaskSpec(
        "preference", (FieldSpec("prompt"), FieldSpec("chosen"), FieldSpec("rejected")),
        text_fields=("prompt", "chosen", "rejected"), dedup_fields=("prompt", "chosen", "rejected"),
        augment_fields=("prompt",), leak_fields=("prompt",), check=_distinct_answers),
    "kto": TaskSpec(
        "kto", (FieldSpec("prompt"), FieldSpec("completion"), FieldSpec("label", "flag")),
        text_fields=("prompt", "completion"), dedup_fields=("prompt", "completion"),
        augment_fields=("prompt",), leak_fields=("prompt",)),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}", f"use one of {sorted(TASKS)}")
    return TASKS[name]
