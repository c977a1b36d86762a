"""The on-disk contract between training and serving.

An artifact is a directory with `manifest.json` (see `manifest.Manifest`), safetensors
weights, configs, tokenizer files, optionally `reference_profile.json` for drift and
`golden_set.json` for the train-to-serve parity gate (`golden`, `replay`).
Training writes artifacts with `ArtifactWriter`; the service loads them with
`load_artifact`, which verifies everything first. This package is the only thing
`service` imports from `training`.
"""

from training.artifact.checksums import fingerprint_model_dir, sha256_file
from training.artifact.errors import (
    ArtifactInvalid,
    BaseModelMismatch,
    ConfigError,
    TuneserveError,
)
from training.artifact.manifest import (
    MANIFEST_NAME,
    PROFILE_NAME,
    SCHEMA_VERSION,
    BaseRef,
    DataRef,
    Manifest,
)
from training.artifact.paths import DEFAULT_BASE, MINILM, cache_dir, embedded_base_dir, resolve_base, resolve_base_dir
from training.artifact.store import Artifact, ArtifactWriter, load_artifact, read_manifest

__all__ = [
    "Artifact", "ArtifactInvalid", "ArtifactWriter", "BaseModelMismatch", "BaseRef", "ConfigError", "DataRef",
    "DEFAULT_BASE", "MINILM", "MANIFEST_NAME", "Manifest", "PROFILE_NAME", "SCHEMA_VERSION", "TuneserveError",
    "cache_dir", "embedded_base_dir", "fingerprint_model_dir", "load_artifact", "read_manifest",
    "resolve_base", "resolve_base_dir", "sha256_file",
]
