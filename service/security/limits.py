"""Input-limit helpers the transports and the core share; each failure names its limit.

    check_json_depth(raw_body, limit=32)                  # InvalidRequest "... nesting depth ... limit 32"
    check_adapter_name("support-v2", pattern)             # InvalidRequest for "../etc" etc.
    confined_path(artifacts_root, "support-v2/")          # resolved path inside the root, else PermissionDenied

Adapters load only from the configured artifacts root: a path given by an admin is resolved
(symlinks included) and must stay inside that root; with no root configured, explicit paths
are refused.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from training.artifact.errors import InvalidRequest, PermissionDenied

from service.errors import with_param

_OPEN, _CLOSE, _QUOTE, _ESCAPE = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")


def json_depth(raw: bytes) -> int:
    """Maximum nesting depth of JSON text, by a linear scan that skips strings (no parse)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _ESCAPE:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif byte in _CLOSE:
            depth -= 1
    return deepest


def check_json_depth(raw: bytes, limit: int) -> None:
    depth = json_depth(raw)
    if depth > limit:
        raise with_param(InvalidRequest(f"the JSON body nests {depth} levels deep; the limit (max_json_depth) is {limit}",
                                        "flatten the request; OpenAI requests need only a few levels"), "body")


@lru_cache(maxsize=8)
def _pattern(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def check_adapter_name(name: str, pattern: str, param: str = "name") -> str:
    if not _pattern(pattern).fullmatch(name) or ".." in name:
        raise with_param(InvalidRequest(f"adapter name {name[:80]!r} does not match the allowed pattern {pattern}",
                                        "use letters, digits, '.', '_', ':' or '-' (no slashes, no '..')"), param)
    return name


def confined_path(root: Path | None, path: str, param: str = "path") -> Path:
    if root is None:
        raise with_param(PermissionDenied("adapters load only from the artifacts directory, and none is configured",
                                          "set artifacts_dir and load adapters by name"), param)
    base = Path(root).resolve()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if resolved != base and base not in resolved.parents:
        raise with_param(PermissionDenied(f"adapter path {path!r} is outside the artifacts directory",
                                          f"put the adapter under {base} and give its name or a path inside it"), param)
    return resolved
