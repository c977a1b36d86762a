"""What gets quantized: a base model, a merged/full-model artifact, or an adapter merged into its base.

    src = resolve_source("artifacts/my-adapter", QuantizeConfig(merge=True))
    src.model, src.tokenizer, src.base   # float model in eval mode, lineage for the manifest
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.artifact import MANIFEST_NAME, fingerprint_model_dir, load_artifact
from training.artifact.errors import ArtifactInvalid, BaseModelMismatch, ConfigError
from training.artifact.golden import GoldenSet, read_golden
from training.artifact.loading import attach_adapter, load_base, load_model_artifact
from training.quantize.config import QuantizeConfig

QUANTIZED_KINDS = ("quantized-model", "onnx-model")


@dataclass
class SourceModel:
    model: Any
    tokenizer: Any
    task: str
    labels: list[str] | None
    base: dict[str, str]
    lineage: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    golden: GoldenSet | None = None  # the source artifact's golden set: the training-time model's outputs

    def float_bytes(self) -> int:
        """Size of the weights at fp32, each shared tensor counted once (the baseline for size ratios)."""
        seen: dict[int, int] = {}
        for tensor in self.model.state_dict().values():
            seen[tensor.untyped_storage().data_ptr()] = tensor.numel() * 4
        return sum(seen.values())


def _from_artifact(path: Path, config: QuantizeConfig) -> SourceModel:
    artifact = load_artifact(path)
    manifest = artifact.manifest
    if manifest.kind in QUANTIZED_KINDS:
        scheme = (manifest.quantization or {}).get("scheme", "?")
        raise ArtifactInvalid(f"{path} is already a {manifest.kind} (scheme {scheme}); quantizing it again would "
                              "compound the error", f"quantize the float model it was made from (base {manifest.base.id}, or the adapter/merged "
                              "artifact named under `source` in its manifest)")
    lineage = {"path": str(artifact.path), "kind": manifest.kind, "name": manifest.name,
               "manifest_sha256": _manifest_sha(artifact.path)}
    data = manifest.data.model_dump(exclude_none=True)
    if manifest.kind == "adapter":
        if not config.merge:
            raise ConfigError(f"{path} is a LoRA adapter; {config.scheme} needs it merged into its base",
                              "pass --merge, or quantize the base itself and attach the adapter at serve time "
                              "(the QLoRA-style path: e.g. --scheme bnb-nf4 on the base)")
        base = load_base(manifest.base.id, task=manifest.task, labels=manifest.labels)
        if base.sha256 != manifest.base.sha256:
            raise BaseModelMismatch(f"adapter {path} was trained on {manifest.base.id} ({manifest.base.sha256[:12]}), "
                                    f"but that reference now resolves to a different model ({base.sha256[:12]})",
                                    "restore the original base model, or retrain the adapter on this one")
        model = attach_adapter(base.model, artifact, "merge").merge_and_unload().eval()
        lineage["merged_adapter"] = True
        return SourceModel(model, base.tokenizer, manifest.task, manifest.labels,
                           {"id": manifest.base.id, "sha256": manifest.base.sha256}, lineage, data, read_golden(artifact))
    loaded = load_model_artifact(artifact)
    return SourceModel(loaded.model, loaded.tokenizer, manifest.task, manifest.labels,
                       {"id": manifest.base.id, "sha256": manifest.base.sha256}, lineage, data, read_golden(artifact))


def _manifest_sha(path: Path) -> str:
    from training.artifact import sha256_file

    return sha256_file(path / MANIFEST_NAME)


def _detect_task(model_dir: Path) -> str:
    import json

    architectures = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    return "classification" if any("SequenceClassification" in a for a in architectures) else "causal-lm"


def resolve_source(source: str | Path, config: QuantizeConfig) -> SourceModel:
    """Load the float model to quantize, refusing sources that cannot be quantized meaningfully."""
    from training.artifact.paths import resolve_base_dir

    path = Path(source).expanduser()
    if (path / MANIFEST_NAME).is_file():
        return _from_artifact(path, config)
    if config.merge:
        raise ConfigError(f"--merge needs an adapter artifact, but {source} is a base model",
                          "drop --merge, or pass the adapter artifact directory")
    model_dir = resolve_base_dir(str(source))
    task = config.task or _detect_task(model_dir)
    base = load_base(str(source), task=task, labels=config.labels)
    lineage = {"path": str(model_dir), "kind": "base"}
    return SourceModel(base.model, base.tokenizer, task, config.labels or _config_labels(base.model),
                       {"id": str(source), "sha256": fingerprint_model_dir(model_dir)}, lineage)


def _config_labels(model) -> list[str] | None:
    """Label names from the model config, unless they are transformers' placeholder LABEL_i names."""
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)]
    return None if all(name == f"LABEL_{i}" for i, name in enumerate(names)) else names
