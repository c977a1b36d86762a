"""Loaders for quantized-model and onnx-model artifacts, one per quantization scheme.

`training.artifact.loading.load_model_artifact` imports this module and dispatches on
`manifest.quantization["scheme"]`; each loader returns a `LoadedModel` whose `model`
generates (causal LM) or returns logits (classifier) like a transformers model.

Schemes and their on-disk formats (weights are always safetensors, never pickle):
- `torch-int8`, `qat-int8`: `model.safetensors` holds int8 weights + per-row float scales
  (`<name>.int8`, `<name>.scale`, symmetric, zero point 0) for every Linear and
  Embedding, other tensors as float. At load, embeddings are dequantized and Linear layers
  become int8 modules whose activations are quantized as the file's `activations` says:
  `per-token` (`int8_linear.PerTokenInt8Linear`) or `per-tensor` (torch's dynamic-int8
  `torch.ao.nn.quantized.dynamic.Linear`).
- `onnx-fp32`, `onnx-int8-dynamic`, `onnx-int8-static`: `model.onnx` (+ config, tokenizer);
  causal LMs load as `onnx_lm.OnnxCausalLM` (lean ORT decode loop, service-compatible
  forward), classifiers as `onnx_classifier.OnnxSequenceClassifier`.
- `bnb-int8`, `bnb-nf4`, `bnb-fp4`: float safetensors + `bnb_config`; quantized by
  bitsandbytes while loading (`BitsAndBytesConfig`), the QLoRA-style serving path.

    loaded = load_model_artifact(load_artifact("artifacts/tiny-int8"))
    loaded.model.generate(**loaded.tokenizer("Hello", return_tensors="pt"), max_new_tokens=8)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.artifact.errors import ArtifactInvalid
from training.artifact.loading import LoadedModel, load_tokenizer, padding_side, register_model_loader, torch_dtype
from training.artifact.onnx_lm import ONNX_FILE
from training.artifact.store import Artifact

INT8_WEIGHTS = "model.safetensors"
INT8_FORMAT = "tuneserve-int8-v1"
INT8_SUFFIX, SCALE_SUFFIX = ".int8", ".scale"
BNB_CONFIG = "bnb_config.json"
# safetensors metadata of an int8 file: Linear modules to rebuild as int8, embedding modules to
# dequantize, packed weights stored once for two tied parameters, and how activations are
# quantized at run time (files written before "activations" existed are per-tensor).
LAYOUT_DEFAULTS = {"linear": "[]", "embedding": "[]", "tied": "{}", "activations": '"per-tensor"'}
ACTIVATION_MODES = ("per-token", "per-tensor")
BNB_BLOCK = 64  # bitsandbytes 4-bit quantizes weights in blocks of this many values
INT8_SCHEMES = ("torch-int8", "qat-int8")
ONNX_SCHEMES = ("onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static")
BNB_SCHEMES = ("bnb-int8", "bnb-nf4", "bnb-fp4")


def quantize_rows(weight, scale=None) -> tuple[Any, Any]:
    """Symmetric per-row int8: returns (int8 tensor, float32 scale per row); `scale` overrides max-abs."""
    import torch

    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127.0 if scale is None else scale.detach().float()).clamp(min=1e-12)
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q, scale):
    return q.float() * scale.float()[:, None]


def set_submodule(model, name: str, module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _model_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM


def _loaded(artifact: Artifact, model, info: dict[str, Any]) -> LoadedModel:
    manifest = artifact.manifest
    tokenizer = load_tokenizer(artifact.path, padding_side(manifest.task))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, base_id=manifest.base.id, sha256=manifest.base.sha256,
                       path=artifact.path, task=manifest.task, labels=manifest.labels,
                       info={"scheme": manifest.quantization["scheme"], **info})


def read_int8_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors and the layout metadata of an int8 safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if meta.get("format") != INT8_FORMAT:
            raise ArtifactInvalid(f"{path} is not a {INT8_FORMAT} weights file (format={meta.get('format')!r})",
                                  "rebuild the artifact with `tuneserve quantize`")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    layout = {key: json.loads(meta.get(key, default)) for key, default in LAYOUT_DEFAULTS.items()}
    return tensors, layout


def build_int8_model(model_dir: Path, task: str):
    """Rebuild a model from an int8 artifact directory: int8 Linear, dequantized embeddings."""
    import torch
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    tensors, layout = read_int8_state(model_dir / INT8_WEIGHTS)
    packed = {key[: -len(INT8_SUFFIX)]: (tensors.pop(key), tensors.pop(key[: -len(INT8_SUFFIX)] + SCALE_SUFFIX))
              for key in [k for k in tensors if k.endswith(INT8_SUFFIX)]}
    for target, source in layout["tied"].items():
        packed[target] = packed[source]
    state = dict(tensors)
    state.update({f"{name}.weight": dequantize_rows(*packed[f"{name}.weight"]) for name in layout["embedding"]})
    config = AutoConfig.from_pretrained(str(model_dir))
    with no_init_weights():
        model = _model_class(task).from_config(config, dtype=torch.float32)
    result = model.load_state_dict(state, strict=False)
    expected_missing = {f"{name}.weight" for name in layout["linear"]}
    missing = set(result.missing_keys) - expected_missing
    if missing or result.unexpected_keys:
        raise ArtifactInvalid(f"{model_dir / INT8_WEIGHTS} does not match its config.json "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(result.unexpected_keys)[:3]})",
                              "rebuild the artifact with `tuneserve quantize`")
    if layout["activations"] not in ACTIVATION_MODES:
        raise ArtifactInvalid(f"{model_dir / INT8_WEIGHTS} asks for unknown int8 activations {layout['activations']!r}",
                              f"rebuild the artifact with `tuneserve quantize` (known: {', '.join(ACTIVATION_MODES)})")
    if layout["activations"] == "per-token":
        from training.artifact.int8_linear import PerTokenInt8Linear as build
    else:
        from training.artifact.int8_linear import int8_linear as build
    for name in layout["linear"]:
        bias = getattr(model.get_submodule(name), "bias", None)
        set_submodule(model, name, build(*packed[f"{name}.weight"], bias))
    return model.eval()


def _load_int8(artifact: Artifact, dtype: str) -> LoadedModel:
    artifact.file(INT8_WEIGHTS)
    return _loaded(artifact, build_int8_model(artifact.path, artifact.manifest.task), {"runtime": "torch-dynamic-int8"})


def _load_onnx(artifact: Artifact, dtype: str) -> LoadedModel:
    artifact.file(ONNX_FILE)
    if artifact.manifest.task == "classification":
        from training.artifact.onnx_classifier import OnnxSequenceClassifier

        model = OnnxSequenceClassifier(artifact.path)
    else:
        from training.artifact.onnx_lm import OnnxCausalLM

        model = OnnxCausalLM(artifact.path)
    return _loaded(artifact, model, {"runtime": "onnxruntime"})


def bnb_quantization_config(scheme: str, compute_dtype: str = "float32"):
    """The transformers BitsAndBytesConfig for a bnb scheme."""
    from transformers import BitsAndBytesConfig

    if scheme == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=scheme.removeprefix("bnb-"),
                              bnb_4bit_compute_dtype=torch_dtype(compute_dtype))


def _load_bnb(artifact: Artifact, dtype: str) -> LoadedModel:
    import torch

    settings = json.loads(artifact.file(BNB_CONFIG).read_text(encoding="utf-8"))
    scheme = artifact.manifest.quantization["scheme"]
    device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    model = _model_class(artifact.manifest.task).from_pretrained(
        str(artifact.path), use_safetensors=True, trust_remote_code=False, device_map=device_map,
        quantization_config=bnb_quantization_config(scheme, settings.get("compute_dtype", "float32")),
        dtype=torch_dtype(settings.get("compute_dtype", "float32")))
    return _loaded(artifact, model.eval(), {"runtime": "bitsandbytes", "device": str(model.device),
                                            "memory_bytes": model.get_memory_footprint()})


for _scheme in INT8_SCHEMES:
    register_model_loader(_scheme)(_load_int8)
for _scheme in ONNX_SCHEMES:
    register_model_loader(_scheme)(_load_onnx)
for _scheme in BNB_SCHEMES:
    register_model_loader(_scheme)(_load_bnb)
