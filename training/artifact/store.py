"""Writing and verifying artifact directories.

Writers fill `<dest>.tmp-<random>` next to the destination, hash every file, write
`manifest.json` last, then rename the directory into place in one `os.rename`; a crash
at any point leaves either the old artifact or nothing, never a manifest over partial
files. Readers verify the manifest, the schema version, the sha256 of every listed file,
that no unlisted file was slipped in (dotfiles included; only a base fingerprint cache may be
added), that nothing inside is a symbolic link (it could point anywhere: artifacts hold regular
files only), and (when asked) the base-model fingerprint.

    with ArtifactWriter("artifacts/my-adapter", Manifest(name="my-adapter", kind="adapter", base=...)) as w:
        save_file(tensors, w.path / "adapter_model.safetensors")
    art = load_artifact("artifacts/my-adapter", expect_base_sha256=base_fp)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from training.artifact.checksums import FINGERPRINT_CACHE, hash_files, list_files, sha256_file, symlinks
from training.artifact.errors import ArtifactInvalid, BaseModelMismatch
from training.artifact.manifest import MANIFEST_NAME, SUPPORTED_SCHEMA_VERSIONS, Manifest

# Weight formats that can execute code when loaded. An artifact holding one is refused.
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactWriter:
    """Context manager that builds an artifact in a temp dir and renames it into place.

    `manifest` is a `Manifest` or its fields as a dict; the writer records `files` (and, for a
    `Manifest`, `created_at`) itself when it commits.
    """

    def __init__(self, dest: str | Path, manifest: Manifest | dict[str, Any], overwrite: bool = False) -> None:
        self.dest = Path(dest).resolve()
        self.manifest_fields = (manifest.model_dump(exclude={"files", "created_at"}) if isinstance(manifest, Manifest)
                                else dict(manifest))
        self.overwrite = overwrite
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self.dest.exists() and not overwrite:
            raise ArtifactInvalid(f"artifact destination {self.dest} already exists",
                                  "choose another output path or pass --overwrite")
        self.path = self.dest.parent / f"{self.dest.name}.tmp-{secrets.token_hex(4)}"
        self.manifest: Manifest | None = None

    def __enter__(self) -> "ArtifactWriter":
        self.path.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            self.commit()
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def update(self, **fields: Any) -> None:
        self.manifest_fields.update(fields)

    def commit(self) -> Manifest:
        _refuse_symlinks(self.path)
        files = [p for p in list_files(self.path) if p != MANIFEST_NAME]
        unsafe = [p for p in files if p.endswith(UNSAFE_SUFFIXES)]
        if unsafe:
            raise ArtifactInvalid(f"refusing to write pickle-based files {unsafe}", "save weights as safetensors")
        manifest = Manifest.model_validate({**self.manifest_fields, "files": hash_files(self.path, files)})
        manifest_path = self.path / MANIFEST_NAME
        with open(manifest_path, "w", encoding="utf-8") as handle:
            handle.write(manifest.model_dump_json(indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.path)
        if self.dest.exists():
            trash = self.dest.parent / f"{self.dest.name}.old-{secrets.token_hex(4)}"
            os.rename(self.dest, trash)
            os.rename(self.path, self.dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.path, self.dest)
        _fsync_dir(self.dest.parent)
        self.manifest = manifest
        return manifest


@dataclass(frozen=True)
class Artifact:
    """A verified artifact directory: its manifest and the path of each file."""

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def kind(self) -> str:
        return self.manifest.kind

    def file(self, rel: str) -> Path:
        if rel not in self.manifest.files:
            raise ArtifactInvalid(f"artifact {self.path} has no file {rel!r}",
                                  f"it holds: {', '.join(sorted(self.manifest.files))}")
        return self.path / rel


def read_manifest(path: str | Path) -> Manifest:
    """Parse and schema-check the manifest without hashing files (cheap listing)."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise ArtifactInvalid(f"artifact {path} does not exist or is not a directory",
                              "check the path; artifacts are directories holding manifest.json")
    if not manifest_path.is_file():
        raise ArtifactInvalid(f"artifact {path} has no {MANIFEST_NAME}",
                              "it is incomplete (an interrupted write?) or not an artifact; rebuild it")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactInvalid(f"artifact {path}: {MANIFEST_NAME} is not valid JSON ({exc})", "rebuild the artifact") from None
    if not isinstance(raw, dict):
        raise ArtifactInvalid(f"artifact {path}: {MANIFEST_NAME} must be a JSON object", "rebuild the artifact")
    version = raw.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ArtifactInvalid(
            f"artifact {path}: unknown schema_version {version!r}; this tuneserve reads {list(SUPPORTED_SCHEMA_VERSIONS)}",
            "upgrade tuneserve or rebuild the artifact with this version")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ArtifactInvalid(f"artifact {path}: malformed manifest ({fields})", "rebuild the artifact") from None


def _refuse_symlinks(path: Path) -> None:
    links = symlinks(path)
    if links:
        raise ArtifactInvalid(f"artifact {path.name} holds symbolic links: {links[:5]}",
                              "artifacts hold regular files only; copy the files in instead of linking them")


def verify_files(path: Path, manifest: Manifest) -> None:
    _refuse_symlinks(path)
    listed = set(manifest.files)
    unsafe = sorted(p for p in listed if p.endswith(UNSAFE_SUFFIXES))
    if unsafe:
        raise ArtifactInvalid(f"artifact {path} lists pickle-based weight files {unsafe}",
                              "only safetensors weights are loaded; re-save the weights as safetensors")
    for rel in sorted(listed):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ArtifactInvalid(f"artifact {path}: manifest path {rel!r} escapes the artifact directory",
                                  "the manifest was tampered with; rebuild the artifact")
        target = path / rel
        if not target.is_file():
            raise ArtifactInvalid(f"artifact {path}: file {rel} listed in the manifest is missing",
                                  "the artifact is incomplete; copy it again or rebuild it")
        if sha256_file(target) != manifest.files[rel]:
            raise ArtifactInvalid(f"artifact {path}: checksum mismatch for {rel} (corrupted or modified)",
                                  "copy the artifact again or rebuild it")
    # a merged model used as a training base gets the base fingerprint cache; nothing else unlisted
    present = {p for p in list_files(path) if p not in (MANIFEST_NAME, FINGERPRINT_CACHE)}
    extra = sorted(present - listed)
    if extra:
        raise ArtifactInvalid(f"artifact {path}: files not listed in the manifest: {extra}",
                              "remove them; artifacts are immutable once written")


def load_artifact(path: str | Path, expect_base_sha256: str | None = None,
                  expect_kind: str | tuple[str, ...] | None = None) -> Artifact:
    """Verify an artifact completely and return it; raise ArtifactInvalid on any problem."""
    path = Path(path).resolve()
    manifest = read_manifest(path)
    if expect_kind is not None:
        kinds = (expect_kind,) if isinstance(expect_kind, str) else expect_kind
        if manifest.kind not in kinds:
            raise ArtifactInvalid(f"artifact {path} is a {manifest.kind}, expected {' or '.join(kinds)}",
                                  "pass an artifact of the right kind")
    verify_files(path, manifest)
    if expect_base_sha256 is not None and manifest.base.sha256 != expect_base_sha256:
        raise BaseModelMismatch(
            f"artifact {path} was built on base {manifest.base.id} ({manifest.base.sha256[:12]}), "
            f"not on the loaded base ({expect_base_sha256[:12]})",
            "load it onto the base model it was trained on, or retrain it on this base")
    return Artifact(path=path, manifest=manifest)
