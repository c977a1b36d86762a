"""Loading models: a base by reference, adapters and full-model artifacts after verification.

This is the only model-loading code the service uses. Weights are read from safetensors
only (`use_safetensors=True`, `safetensors.torch.load_file`), `trust_remote_code` is off
unless the caller turns it on, and every artifact is verified by `load_artifact` first.

    base = load_base("tiny-llama")                      # LoadedModel(model, tokenizer, ...)
    model = attach_adapter(base.model, load_artifact(path, expect_base_sha256=base.sha256), "my-adapter")
    full = load_model_artifact(load_artifact(quantized_path))

Full-model artifacts of kind quantized-model / onnx-model are loaded by scheme-specific
loaders registered with `register_model_loader(scheme)` (see `training.artifact.quantized`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from training.artifact.checksums import fingerprint_model_dir
from training.artifact.errors import ArtifactInvalid
from training.artifact.paths import resolve_base_dir
from training.artifact.store import Artifact

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LOADER_MODULES = ("training.artifact.quantized",)


@dataclass
class LoadedModel:
    """A model ready for inference with the facts a server needs about it."""

    model: Any
    tokenizer: Any
    base_id: str
    sha256: str
    path: Path
    task: str = "causal-lm"
    labels: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


_MODEL_LOADERS: dict[str, Callable[[Artifact, str], LoadedModel]] = {}


def register_model_loader(scheme: str) -> Callable:
    """Register a loader for full-model artifacts whose manifest `quantization.scheme` is `scheme`."""

    def wrap(fn: Callable[[Artifact, str], LoadedModel]) -> Callable[[Artifact, str], LoadedModel]:
        _MODEL_LOADERS[scheme] = fn
        return fn

    return wrap


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ArtifactInvalid(f"unknown dtype {name!r}", f"use one of {sorted(DTYPES)}")
    return getattr(torch, DTYPES[name])


def require_safetensors(model_dir: Path) -> None:
    if not any(p.suffix == ".safetensors" for p in model_dir.rglob("*.safetensors")):
        raise ArtifactInvalid(f"model directory {model_dir} has no safetensors weights",
                              "tuneserve loads only safetensors; convert the weights (save_pretrained(safe_serialization=True))")


def padding_side(task: str) -> str:
    """Where a batch pads for `task`: generation pads left (new tokens follow every prompt); classifiers and
    encoders pad right, because BERT-style absolute positions would shift under left padding and a text's
    label would then depend on the longest text in its batch (MiniLM on emotion: 0.853 against 0.893)."""
    return "left" if task == "causal-lm" else "right"


def load_tokenizer(model_dir: str | Path, padding_side: str = "left", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = padding_side
    return tokenizer


def _from_pretrained(model_dir: Path, task: str, dtype: str, labels: list[str] | None, trust_remote_code: bool):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    require_safetensors(model_dir)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code,
                              "dtype": torch_dtype(dtype)}
    if task == "classification":
        if labels:
            kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                          label2id={label: i for i, label in enumerate(labels)})
        return AutoModelForSequenceClassification.from_pretrained(str(model_dir), **kwargs)
    if task == "embedding":  # the bare encoder (its hidden states), as sentence-transformers loads it
        return AutoModel.from_pretrained(str(model_dir), **kwargs)
    if task != "causal-lm":
        raise ArtifactInvalid(f"unknown task {task!r}", "use causal-lm, classification or embedding")
    return AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)


def load_base(ref: str, dtype: str = "float32", task: str = "causal-lm", labels: list[str] | None = None,
              trust_remote_code: bool = False) -> LoadedModel:
    """Load a base model by reference (`tiny-llama`, `all-minilm-l6-v2`, a directory, or a hub id)."""
    model_dir = resolve_base_dir(ref)
    model = _from_pretrained(model_dir, task, dtype, labels, trust_remote_code).eval()
    tokenizer = load_tokenizer(model_dir, padding_side(task), trust_remote_code=trust_remote_code)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, base_id=ref, sha256=fingerprint_model_dir(model_dir),
                       path=model_dir, task=task, labels=labels)


def read_adapter_config(artifact: Artifact):
    from peft import PeftConfig

    artifact.file(ADAPTER_CONFIG)
    return PeftConfig.from_pretrained(str(artifact.path))


def read_adapter(artifact: Artifact) -> tuple[Any, dict]:
    """A verified adapter artifact's PEFT config (inference mode) and saved weights (PEFT's key names)."""
    import safetensors.torch

    if artifact.kind != "adapter":
        raise ArtifactInvalid(f"artifact {artifact.path} is a {artifact.kind}, not an adapter",
                              "serve full-model artifacts as models, not as adapters")
    config = read_adapter_config(artifact)
    config.inference_mode = True
    return config, safetensors.torch.load_file(str(artifact.file(ADAPTER_WEIGHTS)))


def peft_model(model, config, **kwargs):
    """`peft.get_peft_model`, without the FutureWarning peft 0.21 raises on transformers 5 by reading the deprecated
    `model.is_gradient_checkpointing` on every wrap: peft's call, nothing a user of train or serve can act on. The
    filter matches that one message and is installed once (filterwarnings replaces an identical filter)."""
    import warnings

    from peft import get_peft_model

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    return get_peft_model(model, config, **kwargs)


def attach_adapter(model, artifact: Artifact, adapter_name: str, encoder_only: bool = False,
                   saved: tuple[Any, dict] | None = None):
    """Attach a verified adapter artifact to `model` (a transformers model or a PeftModel) under `adapter_name`.
    `encoder_only`: `model` is a bare encoder (task "embedding") and only the adapter's encoder weights
    apply (a classifier's head is dropped; training.artifact.encoder). `saved`: `read_adapter(artifact)`
    when the caller already read it (the file is not read twice).

    Returns the PeftModel. On failure the model keeps its previous adapters.
    """
    from peft import PeftModel, set_peft_model_state_dict

    config, state = saved or read_adapter(artifact)
    if encoder_only:
        from training.artifact.encoder import encoder_part

        config, state = encoder_part(config, state, model)
    created = not isinstance(model, PeftModel)
    if created:
        model = peft_model(model, config, adapter_name=adapter_name)
    else:
        if adapter_name in model.peft_config:
            raise ArtifactInvalid(f"adapter name {adapter_name!r} is already attached", "unload it first")
        loaded_types = {str(c.peft_type.value) for c in model.peft_config.values()}
        if str(config.peft_type.value) not in loaded_types:  # PEFT holds one adapter type per model
            raise ArtifactInvalid(f"adapter {artifact.path} is a {config.peft_type.value} adapter, but this model "
                                  f"already holds {', '.join(sorted(loaded_types))} adapters",
                                  "serve adapters of one PEFT type per base model (LoRA and DoRA mix; "
                                  "IA3/LoHa/LoKr/prompt adapters need a deployment of their own)")
        model.add_adapter(adapter_name, config)
    try:
        result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if adapter_name in k or "lora" in k]
        if unexpected:
            raise ArtifactInvalid(f"adapter {artifact.path} has weights that match no module: {unexpected[:3]}",
                                  "it was trained for a different architecture")
    except Exception as exc:
        if created:
            _undo_injection(model)
        else:
            model.delete_adapter(adapter_name)
        if isinstance(exc, ArtifactInvalid):
            raise
        raise ArtifactInvalid(f"adapter {artifact.path} does not fit the base model ({exc})",
                              "check that it was trained on this base") from None
    model.eval()
    return model


def _undo_injection(peft_model) -> None:
    """Remove the adapter layers get_peft_model injected into the base, restoring the plain modules."""
    try:
        peft_model.unload()
    except Exception:  # noqa: BLE001 - prompt-learning methods inject nothing; nothing to undo
        pass


def load_model_artifact(artifact: Artifact, dtype: str = "float32", trust_remote_code: bool = False) -> LoadedModel:
    """Load a full-model artifact (merged, full, quantized or onnx) for inference."""
    if artifact.kind == "adapter":
        raise ArtifactInvalid(f"artifact {artifact.path} is an adapter", "attach it to its base with attach_adapter")
    manifest = artifact.manifest
    scheme = (manifest.quantization or {}).get("scheme")
    if scheme is None:
        model = _from_pretrained(artifact.path, manifest.task, dtype, manifest.labels, trust_remote_code).eval()
        tokenizer = load_tokenizer(artifact.path, padding_side(manifest.task), trust_remote_code=trust_remote_code)
        return LoadedModel(model=model, tokenizer=tokenizer, base_id=manifest.base.id, sha256=manifest.base.sha256,
                           path=artifact.path, task=manifest.task, labels=manifest.labels)
    for module in LOADER_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    loader = _MODEL_LOADERS.get(scheme)
    if loader is None:
        raise ArtifactInvalid(f"artifact {artifact.path} uses quantization scheme {scheme!r} that this build cannot load",
                              f"known schemes: {sorted(_MODEL_LOADERS) or 'none'}")
    return loader(artifact, dtype)
