"""Schemes `onnx-fp32`, `onnx-int8-dynamic`, `onnx-int8-static`: ONNX export + ONNX Runtime int8.

Causal LMs are exported with their KV cache, classifiers as `text-classification`, at the
configured opset. Llama-family decoders go through tuneserve's lean builder
(`training.quantize.llama_onnx`, ONNX Runtime's attention kernels, ~5x fewer nodes) unless
`onnx_exporter: torch` asks for the standard-ops export by `torch.onnx.export(dynamo=True)`
(`training.quantize.torch_onnx`), which every other model uses. Int8 uses ONNX Runtime's quantizer with per-channel int8 weights on MatMul (the head
included) and per-row int8 embedding tables (ORT's own Gather quantization is per-tensor,
which costs too much quality): dynamic quantizes activations at run time, static calibrates
activation ranges on calibration texts (MinMax) and needs `--calibration`.

    tuneserve export artifacts/my-merged --out artifacts/my-onnx --int8 dynamic --opset 18
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError
from training.artifact.quantized import ONNX_FILE
from training.quantize.schemes import Scheme, register_scheme

EXPORT_TASKS = {"causal-lm": "text-generation-with-past", "classification": "text-classification"}
INT8_OPS = ["MatMul", "Gemm"]
MIN_EMBEDDING_VALUES = 4096  # smaller Gather tables (e.g. constants) stay float
FLOAT_TABLE_PREFIXES = ("rotary.",)  # the lean Llama graph's cos/sin tables: positions, not weights


def choose_exporter(source, config) -> str:
    """`tuneserve` (lean Llama-family graph) or `torch` (torch.onnx dynamo), as `onnx_exporter` asks and the model allows."""
    from training.quantize.llama_onnx import unsupported_reason

    if config.onnx_exporter == "torch" or source.task != "causal-lm":
        return "torch"
    reason = unsupported_reason(source.model, config.opset)
    if reason and config.onnx_exporter == "tuneserve":
        raise ConfigError(f"onnx_exporter=tuneserve cannot export this model: {reason}",
                          "use onnx_exporter=auto or onnx_exporter=torch (torch.onnx's generic export)")
    return "torch" if reason else "tuneserve"


def export_onnx(source, config, work: Path, exporter: str = "torch") -> Path:
    """Export the in-memory source model to `work/onnx/model.onnx` (lean builder or torch.onnx)."""
    out_path = work / "onnx" / ONNX_FILE
    if exporter == "tuneserve":
        from training.quantize.llama_onnx import export_llama_onnx

        return export_llama_onnx(source.model, out_path, config.opset)
    from training.quantize.torch_onnx import export_torch_onnx

    return export_torch_onnx(source.model, source.task, out_path, config.opset)


def copy_onnx(model_path: Path, out_dir: Path) -> None:
    for path in model_path.parent.iterdir():
        if path.name.startswith(model_path.name):  # model.onnx and model.onnx_data
            shutil.copy2(path, out_dir / path.name)


class CalibrationReader:
    """Feeds tokenized calibration texts (and an empty KV cache for decoders) to ORT's calibrator."""

    def __init__(self, model_path: Path, tokenizer, texts: list[str], max_length: int) -> None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in session.get_inputs()}
        self.feeds = iter([self._feed(tokenizer, text, max_length) for text in texts])

    def _feed(self, tokenizer, text: str, max_length: int) -> dict[str, Any]:
        import numpy as np

        encoded = tokenizer(text, return_tensors="np", truncation=True, max_length=max_length)
        length = encoded["input_ids"].shape[1]
        feed: dict[str, Any] = {}
        for name, spec in self.inputs.items():
            if name in encoded:
                feed[name] = encoded[name].astype(np.int64)
            elif name == "position_ids":
                feed[name] = np.arange(length, dtype=np.int64)[None]
            elif name.startswith("past_key_values"):
                shape = [d if isinstance(d, int) else (0 if "past" in d else 1) for d in spec.shape]
                feed[name] = np.zeros(shape, dtype=np.float32)
            elif name == "token_type_ids":
                feed[name] = np.zeros((1, length), dtype=np.int64)
        return feed

    def get_next(self):
        return next(self.feeds, None)


def int8_embedding_rows(model_path: Path, out_path: Path) -> int:
    """Rewrite float embedding Gathers as int8 table + per-row scale (Gather, Cast, Gather, Mul)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    rewritten, nodes = 0, []
    for node in graph.node:
        table = numpy_helper.to_array(initializers[node.input[0]]) if node.op_type == "Gather" \
            and node.input[0] in initializers else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or axis != 0 or table.ndim != 2 or table.dtype != np.float32 \
                or table.size < MIN_EMBEDDING_VALUES or node.input[0].startswith(FLOAT_TABLE_PREFIXES):
            nodes.append(node)
            continue
        scale = np.maximum(np.abs(table).max(axis=1, keepdims=True) / 127.0, 1e-12).astype(np.float32)
        rows = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        name, ids, out = node.input[0], node.input[1], node.output[0]
        graph.initializer.extend([numpy_helper.from_array(rows, f"{name}_int8"),
                                  numpy_helper.from_array(scale, f"{name}_row_scale")])
        nodes += [helper.make_node("Gather", [f"{name}_int8", ids], [f"{out}_int8"], axis=0),
                  helper.make_node("Cast", [f"{out}_int8"], [f"{out}_cast"], to=onnx.TensorProto.FLOAT),
                  helper.make_node("Gather", [f"{name}_row_scale", ids], [f"{out}_scale"], axis=0),
                  helper.make_node("Mul", [f"{out}_cast", f"{out}_scale"], [out])]
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(model, str(out_path))
    return rewritten


def quantize_onnx(model_path: Path, out_path: Path, static: bool, reader: CalibrationReader | None,
                  weight_type: str) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    # Signed int8 weights with uint8 activations saturate in x86 kernels without VNNI; ORT's
    # documented remedy is reduce_range (7-bit weights). uint8 weights avoid it at full range.
    common = {"per_channel": True, "weight_type": QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
              "reduce_range": weight_type == "int8", "op_types_to_quantize": INT8_OPS,
              # ONNX shape inference stops at ORT's contrib ops (the lean Llama graph's attention)
              "extra_options": {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}}
    if static:
        quantize_static(str(model_path), str(out_path), reader, quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax, **common)
    else:
        quantize_dynamic(str(model_path), str(out_path), **common)


def _build(source, config, out_dir: Path, calibration, mode: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tuneserve-onnx-") as tmp:
        work = Path(tmp)
        exporter = choose_exporter(source, config)
        exported = export_onnx(source, config, work, exporter)
        details: dict[str, Any] = {"format": "onnx", "opset": config.opset, "export_task": EXPORT_TASKS[source.task],
                                   "kv_cache": source.task == "causal-lm", "exporter": exporter}
        if mode is None:
            copy_onnx(exported, out_dir)
            return details
        reader = None
        if mode == "static":
            reader = CalibrationReader(exported, source.tokenizer, calibration.texts, config.parity.max_length)
        quantized, rows = work / "int8" / ONNX_FILE, work / "rows" / ONNX_FILE
        quantized.parent.mkdir()
        rows.parent.mkdir()
        embeddings = int8_embedding_rows(exported, rows) if config.quantize_embeddings else 0
        quantize_onnx(rows if embeddings else exported, quantized, mode == "static", reader, config.onnx_weight_type)
        copy_onnx(quantized, out_dir)
        details.update(activations=mode, weights=f"{config.onnx_weight_type} per-channel", ops=INT8_OPS, quantized_embeddings=embeddings)
        return details


@register_scheme(Scheme("onnx-fp32", "onnx-model", 32, "ONNX export (KV cache for causal LM), fp32",
                        max_logit_diff=1e-3, min_agreement=0.9))
def build_onnx_fp32(source, config, out_dir, calibration):
    return _build(source, config, out_dir, calibration, None)


@register_scheme(Scheme("onnx-int8-dynamic", "onnx-model", 8, "ONNX Runtime int8, dynamic activations",
                        max_logit_diff=2.0, min_agreement=0.5))
def build_onnx_dynamic(source, config, out_dir, calibration):
    return _build(source, config, out_dir, calibration, "dynamic")


@register_scheme(Scheme("onnx-int8-static", "onnx-model", 8, "ONNX Runtime int8, static (calibrated) activations",
                        needs_calibration=True, max_logit_diff=4.0, min_agreement=0.3))
def build_onnx_static(source, config, out_dir, calibration):
    return _build(source, config, out_dir, calibration, "static")
