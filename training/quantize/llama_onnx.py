"""A lean ONNX Runtime graph for Llama-family decoders (Llama, Mistral without sliding window, Qwen2), built from the weights.

A generic export (`torch.onnx`, optimum) traces transformers' Python: on a small model the graph is mostly
shape arithmetic, mask building and rotary bookkeeping (~490 nodes after ONNX Runtime's
fusions for the 4-layer tiny base), and every node costs a fixed overhead per decode step.
This builder writes the decoder directly with ONNX Runtime's own kernels for the attention
block, the way onnxruntime-genai's model builder does, ~90 nodes after fusions:
- per layer: RMSNorm, one fused QKV MatMul, `com.microsoft.RotaryEmbedding` on q and k,
  `com.microsoft.GroupQueryAttention` (grouped heads, KV-cache concat, causal mask and
  softmax scale in one kernel), o_proj, RMSNorm, one fused gate/up MatMul, SiLU, down_proj;
- rotary cos/sin come from the model's own rotary module (any `rope_scaling` it supports is
  honoured) and rotary positions are the `position_ids` input, so left-padded batches work;
- left padding reaches the attention as an additive bias built once per call from `attention_mask`.
Inputs and outputs have the usual names (`input_ids`, `attention_mask`, `position_ids`,
`past_key_values.N.key|value` -> `logits`, `present.N.key|value`), so
`training.artifact.onnx_lm.OnnxCausalLM` and ORT's quantizer treat both exports alike.
The graph needs ONNX Runtime (contrib ops); `onnx_exporter: torch` writes standard ops only.

    path = export_llama_onnx(model, Path("work/onnx/model.onnx"), opset=18)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
MIN_OPSET = 18  # Split and ReduceMean take their sizes/axes as inputs from 18 on
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit: bigger weights go to model.onnx_data
ORT_DOMAIN = "com.microsoft"


def unsupported_reason(model, opset: int) -> str | None:
    """Why the lean builder cannot export this model (None when it can)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    if opset < MIN_OPSET:
        return f"opset {opset} < {MIN_OPSET}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    if getattr(config, "mlp_bias", False):
        return "MLP biases"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) \
            and config.sliding_window < config.max_position_embeddings:
        return "sliding-window attention"
    if not hasattr(getattr(model, "model", None), "rotary_emb"):
        return "the model has no shared rotary embedding module"
    return None


def _int64(value):
    """An int64 initializer value: `_int64(1)` a scalar, `_int64([1])` a 1-D array."""
    import numpy as np

    return np.array(value, dtype=np.int64)


class _Graph:
    """Collects nodes and initializers; node outputs get unique names unless given."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def const(self, name: str, array) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: Any) -> Any:
        from onnx import helper

        self._count += 1
        names = outputs if isinstance(outputs, list) else [f"{op_type.lower()}_{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{op_type}_{self._count}", **attrs))
        return names[0] if len(names) == 1 else names


def _weights(model) -> dict[str, Any]:
    return {name: tensor.detach().float().cpu().numpy() for name, tensor in model.state_dict().items()}


def _rotary_halves(model, head_dim: int) -> tuple[Any, Any]:
    """cos/sin [max_positions, head_dim / 2] from the model's rotary module (its scaling included)."""
    import torch

    positions = torch.arange(model.config.max_position_embeddings)[None]
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    half = head_dim // 2  # transformers repeats the frequencies: cat(freqs, freqs)
    return cos[0, :, :half].float().numpy().copy(), sin[0, :, :half].float().numpy().copy()


class _LlamaBuilder:
    """Writes the decoder graph for one model into a `_Graph`."""

    def __init__(self, model) -> None:
        import numpy as np

        config = model.config
        self.model, self.config, self.w, self.g = model, config, _weights(model), _Graph()
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        g = self.g
        self.eps = g.const("rms_eps", np.array(config.rms_norm_eps, dtype=np.float32))
        self.two = g.const("two", np.array(2.0, dtype=np.float32))
        self.last_axis = g.const("last_axis", _int64([-1]))
        self.qkv_split = g.const("qkv_split", _int64([self.heads * self.head_dim, *[self.kv_heads * self.head_dim] * 2]))
        self.mlp_split = g.const("mlp_split", _int64([config.intermediate_size, config.intermediate_size]))
        cos, sin = _rotary_halves(model, self.head_dim)
        self.cos, self.sin = g.const("rotary.cos", cos), g.const("rotary.sin", sin)

    def weight(self, name: str, transpose: bool = False) -> str:
        array = self.w[name]
        return self.g.const(name, array.T.copy() if transpose else array)

    def rms_norm(self, x: str, weight: str) -> str:
        # Pow/ReduceMean/Add/Sqrt/Div/Mul is the chain ORT fuses into SimplifiedLayerNormalization.
        g = self.g
        mean = g.op("ReduceMean", [g.op("Pow", [x, self.two]), self.last_axis], keepdims=1)
        return g.op("Mul", [g.op("Div", [x, g.op("Sqrt", [g.op("Add", [mean, self.eps])])]), self.weight(weight)])

    def attention_inputs(self) -> tuple[str, str, str, str]:
        """(bias [b, 1, t, T], seqlens_k [b], total length, query lengths [b]; int32) shared by every layer."""
        import numpy as np
        from onnx import TensorProto

        g = self.g
        zero, one = g.const("zero_i64", _int64(0)), g.const("one_i64", _int64(1))  # scalars: index, range bounds
        total = g.op("Gather", [g.op("Shape", ["attention_mask"]), one], axis=0)
        new = g.op("Gather", [g.op("Shape", ["input_ids"]), one], axis=0)
        # key j is visible to query i iff attention_mask[j] and j <= T - t + i (GQA applies causality
        # too; the bias must cover left padding, and a full causal bias keeps padded query rows finite)
        query_pos = g.op("Unsqueeze", [g.op("Range", [g.op("Sub", [total, new]), total, one]), self.last_axis])
        causal = g.op("LessOrEqual", [g.op("Range", [zero, total, one]), query_pos])
        axis_1 = g.const("axis_1", _int64([1]))  # also the end of the batch-size slice
        padding = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), axis_1])
        blocked = g.const("blocked", np.array(np.finfo(np.float32).min, dtype=np.float32))
        bias = g.op("Unsqueeze", [g.op("Where", [g.op("And", [causal, padding]),
                                                 g.const("zero_f32", np.array(0.0, dtype=np.float32)), blocked]),
                                  axis_1])
        total_i32 = g.op("Cast", [total], to=TensorProto.INT32)
        batch = g.op("Slice", [g.op("Shape", ["input_ids"]), g.const("zero_1d", _int64([0])), axis_1])
        seqlens = g.op("Expand", [g.op("Sub", [total_i32, g.const("one_i32", np.array(1, dtype=np.int32))]), batch])
        query_lengths = g.op("Expand", [g.op("Cast", [new], to=TensorProto.INT32), batch])
        return bias, seqlens, total_i32, query_lengths

    def layer(self, i: int, x: str, attention: tuple[str, str, str, str]) -> str:
        import numpy as np

        g, w, p = self.g, self.w, f"model.layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        qkv = np.concatenate([w[f"{attn}{n}_proj.weight"].T for n in "qkv"], axis=1)
        projected = g.op("MatMul", [self.rms_norm(x, p + "input_layernorm.weight"), g.const(f"{attn}qkv_proj.weight", qkv)])
        if f"{attn}q_proj.bias" in w:  # Qwen2
            bias = np.concatenate([w[f"{attn}{n}_proj.bias"] for n in "qkv"])
            projected = g.op("Add", [projected, g.const(f"{attn}qkv_proj.bias", bias)])
        q, k, v = g.op("Split", [projected, self.qkv_split], 3, axis=-1)
        q = g.op("RotaryEmbedding", [q, "position_ids", self.cos, self.sin], domain=ORT_DOMAIN, num_heads=self.heads)
        k = g.op("RotaryEmbedding", [k, "position_ids", self.cos, self.sin], domain=ORT_DOMAIN, num_heads=self.kv_heads)
        bias, seqlens, total, query_lengths = attention
        scale = float(getattr(self.model.model.layers[i].self_attn, "scaling", self.head_dim ** -0.5))
        context = g.op("GroupQueryAttention",
                       [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total, "", "", "", bias,
                        "", "", "", "", "", query_lengths],
                       [f"attention_{i}", f"present.{i}.key", f"present.{i}.value"], domain=ORT_DOMAIN,
                       num_heads=self.heads, kv_num_heads=self.kv_heads, scale=scale)[0]
        out = g.op("MatMul", [context, self.weight(f"{attn}o_proj.weight", transpose=True)])
        if f"{attn}o_proj.bias" in w:
            out = g.op("Add", [out, self.weight(f"{attn}o_proj.bias")])
        x = g.op("Add", [x, out])
        gate_up = np.concatenate([w[f"{mlp}gate_proj.weight"].T, w[f"{mlp}up_proj.weight"].T], axis=1)
        normed = self.rms_norm(x, p + "post_attention_layernorm.weight")
        gate, up = g.op("Split", [g.op("MatMul", [normed, g.const(f"{mlp}gate_up_proj.weight", gate_up)]), self.mlp_split],
                        2, axis=-1)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        return g.op("Add", [x, g.op("MatMul", [act, self.weight(f"{mlp}down_proj.weight", transpose=True)])])

    def io(self) -> tuple[list, list]:
        from onnx import TensorProto, helper

        tokens = ["batch_size", "sequence_length"]
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, tokens),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
                  helper.make_tensor_value_info("position_ids", TensorProto.INT64, tokens)]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*tokens, self.config.vocab_size])]
        for i in range(self.config.num_hidden_layers):
            for part in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", TensorProto.FLOAT,
                                                            ["batch_size", self.kv_heads, "past_sequence_length", self.head_dim]))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", TensorProto.FLOAT,
                                                             ["batch_size", self.kv_heads, "total_sequence_length", self.head_dim]))
        return inputs, outputs

    def build(self, opset: int):
        import onnx
        from onnx import helper

        g = self.g
        x = g.op("Gather", [self.weight("model.embed_tokens.weight"), "input_ids"], axis=0)
        attention = self.attention_inputs()
        for i in range(self.config.num_hidden_layers):
            x = self.layer(i, x, attention)
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])  # tied embeddings
        g.op("MatMul", [self.rms_norm(x, "model.norm.weight"), g.const("lm_head.weight", head.T.copy())], ["logits"])
        inputs, outputs = self.io()
        graph = helper.make_graph(g.nodes, "tuneserve-llama", inputs, outputs, g.initializers)
        proto = helper.make_model(graph, producer_name="tuneserve",
                                  opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ORT_DOMAIN, 1)])
        proto.ir_version = min(proto.ir_version, onnx.IR_VERSION)
        # ONNX's own shape inference stops at contrib ops; ORT's typed value_info lets its
        # quantizer calibrate and quantize the MatMuls behind the attention kernel.
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)


def export_llama_onnx(model, path: Path, opset: int) -> Path:
    """Write the lean graph of `model` to `path` (weights beside it in `<name>_data` when over 1.8 GB)."""
    import onnx

    reason = unsupported_reason(model, opset)
    if reason:
        raise ValueError(f"the lean Llama exporter cannot export this model: {reason}")
    proto = _LlamaBuilder(model).build(opset)
    path.parent.mkdir(parents=True, exist_ok=True)
    large = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(path), save_as_external_data=large, location=f"{path.name}_data" if large else None)
    return path
