"""ONNX export of any transformers decoder (with its KV cache) or classifier by `torch.onnx.export(dynamo=True)`.

The exporter behind `onnx_exporter: torch` and the fallback of `auto` for every model the lean
Llama builder (`training.quantize.llama_onnx`) does not cover (GPT-2, Phi, BERT, MiniLM, ...).
`torch.export` traces the model's own forward, so the graph holds standard ONNX ops only
(onnxscript's optimizer folds the shape arithmetic), and any architecture transformers can
run with a `DynamicCache` exports the same way:
- causal LM: inputs `input_ids`, `attention_mask`, `position_ids`, `past_key_values.N.key|value`
  -> `logits`, `present.N.key|value` (the names `OnnxCausalLM` and the lean builder use);
  an empty past (length 0) is a prefill, batch and all lengths are dynamic;
- classifier: `input_ids`, `attention_mask` (and `token_type_ids` where the model takes them) -> `logits`.
The exporter writes opset 18; a lower `opset` is reached with ONNX's version converter.

    path = export_torch_onnx(model, "causal-lm", Path("work/onnx/model.onnx"), opset=17)
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

from training.artifact.errors import TrainingError
from training.quantize.llama_onnx import EXTERNAL_DATA_BYTES

EXPORTER_OPSET = 18  # the opset torch's dynamo exporter writes natively
SAMPLE_BATCH, SAMPLE_SEQUENCE, SAMPLE_PAST = 2, 3, 4  # torch.export specialises sizes 0 and 1, so trace with >1


def _decoder_module(model):
    """A module taking flat past tensors and returning logits plus flat present tensors (what ONNX needs)."""
    import torch
    from transformers import DynamicCache

    class DecoderWithCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache()
            for index, (key, value) in enumerate(past):
                cache.update(key, value, index)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True)
            return out.logits, [(layer.keys, layer.values) for layer in out.cache.layers]

    return DecoderWithCache()


def _kv_geometry(model) -> tuple[int, int, int]:
    config = model.config.get_text_config(decoder=True)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def _decoder_export(model):
    """(module, sample args, dynamic shapes, input names, output names) for a decoder with its KV cache."""
    import torch

    layers, kv_heads, head_dim = _kv_geometry(model)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    past_sequence = torch.export.Dim("past_sequence")
    ids = torch.full((SAMPLE_BATCH, SAMPLE_SEQUENCE), 3, dtype=torch.long)
    mask = torch.ones((SAMPLE_BATCH, SAMPLE_PAST + SAMPLE_SEQUENCE), dtype=torch.long)
    positions = torch.arange(SAMPLE_PAST, SAMPLE_PAST + SAMPLE_SEQUENCE)[None].expand(SAMPLE_BATCH, -1)
    dtype = next(model.parameters()).dtype
    # distinct tensors: torch.export treats one tensor passed twice as one input (values would read the keys)
    past = [tuple(torch.zeros(SAMPLE_BATCH, kv_heads, SAMPLE_PAST, head_dim, dtype=dtype) for _ in range(2))
            for _ in range(layers)]
    shapes = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: torch.export.Dim.DYNAMIC},
              "position_ids": {0: batch, 1: sequence},
              "past": [({0: batch, 2: past_sequence},) * 2 for _ in range(layers)]}
    pairs = [f"{i}.{part}" for i in range(layers) for part in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{p}" for p in pairs)]
    return _decoder_module(model), (ids, mask, positions, past), shapes, inputs, ["logits", *(f"present.{p}" for p in pairs)]


def classifier_inputs(model) -> list[str]:
    """The encoder inputs a classifier graph takes: `token_type_ids` only where the model's forward has it."""
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    return ["input_ids", "attention_mask", *(["token_type_ids"] if takes_types else [])]


def _classifier_export(model):
    import torch

    names = classifier_inputs(model)

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **types).logits

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    sample = tuple(torch.ones((SAMPLE_BATCH, SAMPLE_SEQUENCE + 2), dtype=torch.long) for _ in names)
    return Classifier(), sample, {name: {0: batch, 1: sequence} for name in names}, names, ["logits"]


def _drop_default_attributes(graph, opset: int):
    """Remove attributes the target opset's schema lacks that hold their default (0).

    ONNX's converter moves Reduce* `axes` back to an attribute below 18 but keeps
    `noop_with_empty_axes=0`, which ONNX Runtime rejects on e.g. ReduceMean-13.
    """
    import onnx

    for node in graph.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        allowed = onnx.defs.get_schema(node.op_type, opset, "").attributes
        extra = [a for a in node.attribute if a.name not in allowed]
        if any(onnx.helper.get_attribute_value(a) != 0 for a in extra):
            raise ValueError(f"{node.op_type} needs {[a.name for a in extra]}, which opset {opset} does not have")
        for attribute in extra:
            node.attribute.remove(attribute)
    return graph


def export_torch_onnx(model, task: str, out_path: Path, opset: int) -> Path:
    """Export `model` (eval mode, float) for `task` (causal-lm or classification) to `out_path`."""
    import onnx
    import torch

    module, args, shapes, inputs, outputs = (_decoder_export if task == "causal-lm" else _classifier_export)(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter warns about every dim name it renames
            program = torch.onnx.export(module.eval(), args, dynamo=True, opset_version=EXPORTER_OPSET,
                                        dynamic_shapes=shapes, input_names=inputs, output_names=outputs,
                                        optimize=True, verbose=False)
        graph = program.model_proto
        if opset != EXPORTER_OPSET:
            graph = _drop_default_attributes(onnx.version_converter.convert_version(graph, opset), opset)
    except Exception as exc:  # torch.export and the converter raise many types; the user needs the reason
        raise TrainingError(f"ONNX export of this {task} model at opset {opset} failed: {exc}",
                            f"try --opset {EXPORTER_OPSET} (the exporter's own opset)") from None
    large = sum(len(t.raw_data) for t in graph.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save(graph, str(out_path), save_as_external_data=large, location=f"{out_path.name}_data")
    return out_path
