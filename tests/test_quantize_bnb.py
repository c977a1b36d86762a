"""bitsandbytes 8-bit / 4-bit loading (CPU here, CUDA in the gpu test) and the QLoRA-style adapter path."""

from __future__ import annotations

import pytest
import torch
from quantize_support import PROMPTS, greedy_tokens, last_logits, make_adapter_artifact

from training.artifact import load_artifact
from training.artifact.errors import ConfigError
from training.artifact.loading import attach_adapter, load_model_artifact
from training.quantize import ParityConfig, QuantizeConfig, quantize

FAST = ParityConfig(samples=2, new_tokens=4, latency_repeats=0)
torch.set_num_threads(2)


def _module_types(model) -> set[str]:
    return {type(m).__name__ for m in model.modules()}


@pytest.fixture(scope="module")
def nf4_dir(tiny_base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bnb") / "nf4"
    quantize(str(tiny_base_dir), QuantizeConfig(scheme="bnb-nf4", parity=FAST), out)
    return out


def _check_bnb_artifact(out, scheme: str, layer: str):
    artifact = load_artifact(out, expect_kind="quantized-model")
    q = artifact.manifest.quantization
    assert q["scheme"] == scheme and q["accepts_adapters"] and q["memory_bytes"] < q["fp32_size_bytes"]
    assert artifact.manifest.metrics["parity"]["passed"], artifact.manifest.metrics["parity"]
    loaded = load_model_artifact(artifact)
    assert layer in _module_types(loaded.model)
    assert greedy_tokens(loaded.model, loaded.tokenizer, new_tokens=4).shape == (len(PROMPTS), 4)
    return loaded


def test_nf4_loads_generates_and_takes_an_adapter(nf4_dir, tiny_base_dir, tmp_path):
    """The QLoRA-style serving path: 4-bit base, LoRA adapter attached on top, on CPU."""
    loaded = _check_bnb_artifact(nf4_dir, "bnb-nf4", "Linear4bit")
    adapter = make_adapter_artifact(tiny_base_dir, tmp_path / "adapter")
    plain = last_logits(loaded.model, loaded.tokenizer)
    model = attach_adapter(loaded.model, load_artifact(adapter, expect_base_sha256=loaded.sha256), "tenant-a")
    assert "Linear4bit" in _module_types(model) and "tenant-a" in model.peft_config
    with_adapter = last_logits(model, loaded.tokenizer)
    assert (plain - with_adapter).abs().max() > 1e-3, "the adapter changed nothing on the 4-bit base"
    assert greedy_tokens(model, loaded.tokenizer, new_tokens=4).shape == (len(PROMPTS), 4)


@pytest.mark.slow
def test_bnb_int8_loads_and_generates_on_cpu(tiny_base_dir, tmp_path):
    quantize(str(tiny_base_dir), QuantizeConfig(scheme="bnb-int8", parity=FAST), tmp_path / "int8")
    _check_bnb_artifact(tmp_path / "int8", "bnb-int8", "Linear8bitLt")


def test_4bit_refuses_dims_not_divisible_by_block(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    odd = tmp_path / "odd-base"
    # 2 heads of 18: transformers 5 refuses odd rotary head sizes (36 / 4 = 9)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=36, intermediate_size=70, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(odd)
    from quantize_support import copy_tokenizer

    copy_tokenizer(odd)
    with pytest.raises(ConfigError, match="multiple of 64") as info:
        quantize(str(odd), QuantizeConfig(scheme="bnb-nf4"), tmp_path / "x")
    assert "q_proj" in info.value.message and "bnb-int8" in info.value.hint
    assert not (tmp_path / "x").exists()


@pytest.mark.gpu
def test_bnb_4bit_qlora_step_on_cuda(tiny_base_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    out = tmp_path / "nf4"
    quantize(str(tiny_base_dir), QuantizeConfig(scheme="bnb-nf4", compute_dtype="bfloat16", parity=FAST), out)
    loaded = load_model_artifact(load_artifact(out))
    assert loaded.info["device"].startswith("cuda") and "Linear4bit" in _module_types(loaded.model)
    batch = loaded.tokenizer(PROMPTS, return_tensors="pt", padding=True).to("cuda")
    generated = loaded.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      max_new_tokens=8, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 8
    model = get_peft_model(prepare_model_for_kbit_training(loaded.model),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    before = [p.detach().clone() for p in lora]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, lora)), "the QLoRA step did not update the adapter"
