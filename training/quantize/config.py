"""Configuration of `tuneserve quantize` / `tuneserve export` (YAML + `key=value` overrides).

    cfg = load_config(QuantizeConfig, None, ["scheme=onnx-int8-static", "calibration=data/prepared"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from training.artifact.config import StrictModel


class ParityConfig(StrictModel):
    """How the quantized model is compared with the float one it came from."""

    samples: int = Field(8, ge=1, le=256, description="texts compared (from calibration data or built-in prompts)")
    new_tokens: int = Field(16, ge=1, le=256, description="greedy tokens generated per prompt")
    max_length: int = Field(64, ge=8, le=2048)
    latency_repeats: int = Field(3, ge=0, le=100, description="0 skips the latency measurement")
    max_logit_diff: float | None = Field(None, gt=0, description="tolerance; default is the scheme's own")
    max_kl: float | None = Field(None, gt=0, description="mean next-token KL(fp32 || quantized); default per scheme")
    min_agreement: float | None = Field(None, ge=0, le=1,
                                        description="teacher-forced top-1 (causal LM) / label agreement; default per scheme")


class QATConfig(StrictModel):
    """The short fine-tune with fake-quant observers that `qat-int8` runs before converting."""

    steps: int = Field(60, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    max_length: int = Field(64, ge=8)


class QuantizeConfig(StrictModel):
    scheme: str = "torch-int8"
    merge: bool = Field(False, description="merge a LoRA adapter into its base before quantizing")
    task: Literal["causal-lm", "classification"] | None = Field(None, description="task of a plain base model")
    labels: list[str] | None = None
    calibration: Path | None = Field(None, description="prepared dataset dir, .jsonl or .txt file")
    calibration_samples: int = Field(64, ge=1, le=100_000)
    calibration_split: str = "train"
    quantize_embeddings: bool = Field(True, description="int8 embeddings and head too, not only Linear layers")
    int8_activations: Literal["per-token", "per-tensor"] = Field(
        "per-token", description="torch-int8 activations: a scale per token, or one per tensor (torch's dynamic "
                                 "Linear; loses outlier-heavy Llama-family models)")
    opset: int = Field(18, ge=13, le=23)
    onnx_exporter: Literal["auto", "tuneserve", "torch"] = Field(
        "auto", description="causal-LM ONNX graph: tuneserve's lean Llama-family builder (ONNX Runtime kernels), "
                            "torch.onnx's generic export (dynamo, standard ops), or auto (tuneserve where it applies)")
    onnx_weight_type: Literal["uint8", "int8"] = Field("uint8", description="ORT int8 weight type (int8 uses reduce_range)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0
    parity: ParityConfig = Field(default_factory=ParityConfig)
    qat: QATConfig = Field(default_factory=QATConfig)
