"""Discovery of servable artifacts in a directory, by reading manifests only (cheap).

    catalog = discover(Path("artifacts"), base_sha256)   # -> Catalog(adapters={name: dir}, models={name: dir})

Adapters built on another base and unreadable manifests are skipped with a warning; a
full verification (`load_artifact`) happens when an artifact is actually loaded. Directories a
writer left behind (`<name>.tmp-*` being written, `<name>.old-*` after a crash mid-replace) and
hidden ones are never artifacts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from training.artifact import ArtifactInvalid, Manifest, read_manifest

log = logging.getLogger("tuneserve.service.catalog")
FULL_MODEL_KINDS = ("merged-model", "quantized-model", "full-model", "onnx-model")
WRITER_MARKERS = (".tmp-", ".old-")


@dataclass
class Catalog:
    adapters: dict[str, Path] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def artifact_name(path: Path, manifest: Manifest) -> str:
    return manifest.name or path.name


def _leftover(name: str) -> bool:
    """A writer's temporary or replaced directory (training.artifact.store), or a hidden one."""
    return name.startswith(".") or any(marker in name for marker in WRITER_MARKERS)


def discover(root: Path | None, base_sha256: str, extra_models: list[Path] = ()) -> Catalog:
    catalog = Catalog()
    newest: dict[str, str] = {}
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and not _leftover(p.name)) if root and root.is_dir() else []
    for path in [*candidates, *extra_models]:
        try:
            manifest = read_manifest(path)
        except ArtifactInvalid as exc:
            catalog.skipped[str(path)] = exc.message
            log.warning("skipping %s: %s", path, exc.message)
            continue
        name = artifact_name(path, manifest)
        if manifest.kind == "adapter":
            if manifest.base.sha256 != base_sha256:
                catalog.skipped[str(path)] = f"adapter {name} was built on another base ({manifest.base.id})"
                log.warning("skipping adapter %s: built on base %s", path, manifest.base.id)
                continue
            if name in newest and newest[name] >= manifest.created_at:
                continue
            newest[name] = manifest.created_at
            catalog.adapters[name] = path
        elif manifest.kind in FULL_MODEL_KINDS:
            catalog.models[name] = path
    return catalog
