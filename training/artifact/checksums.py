"""sha256 of files and of model directories (the identity of a base model)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 1 << 20
# Files that define a model's behaviour; everything else (READMEs, caches) is ignored
# when fingerprinting a base model directory.
MODEL_IDENTITY_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".onnx", ".onnx_data")
FINGERPRINT_CACHE = ".tuneserve_fingerprint.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root: str | Path) -> list[str]:
    """Every regular file under root as a sorted relative posix path."""
    root = Path(root)
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


def symlinks(root: str | Path) -> list[str]:
    """Every symbolic link under root (to a file or a directory), as sorted relative posix paths."""
    root = Path(root)
    return sorted((Path(dirpath) / name).relative_to(root).as_posix()
                  for dirpath, dirs, files in os.walk(root) for name in (*dirs, *files)
                  if (Path(dirpath) / name).is_symlink())


def hash_files(root: str | Path, paths: list[str]) -> dict[str, str]:
    root = Path(root)
    return {rel: sha256_file(root / rel) for rel in paths}


def fingerprint_model_dir(model_dir: str | Path) -> str:
    """A stable sha256 over the identity files of a model directory.

    Cached in the directory keyed by (size, mtime) of each file so serving a multi-GB
    base does not re-hash it on every start.
    """
    model_dir = Path(model_dir)
    files = [p for p in list_files(model_dir)
             if p.endswith(MODEL_IDENTITY_SUFFIXES) and not p.startswith(".") and p != FINGERPRINT_CACHE
             and "/." not in p]
    stamp = {p: [(model_dir / p).stat().st_size, (model_dir / p).stat().st_mtime_ns] for p in files}
    cache = model_dir / FINGERPRINT_CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(sha256_file(model_dir / rel).encode())
        digest.update(b"\n")
    value = digest.hexdigest()
    try:
        cache.write_text(json.dumps({"stamp": stamp, "sha256": value}))
    except OSError:
        pass  # read-only model dirs (e.g. a mounted volume) are fine, just slower
    return value
