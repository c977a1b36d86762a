"""Input-limit helpers the transports and the core share; each failure names its limit.

    check_json_depth(raw_body, limit=32)                  # InvalidRequest "... nests more than 32 ... max_json_depth"
    check_adapter_name("support-v2", pattern)             # InvalidRequest for "../etc" etc.
    confined_path(artifacts_root, "support-v2/")          # resolved path inside the root, else PermissionDenied
    relative_paths(exc, [artifacts_root])                 # the error with paths shown relative to the roots

Adapters load only from the configured artifacts root: a path given by an admin is resolved
(symlinks included) and must stay inside that root; with no root configured, explicit paths
are refused.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from training.artifact.errors import InvalidRequest, PermissionDenied, TuneserveError

from service.errors import with_param

_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def _skeleton(raw: bytes) -> bytes:
    """The brackets outside strings, all as `[` `]`. Only C-level bytes operations (no Python loop
    per byte): drop escaped backslashes, then escaped quotes, keep every other quote-separated
    piece (outside strings), keep the brackets."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.split(b'"')[::2]).translate(_SQUARE, _NOT_BRACKETS)


def json_depth(raw: bytes, cap: int | None = None) -> int:
    """Maximum nesting depth of JSON text (strings skipped, no parse); past `cap`, `cap + 1`.
    Each round removes the innermost `[]` pairs (one C-level replace), so the cost is at most
    (cap rounds) x (bracket count); a run of opens longer than what is left of `cap` ends it at
    once. Unbalanced brackets count as open levels."""
    skeleton, depth = _skeleton(raw), 0
    while skeleton:
        if cap is not None and (depth > cap or b"[" * (cap + 1 - depth) in skeleton):  # a run of opens nests
            return cap + 1
        inner = skeleton.replace(b"[]", b"")
        if len(inner) == len(skeleton):  # unbalanced: each remaining "[" may still open a level
            return depth + skeleton.count(b"[") if cap is None else min(depth + skeleton.count(b"["), cap + 1)
        skeleton, depth = inner, depth + 1
    return depth if cap is None else min(depth, cap + 1)


def check_json_depth(raw: bytes, limit: int) -> None:
    if json_depth(raw, cap=limit) > limit:
        raise with_param(InvalidRequest(f"the JSON body nests more than {limit} levels deep; the limit "
                                        f"(max_json_depth) is {limit}",
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


def relative_paths(exc: TuneserveError, roots: Sequence[Path | None]) -> TuneserveError:
    """`exc` with every absolute path under one of `roots` shown relative to it (`<root>/a1/x` →
    `a1/x`), so an error message names the artifact without revealing the server's directories."""
    for root in (Path(r).resolve() for r in roots if r is not None):
        for field in ("message", "hint"):
            text = getattr(exc, field)
            if text:
                setattr(exc, field, text.replace(f"{root}/", "").replace(str(root), "."))
    exc.args = (exc.message,)
    return exc
