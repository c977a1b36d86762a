"""Schemes `bnb-int8`, `bnb-nf4`, `bnb-fp4`: bitsandbytes quantization at load time (GPU serving, QLoRA).

The artifact keeps the float safetensors plus `bnb_config.json`; the loader passes a
`BitsAndBytesConfig` to transformers, so the same artifact serves 8-bit or 4-bit on a GPU
(bitsandbytes ≥ 0.45 also runs on CPU, slowly). Adapters stay separate and attach on top
(`attach_adapter`), which is the QLoRA-style serving path. 4-bit packs weights in blocks
of 64 values: Linear layers whose weight size is not a multiple of that are refused
before loading, with the offending layers named.

    tuneserve quantize tiny-llama --scheme bnb-nf4 --out artifacts/tiny-nf4
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError
from training.artifact.quantized import BNB_BLOCK, BNB_CONFIG, BNB_SCHEMES
from training.quantize.schemes import Scheme, register_scheme

SKIPPED_MODULES = ("lm_head", "classifier", "score")  # transformers keeps output heads in float


def check_4bit_dims(model) -> None:
    """Raise a ConfigError naming every Linear whose weight cannot be split into 4-bit blocks."""
    import torch

    bad = [f"{name} {tuple(module.weight.shape)}" for name, module in model.named_modules()
           if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in SKIPPED_MODULES
           and module.weight.numel() % BNB_BLOCK]
    if bad:
        raise ConfigError(f"4-bit quantization needs each Linear weight size to be a multiple of {BNB_BLOCK}; "
                          f"these are not: {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}",
                          "use --scheme bnb-int8 or torch-int8 for this model, or pick dims divisible by 64")


def _check(source, config) -> None:
    if config.scheme != "bnb-int8":
        check_4bit_dims(source.model)


def _build(source, config, out_dir: Path, calibration) -> dict[str, Any]:
    from training.artifact.loading import torch_dtype

    model = source.model.to(torch_dtype(config.compute_dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
    settings = {"scheme": config.scheme, "compute_dtype": config.compute_dtype, "blocksize": BNB_BLOCK,
                "quant_type": config.scheme.removeprefix("bnb-")}
    (out_dir / BNB_CONFIG).write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return {"format": "float safetensors, quantized by bitsandbytes at load", **settings}


for _name, _bits, _what in zip(BNB_SCHEMES, (8, 4, 4), ("LLM.int8()", "4-bit NormalFloat", "4-bit float")):
    register_scheme(Scheme(_name, "quantized-model", _bits, f"bitsandbytes {_what} at load time (GPU; CPU works)",
                           accepts_adapters=True, max_logit_diff=2.0 if _bits == 8 else 4.0,
                           min_agreement=0.5 if _bits == 8 else 0.25, check=_check, tasks=("causal-lm", "classification"),
                           ))(_build)
