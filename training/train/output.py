"""Writing what a run produced as artifacts: adapter, full model, merged model, with the reference profile.

The manifest records the base (id + fingerprint), method, hyperparameters, data
(fingerprint, rows, source), metrics, trainable parameter count, wall time and tokenizer
facts (template kind, special tokens). Weights are saved by `save_pretrained(...,
safe_serialization=True)` into the writer's temp dir, so only safetensors ever land there;
the golden set (`training.artifact.golden`) goes in beside them.

    written = write_artifact(dest, manifest, save_model(model), profile=p)   # an Artifact: path + manifest
    merge_adapter(written.path, merged_dest, manifest, profile=p)              # kind merged-model
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.artifact import Artifact, ArtifactWriter, Manifest, load_artifact
from training.artifact.golden import GoldenSet, read_golden, save_golden
from training.artifact.loading import attach_adapter, load_base
from training.artifact.profile import write_reference_profile
from training.train.variants import save_adapter

RUN_KEYS = ("epochs", "max_steps", "batch_size", "grad_accum", "dropout", "seed", "order_seed", "precision",
            "class_weighting", "refit", "objective", "init_adapter", "packing")


def hyperparameters(cfg: Any, method: Any, steps: int) -> dict[str, Any]:
    return {"method_options": method.hyperparameters(cfg), "optim": cfg.optim.model_dump(),
            "max_length": cfg.data.max_length, "steps": steps, **{k: getattr(cfg, k) for k in RUN_KEYS},
            **({"preference": preference_options(cfg)} if cfg.objective != "sft" else {})}


def preference_options(cfg: Any) -> dict[str, Any]:
    from training.train.preference import pick_reference

    return {**cfg.preference.model_dump(), "reference": pick_reference(cfg)}


def tokenizer_info(tokenizer: Any, template: dict[str, Any]) -> dict[str, Any]:
    return {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer), "pad_token": tokenizer.pad_token,
            "eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token,
            "has_chat_template": bool(getattr(tokenizer, "chat_template", None)), **template}


def write_artifact(dest: str | Path, manifest: Manifest, save: Callable[[Path], None],
                   profile: dict[str, Any] | None, overwrite: bool = False, golden: GoldenSet | None = None) -> Artifact:
    with ArtifactWriter(dest, manifest, overwrite=overwrite) as writer:
        save(writer.path)
        if profile is not None:
            write_reference_profile(writer.path, profile)
        save_golden(writer, golden)
    return Artifact(path=writer.dest, manifest=writer.manifest)


def save_model(model: Any, tokenizer: Any | None = None) -> Callable[[Path], None]:
    def save(path: Path) -> None:
        save_adapter(model, path)  # plain save_pretrained, or a PiSSA/OLoRA adapter converted for the original base
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        readme = path / "README.md"  # peft's generated model card says nothing the manifest doesn't
        if readme.exists():
            readme.unlink()

    return save


def merge_adapter(adapter_path: Path, dest: str | Path, manifest: Manifest, profile: dict[str, Any] | None,
                  overwrite: bool = False) -> Artifact:
    """Fold a saved adapter into a fresh full-precision copy of its base and write a merged-model artifact.

    `manifest` describes the merged model; its kind becomes merged-model and `merged_from` names the adapter.
    The adapter's golden set (the training-time model's outputs) is stored with the merged model too.
    """
    artifact = load_artifact(adapter_path, expect_kind="adapter")
    adapter = artifact.manifest
    base = load_base(adapter.base.id, task=adapter.task, labels=adapter.labels)
    merged = attach_adapter(base.model, artifact, "merge").merge_and_unload()
    merged_manifest = manifest.model_copy(update={"kind": "merged-model", "merged_from": str(adapter_path)})
    return write_artifact(dest, merged_manifest, save_model(merged, base.tokenizer), profile, overwrite,
                          read_golden(artifact))
