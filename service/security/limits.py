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
from typing import Sequence

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


def confined_path(roots: Path | Sequence[Path] | None, path: str, param: str = "path") -> Path:
    """`path` resolved (symlinks followed) if it lies inside one of `roots`; relative paths start
    at the first root (the artifacts directory)."""
    bases = [Path(r).resolve() for r in ([roots] if isinstance(roots, (str, Path)) else roots or []) if r is not None]
    if not bases:
        raise with_param(PermissionDenied("adapters load only from the artifacts directory, and none is configured",
                                          "set artifacts_dir and load adapters by name"), param)
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else bases[0] / candidate).resolve()
    if not any(resolved == base or base in resolved.parents for base in bases):
        raise with_param(PermissionDenied(f"adapter path {path!r} is outside the artifacts directory",
                                          f"put the adapter under {bases[0]} and give its name or a path inside it"),
                         param)
    return resolved
