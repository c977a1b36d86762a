"""Typed configs from YAML with environment and `key=value` overrides.

Precedence: model defaults < YAML file < environment (`TUNESERVE_<SECTION>__<KEY>`) <
CLI overrides (`lora.r=16 epochs=2`). Values in overrides are parsed as YAML scalars, so
`lr=1e-4`, `pin=true`, `targets=[q_proj,v_proj]` work. Every validation failure becomes a
`ConfigError` naming the field, the bad value and what is allowed.

    cfg = load_config(TrainConfig, "train.yaml", ["lr=2e-4", "lora.r=8"], env_prefix="TUNESERVE_TRAIN__")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from training.artifact.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value", "write overrides like lora.r=16 or epochs=2")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key", "use dotted keys like lora.r=16")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", "check the path, or run without a config to use defaults")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}", "fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def env_overrides(prefix: str, environ: dict[str, str] | None = None) -> list[str]:
    """`TUNESERVE_TRAIN__LORA__R=8` → `lora.r=8` for prefix `TUNESERVE_TRAIN__`."""
    environ = os.environ if environ is None else environ
    out = []
    for name, value in sorted(environ.items()):
        if name.startswith(prefix) and len(name) > len(prefix):
            key = name[len(prefix):].lower().replace("__", ".")
            out.append(f"{key}={value}")
    return out


def format_validation_error(cls: type[BaseModel], exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{…}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(_field_names(cls, err["loc"][:-1])))
            lines.append(f"  {field}: unknown key; allowed here: {allowed}")
        else:
            lines.append(f"  {field} = {shown}: {err['msg']}")
    return ConfigError(f"invalid {cls.__name__} from {source}:\n" + "\n".join(lines),
                       "fix the listed fields in the YAML file or the key=value overrides")


def _field_names(cls: type[BaseModel], loc: tuple) -> list[str]:
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}).keys())


def load_config(cls: type[M], path: str | Path | None = None, overrides: Iterable[str] = (),
                env_prefix: str | None = None, base: dict[str, Any] | None = None) -> M:
    data: dict[str, Any] = dict(base or {})
    sources = ["defaults"]
    if path is not None:
        data.update(read_yaml(path))
        sources.append(str(path))
    items = list(env_overrides(env_prefix)) if env_prefix else []
    if items:
        sources.append("environment")
    if overrides:
        sources.append("overrides")
    for item in [*items, *overrides]:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(cls, exc, " + ".join(sources)) from None
