"""The lean Llama-family ONNX builder (training.quantize.llama_onnx) against transformers, logit for logit.

Random tiny Llama (grouped-query heads, untied head, llama3 rope scaling), Qwen2 (q/k/v
bias, tied embeddings) and Mistral models; left-padded prefill, cached decode steps and a
multi-token chunk on top of a cache are compared with the same calls in torch.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from training.artifact.errors import ConfigError
from training.artifact.onnx_lm import OnnxCausalLM
from training.quantize.llama_onnx import export_llama_onnx, unsupported_reason
from training.quantize.onnx_export import choose_exporter

TOLERANCE = 1e-4
COMMON = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "max_position_embeddings": 64}


def _model(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**COMMON, **extra})
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


MODELS = {
    "llama-gqa-rope-scaled": lambda: _model("llama", num_key_value_heads=2, rope_scaling={
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "qwen2-bias-tied": lambda: _model("qwen2", num_key_value_heads=1, tie_word_embeddings=True),
    "mistral": lambda: _model("mistral", num_key_value_heads=2, sliding_window=None),
}


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request, tmp_path_factory):
    model = MODELS[request.param]()
    out = tmp_path_factory.mktemp(request.param)
    model.config.save_pretrained(out)
    export_llama_onnx(model, out / "model.onnx", opset=18)
    return model, OnnxCausalLM(out), out / "model.onnx"


def test_left_padded_prefill_steps_and_chunks_match_torch(pair):
    from transformers import DynamicCache

    model, lm, _ = pair
    torch.manual_seed(1)
    ids = torch.randint(3, 96, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, :6] = 0
    caches = DynamicCache(), DynamicCache()

    def both(step_ids, step_mask):
        positions = _positions(step_mask)[:, -step_ids.shape[1]:]
        with torch.inference_mode():
            want = model(input_ids=step_ids, attention_mask=step_mask, position_ids=positions,
                         past_key_values=caches[0]).logits
        got = lm(input_ids=step_ids, attention_mask=step_mask, position_ids=positions, past_key_values=caches[1]).logits
        real = step_mask[:, -step_ids.shape[1]:].bool()
        return (want - got)[real].abs().max().item()

    assert both(ids[:, :5], mask[:, :5]) <= TOLERANCE  # prefill, rows 1 and 2 start padded
    assert both(ids[:, 5:6], mask[:, :6]) <= TOLERANCE  # one cached decode step
    assert both(ids[:, 6:9], mask[:, :9]) <= TOLERANCE  # a 3-token chunk on top of the cache
    assert caches[1].get_seq_length() == 9
    assert torch.allclose(caches[0].layers[0].keys[0], caches[1].layers[0].keys[0], atol=TOLERANCE)


def test_greedy_generate_matches_transformers(pair):
    model, lm, _ = pair
    ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.inference_mode():
        want = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                              pad_token_id=0)
    assert torch.equal(lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, pad_token_id=0),
                       want)


def test_graph_is_lean_and_uses_fused_projections(pair):
    model, _, path = pair
    layers = model.config.num_hidden_layers
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("GroupQueryAttention") == layers and ops.count("RotaryEmbedding") == 2 * layers
    assert ops.count("MatMul") == 4 * layers + 1, "expected fused qkv, o, fused gate/up, down per layer + head"
    assert len(ops) <= 40 * layers + 40


def test_unsupported_models_fall_back_or_fail_clearly():
    from types import SimpleNamespace

    gpt2_like = SimpleNamespace(config=SimpleNamespace(model_type="gpt2"))
    assert "gpt2" in unsupported_reason(gpt2_like, 18)
    llama = MODELS["mistral"]()
    assert "opset 17" in unsupported_reason(llama, 17)
    windowed = _model("mistral", num_key_value_heads=2, sliding_window=8)
    assert unsupported_reason(windowed, 18) == "sliding-window attention"
    assert unsupported_reason(_model("llama", mlp_bias=True), 18) == "MLP biases"
    source = SimpleNamespace(model=windowed, task="causal-lm")
    assert choose_exporter(source, SimpleNamespace(onnx_exporter="auto", opset=18)) == "torch"
    assert choose_exporter(SimpleNamespace(model=llama, task="causal-lm"),
                           SimpleNamespace(onnx_exporter="auto", opset=18)) == "tuneserve"
    with pytest.raises(ConfigError, match="sliding-window"):
        choose_exporter(source, SimpleNamespace(onnx_exporter="tuneserve", opset=18))
    with pytest.raises(ValueError, match="cannot export"):
        export_llama_onnx(windowed, Path("/nonexistent/model.onnx"), 18)
