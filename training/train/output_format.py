"""What the assistant turn of a training set looks like, checked on the rows and recorded in the manifest.

`data.output_format` marks the format of an instruction dataset's `output` column:
- `text` (default): free text; nothing is recorded.
- `json`: every output is a JSON value, checked against `data.output_schema` (a JSON schema, inline or a
  path to a .json file) when given. The manifest's `response_schema` is that schema, or
  `{"type": "object"}` when every output is an object, so the service constrains the adapter's answers
  to the form it was trained on unless a request asks for another.
- `tool_calls`: outputs call tools in the hermes format (`<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>`, text around it allowed); every call must parse. The manifest's `tool_call_format` is
  `hermes`, which the service parses `tool_choice: auto` replies with.
With a chat template the manifest also keeps the template the adapter was trained with
(`chat_template`), so it is served with the same one even where the base's tokenizer differs.

    check_outputs(cfg.data, cfg.task, splits)          # DataError naming the first bad row
    fields = manifest_defaults(cfg.data, tokenizer, template)   # -> Manifest(**fields, ...)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError, DataError

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def output_schema(data: Any) -> dict | None:
    """`data.output_schema` as a dict (inline, or read from a .json file), checked to be a JSON schema."""
    schema = data.output_schema
    if schema is None:
        return None
    if isinstance(schema, str):
        path = Path(schema).expanduser()
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"data.output_schema: cannot read a JSON schema from {path}: {exc}",
                              "give a JSON schema inline or the path of a .json file holding one") from None
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ConfigError(f"data.output_schema is not a valid JSON schema: {exc.message}",
                          "fix the schema (JSON Schema 2020-12)") from None
    return schema


def _row_error(split: str, index: int, what: str) -> DataError:
    return DataError(f"data.output_format: {split} row {index}'s output {what}",
                     "fix or drop the row, or set data.output_format=text")


def check_outputs(data: Any, task: str, splits: Any) -> None:
    """Every output of every split has the declared format (json: parses and follows the schema;
    tool_calls: every call parses as {"name", "arguments"})."""
    if data.output_format == "text":
        return
    if task != "causal-lm":
        raise ConfigError(f"data.output_format={data.output_format} applies to instruction data (task=causal-lm), not task={task}",
                          "leave data.output_format at text for this task")
    schema = output_schema(data)
    if schema is not None and data.output_format != "json":
        raise ConfigError("data.output_schema needs data.output_format=json", "set data.output_format=json")
    validator = None
    if schema is not None:
        from jsonschema import Draft202012Validator
        validator = Draft202012Validator(schema)
    for split in ("train", "validation", "test"):
        for index, row in enumerate(getattr(splits, split)):
            output = row.get("output", "")
            if data.output_format == "json":
                try:
                    value = json.loads(output)
                except ValueError as exc:
                    raise _row_error(split, index, f"is not JSON ({exc.msg} at character {exc.pos})") from None
                error = next(iter(validator.iter_errors(value)), None) if validator else None
                if error is not None:
                    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
                    raise _row_error(split, index, f"does not follow data.output_schema at {where}: {error.message}")
            else:
                for body in TOOL_CALL.findall(output):
                    call = _json_or_none(body)
                    if not (isinstance(call, dict) and isinstance(call.get("name"), str) and "arguments" in call):
                        raise _row_error(split, index, f"has a tool call that is not "
                                         f'{{"name": ..., "arguments": ...}} JSON: {body[:80]!r}')


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def manifest_defaults(data: Any, tokenizer: Any, template: Any, outputs: list[str] | None = None) -> dict[str, Any]:
    """The manifest's serving defaults for an adapter trained on this data: response_schema,
    tool_call_format and chat_template (only those that apply)."""
    fields: dict[str, Any] = {}
    if getattr(template, "kind", None) == "chat" and getattr(tokenizer, "chat_template", None):
        fields["chat_template"] = tokenizer.chat_template
    if data.output_format == "json":
        schema = output_schema(data)
        if schema is None and outputs and all(isinstance(_json_or_none(o), dict) for o in outputs):
            schema = {"type": "object"}
        if schema is not None:
            fields["response_schema"] = schema
    elif data.output_format == "tool_calls":
        fields["tool_call_format"] = "hermes"
    return fields
