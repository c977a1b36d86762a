"""Scheme `torch-int8`: post-training dynamic int8 for CPU, saved as safetensors (no pickle).

Every Linear (the LM head included) and, unless `quantize_embeddings=false`, every
Embedding is stored as symmetric per-row int8 + float scales; weights shared by two
modules (tied embeddings / head) are stored once. The loader
(`training.artifact.quantized`) rebuilds int8 Linear modules from them, quantizing
activations per token (`int8_activations`, the default) or per tensor (torch's dynamic
Linear, what `qat-int8` trains for). Per tensor is unusable on Llama-family bases whose
activations have outliers: SmolLM2-135M keeps 0.47 teacher-forced top-1 agreement.

    tensors, metadata = pack_int8(model, quantize_embeddings=True, activations="per-token")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.artifact.quantized import INT8_FORMAT, INT8_SUFFIX, INT8_WEIGHTS, SCALE_SUFFIX, quantize_rows
from training.quantize.schemes import Scheme, register_scheme


def pack_int8(model, quantize_embeddings: bool = True, scales: dict[str, Any] | None = None,
              activations: str = "per-token") -> tuple[dict[str, Any], dict[str, str]]:
    """int8 tensors + layout metadata for `model`; `scales` (module name → per-row scale) overrides max-abs."""
    import torch

    scales = scales or {}
    kinds = [(torch.nn.Linear, "linear")] + ([(torch.nn.Embedding, "embedding")] if quantize_embeddings else [])
    layout: dict[str, Any] = {"linear": [], "embedding": [], "tied": {}}
    for name, module in model.named_modules():
        for cls, kind in kinds:
            if type(module) is cls or (kind == "linear" and isinstance(module, cls)):
                layout[kind].append(name)
    packed_params = {f"{name}.weight": name for name in layout["linear"] + layout["embedding"]}
    tensors: dict[str, Any] = {}
    first_by_storage: dict[int, str] = {}
    for key, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if key in packed_params:
            if ptr in first_by_storage and first_by_storage[ptr] in packed_params:
                layout["tied"][key] = first_by_storage[ptr]
                continue
            q, scale = quantize_rows(tensor, scales.get(packed_params[key]))
            tensors[key + INT8_SUFFIX], tensors[key + SCALE_SUFFIX] = q, scale
        else:
            tensors[key] = tensor.detach().float().contiguous().clone()
        first_by_storage.setdefault(ptr, key)
    metadata = {"format": INT8_FORMAT, **{k: json.dumps(v) for k, v in {**layout, "activations": activations}.items()}}
    return tensors, metadata


def save_int8(model, out_dir: Path, quantize_embeddings: bool, scales: dict[str, Any] | None = None,
              activations: str = "per-token") -> dict[str, Any]:
    from safetensors.torch import save_file

    tensors, metadata = pack_int8(model, quantize_embeddings, scales, activations)
    save_file(tensors, str(out_dir / INT8_WEIGHTS), metadata=metadata)
    layout = {k: json.loads(metadata[k]) for k in ("linear", "embedding", "tied")}
    return {"format": INT8_FORMAT, "granularity": "per-row symmetric", "activations": f"dynamic {activations}",
            "quantized_linear": len(layout["linear"]), "quantized_embeddings": len(layout["embedding"]),
            "tied": layout["tied"]}


@register_scheme(Scheme("torch-int8", "quantized-model", 8,
                        "dynamic int8 (CPU): per-row weights, per-token activations, int8 embeddings and head",
                        max_logit_diff=None, max_kl=0.15, min_agreement=0.8))
def build_torch_int8(source, config, out_dir: Path, calibration) -> dict[str, Any]:
    return save_int8(source.model, out_dir, config.quantize_embeddings, activations=config.int8_activations)
