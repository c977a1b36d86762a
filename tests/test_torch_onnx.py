"""The torch.onnx (dynamo) exporter on architectures the lean Llama builder does not cover.

A random tiny GPT-2 decoder (learned positions, fused c_attn, no rotary) exports with its KV
cache and is compared with transformers on a left-padded prefill, a cached step and greedy
generation; a random tiny BERT classifier exports with `token_type_ids` and gives the same
logits through `OnnxSequenceClassifier`.
"""

from __future__ import annotations

import onnx
import pytest
import torch

from training.artifact.onnx_classifier import OnnxSequenceClassifier
from training.artifact.onnx_lm import OnnxCausalLM
from training.quantize.torch_onnx import export_torch_onnx

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("gpt2", vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                  bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config).eval()
    out = tmp_path_factory.mktemp("gpt2")
    config.save_pretrained(out)
    export_torch_onnx(model, "causal-lm", out / "model.onnx", opset=18)
    return model, OnnxCausalLM(out), out / "model.onnx"


def test_gpt2_decoder_with_cache_matches_transformers(gpt2):
    from transformers import DynamicCache

    model, lm, path = gpt2
    graph = onnx.load(str(path))
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}, "standard ops only"
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    got = lm(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert (want - got)[mask.bool()].abs().max() <= TOLERANCE
    cache = DynamicCache()
    lm(input_ids=ids[:, :5], attention_mask=mask[:, :5], position_ids=positions[:, :5], cache=cache)
    step = lm(input_ids=ids[:, 5:], attention_mask=mask, position_ids=positions[:, 5:], cache=cache).logits
    assert (step - want[:, 5:]).abs().max() <= TOLERANCE and cache.get_seq_length() == 7
    with torch.inference_mode():
        expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6,
                                  do_sample=False, pad_token_id=0)
    assert torch.equal(lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6,
                                   pad_token_id=0), expected)


def test_bert_classifier_takes_token_types_and_matches_transformers(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = AutoConfig.for_model("bert", vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    config.save_pretrained(tmp_path)
    export_torch_onnx(model, "classification", tmp_path / "model.onnx", opset=18)
    classifier = OnnxSequenceClassifier(tmp_path)
    assert classifier.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    with torch.inference_mode():
        paired = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        single = model(input_ids=ids, attention_mask=mask).logits
    assert (classifier(input_ids=ids, attention_mask=mask, token_type_ids=types).logits - paired).abs().max() <= TOLERANCE
    assert (classifier(input_ids=ids, attention_mask=mask).logits - single).abs().max() <= TOLERANCE
