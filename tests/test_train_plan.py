"""`tuneserve plan`: estimates follow the documented formulas on known sizes; recommendations make sense."""

from __future__ import annotations

import pytest

from training.artifact.errors import ConfigError
from training.train.plan import GB, PlanRequest, parse_size, plan, shape_from_size


def _by_method(result):
    return {c["method"]: c for c in result["candidates"]}


def test_parse_sizes():
    assert parse_size("7b") == 7_000_000_000 and parse_size("350M") == 350_000_000
    assert parse_size("1.3e9") == 1_300_000_000 and parse_size("tiny-llama") is None


def test_llama_like_shape_for_7b():
    shape = shape_from_size(7_000_000_000, None)
    assert 4000 <= shape.hidden <= 4400 and 30 <= shape.layers <= 35


def test_1b_on_gpu_matches_formulas():
    result = plan(PlanRequest(model="1b", gpu_memory_gb=80, batch_size=1, seq_len=256, task="classification"))
    c = _by_method(result)
    p = 1_000_000_000
    assert c["full"]["weights"] == p * 2 + p * 4  # bf16 weights + fp32 master copy
    assert c["full"]["gradients"] == p * 4 and c["full"]["optimizer"] == p * 8
    assert c["qlora"]["weights"] < c["lora"]["weights"] / 3
    assert c["lora"]["trainable"] == 8 * 2 * result["model"]["hidden"] * 2 * result["model"]["layers"]
    assert c["full"]["activations"] == c["prompt"]["activations"] < c["lora"]["activations"]  # LoRA keeps its inputs
    assert result["recommendation"] == "lora"  # 1000 rows: full fits but is not worth it


def test_7b_on_24gb_gpu_recommends_lora_and_on_12gb_qlora():
    big = plan(PlanRequest(model="7b", gpu_memory_gb=24, batch_size=1, seq_len=512))
    assert not _by_method(big)["full"]["fits"] and _by_method(big)["lora"]["fits"]
    assert big["recommendation"] == "lora"
    small = plan(PlanRequest(model="7b", gpu_memory_gb=12, batch_size=1, seq_len=512))
    assert not _by_method(small)["lora"]["fits"] and small["recommendation"] == "qlora"
    assert "4-bit" in small["reason"]


def test_full_recommended_for_small_model_and_large_data_on_cpu():
    result = plan(PlanRequest(model="125m", cpu_memory_gb=24, rows=200_000, batch_size=8, seq_len=256))
    assert result["device"] == "CPU" and result["recommendation"] == "full"
    assert _by_method(result)["full"]["weights"] == 125_000_000 * 4  # fp32 on CPU, no master copy


def test_nothing_fits_says_what_to_do():
    result = plan(PlanRequest(model="70b", gpu_memory_gb=8))
    assert result["recommendation"] is None and "batch_size" in result["reason"]


def test_model_dir_is_sized_from_safetensors(tiny_base_dir):
    import json

    import safetensors.torch

    result = plan(PlanRequest(model=str(tiny_base_dir), cpu_memory_gb=4))
    tensors = safetensors.torch.load_file(str(next(tiny_base_dir.glob("*.safetensors"))))
    assert result["model"]["params"] == sum(t.numel() for t in tensors.values())
    assert result["model"]["hidden"] == json.loads((tiny_base_dir / "config.json").read_text())["hidden_size"]
    assert result["recommendation"] is not None and result["budget_bytes"] == 4 * GB


def test_plan_needs_memory_and_a_known_model():
    with pytest.raises(Exception):
        PlanRequest(model="7b")
    with pytest.raises(ConfigError, match="cannot size"):
        plan(PlanRequest(model="/no/such/model", cpu_memory_gb=1))


def test_lora_targets_are_sized_from_the_model_shapes(tiny_base_dir):
    """Named targets count r x (in + out) of each matching linear, as PEFT builds them (GQA k/v are narrower)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    result = plan(PlanRequest(model=str(tiny_base_dir), cpu_memory_gb=4, lora_r=8, lora_target_modules=targets))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)),
                           LoraConfig(r=8, target_modules=targets))
    assert _by_method(result)["lora"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_estimate_is_within_the_band_of_a_measured_training_peak(method):
    """P9 on a small run: plan's total ÷ the peak RSS of three real training steps (a fresh process)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import json, sys; from benchmarks.memory import train_peak, plan_total; "
            f"case = dict(base='tiny-llama', task='causal-lm', method={method!r}, batch=4, seq=128); "
            "case.update(train_peak(case['base'], case['task'], case['method'], case['batch'], case['seq'])); "
            "case.update(plan_total(case)); print(json.dumps(case))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=root)
    case = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.75 <= case["estimate_bytes"] / case["measured_bytes"] <= 1.25, case


def test_lora_recommendation_advises_each_variant_for_the_request():
    from io import StringIO

    from rich.console import Console

    from training.train.plan import render_plan

    low = plan(PlanRequest(model="7b", gpu_memory_gb=24, batch_size=1, seq_len=512, lora_r=8, rows=2000))
    high = plan(PlanRequest(model="7b", gpu_memory_gb=24, batch_size=1, seq_len=512, lora_r=64, rows=50_000))
    assert set(low["advice"]) == {"rslora", "loraplus", "neftune", "init", "packing", "recipe"}
    assert "packing=true" in low["advice"]["packing"] and "512-token" in low["advice"]["packing"]
    assert "for 2000 rows" in low["advice"]["recipe"] and "epochs" in low["advice"]["recipe"]
    few, many = (plan(PlanRequest(model="7b", gpu_memory_gb=24, batch_size=1, seq_len=64, task="classification",
                                  rows=rows))["advice"]["recipe"] for rows in (300, 50_000))
    # max(5 000, 200 x labels) examples seen: 300 rows -> 17 epochs
    assert "pick 17 epochs" in few and "pick 4 epochs" in many and "class_weighting=auto" in few
    assert "little effect at r=8" in low["advice"]["rslora"] and "recommended" in high["advice"]["rslora"]
    assert "2000 rows" in low["advice"]["neftune"] and "yours" not in high["advice"]["neftune"]
    assert "loraplus_lr_ratio=16" in low["advice"]["loraplus"] and "not qlora" in low["advice"]["init"]
    full = plan(PlanRequest(model="125m", cpu_memory_gb=24, rows=200_000, batch_size=8, seq_len=256))
    assert set(full["advice"]) == {"packing"}
    classifier = plan(PlanRequest(model="125m", cpu_memory_gb=24, task="classification", rows=200_000))
    assert "packing" not in classifier["advice"]
    out = StringIO()
    render_plan(low, Console(file=out, width=400))
    assert all(line in out.getvalue() for line in low["advice"].values())
