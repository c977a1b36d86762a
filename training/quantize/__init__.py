"""Quantization and export of trained models into deployable artifacts.

Schemes (see `training.quantize.schemes`): `torch-int8` (dynamic int8, CPU), `qat-int8`
(fake-quant fine-tune, then int8), `onnx-fp32` / `onnx-int8-dynamic` / `onnx-int8-static`
(ONNX export: lean Llama graph or torch.onnx, + ONNX Runtime quantization), `bnb-int8` / `bnb-nf4` / `bnb-fp4`
(bitsandbytes at load time). Every output is an artifact (kind quantized-model or
onnx-model) loaded by `training.artifact.loading.load_model_artifact`.

    from training.quantize import QuantizeConfig, quantize
    quantize("tiny-llama", QuantizeConfig(scheme="torch-int8"), "artifacts/tiny-int8")

CLI: `tuneserve quantize SOURCE --scheme torch-int8 --out DIR [--merge]`,
`tuneserve export SOURCE --out DIR [--int8 dynamic|static] [--opset 18]`.
"""

from training.quantize.config import ParityConfig, QATConfig, QuantizeConfig
from training.quantize.pipeline import quantize
from training.quantize.schemes import all_schemes, get_scheme

__all__ = ["ParityConfig", "QATConfig", "QuantizeConfig", "all_schemes", "get_scheme", "quantize"]
