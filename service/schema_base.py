"""The base of every request model (service/schemas.py, service/schemas_output.py): unknown fields are
refused, and text holding a lone UTF-16 surrogate is a 400 naming the field."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from training.artifact.errors import InvalidRequest

from service.errors import with_param

_SURROGATE = re.compile("[\ud800-\udfff]")


def find_surrogate(data: Any, path: str = "") -> str | None:
    """The path of the first field holding a lone UTF-16 surrogate in decoded JSON, or None. JSON may
    spell one (`"\\ud800"`), but it is not Unicode text: no tokenizer, log line or reply can hold it."""
    if isinstance(data, str):
        return (path or "body") if _SURROGATE.search(data) else None
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and _SURROGATE.search(key):
                return f"a field name in {path or 'the body'}"
        items = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(data)]
    else:
        return None
    for name, value in items:
        found = find_surrogate(value, f"{path}.{name}" if path else name)
        if found:
            return found
    return None


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _unicode_only(cls, data: Any) -> Any:
        field = find_surrogate(data)
        if field:  # raised as is (not a ValueError): both transports answer 400 / INVALID_ARGUMENT naming the field
            raise with_param(InvalidRequest(
                f"{field} holds a lone UTF-16 surrogate (\\ud800-\\udfff); text must be valid Unicode",
                "send UTF-8 text; escapes of that range are valid only as surrogate pairs"), field)
        return data
