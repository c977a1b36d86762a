"""torch-int8 quantization: artifact round trip, parity with fp32, LoRA merge, and refused inputs."""

from __future__ import annotations

import json

import pytest
import torch
from quantize_support import last_logits, make_adapter_artifact, teacher_forced_agreement
from safetensors import safe_open

from training.artifact import load_artifact
from training.artifact.int8_linear import PerTokenInt8Linear
from training.artifact.errors import ArtifactInvalid, BaseModelMismatch, ConfigError, DataError
from training.artifact.loading import load_base, load_model_artifact
from training.quantize import ParityConfig, QuantizeConfig, quantize

FAST = ParityConfig(samples=2, new_tokens=4, latency_repeats=0)
# Stated tolerances for per-row int8 on the tiny base (its logits span about ±15).
MAX_LOGIT_DIFF = 1.0
MEAN_LOGIT_DIFF = 0.25
MIN_AGREEMENT = 0.75
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def int8_dir(tiny_base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny-int8"
    quantize(str(tiny_base_dir), QuantizeConfig(scheme="torch-int8", parity=FAST), out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_base_dir, tmp_path_factory):
    return make_adapter_artifact(tiny_base_dir, tmp_path_factory.mktemp("a") / "adapter")


def test_int8_artifact_round_trip_matches_fp32(int8_dir, tiny_base_dir):
    artifact = load_artifact(int8_dir, expect_kind="quantized-model")
    q = artifact.manifest.quantization
    assert q["scheme"] == "torch-int8" and q["bits"] == 8
    assert all(not name.endswith((".bin", ".pt", ".pth")) for name in artifact.manifest.files)
    with safe_open(str(int8_dir / "model.safetensors"), framework="pt") as handle:
        int8_keys = [k for k in handle.keys() if handle.get_slice(k).get_dtype() == "I8"]
    assert "model.embed_tokens.weight.int8" in int8_keys, "embeddings must be int8 too"
    assert "lm_head.weight.int8" in int8_keys or "lm_head.weight" in q["tied"], "the LM head must be int8 too"

    loaded = load_model_artifact(artifact)
    fp32 = load_base(str(tiny_base_dir))
    int8_modules = [n for n, m in loaded.model.named_modules() if isinstance(m, PerTokenInt8Linear)]
    assert "lm_head" in int8_modules or q["tied"]
    assert loaded.sha256 == fp32.sha256 and loaded.info["scheme"] == "torch-int8"

    diff = (last_logits(loaded.model, loaded.tokenizer) - last_logits(fp32.model, fp32.tokenizer)).abs().max()
    assert diff <= MAX_LOGIT_DIFF
    # Teacher-forced along fp32's greedy path: free-running agreement hinges on near ties
    # (the first prompt's top two logits differ by 0.004), which any rounding flips.
    assert teacher_forced_agreement(loaded.model, fp32.model, loaded.tokenizer) >= MIN_AGREEMENT
    recorded = artifact.manifest.metrics["parity"]
    assert recorded["max_abs_logit_diff"] <= MAX_LOGIT_DIFF and recorded["mean_abs_logit_diff"] <= MEAN_LOGIT_DIFF
    assert recorded["passed"]


def test_int8_size_counts_embeddings_and_head(int8_dir):
    q = load_artifact(int8_dir).manifest.quantization
    assert q["size_bytes"] == (int8_dir / "model.safetensors").stat().st_size
    assert q["size_ratio"] == pytest.approx(q["size_bytes"] / q["fp32_size_bytes"])
    assert q["size_ratio"] <= 0.3


def test_merge_adapter_before_quantizing(adapter_dir, tiny_base_dir, tmp_path):
    out = tmp_path / "merged-int8"
    manifest = quantize(str(adapter_dir), QuantizeConfig(merge=True, parity=FAST), out)
    assert manifest.source["kind"] == "adapter" and manifest.source["merged_adapter"]
    assert manifest.base.sha256 == load_artifact(adapter_dir).manifest.base.sha256
    quantized = load_model_artifact(load_artifact(out))
    base = load_base(str(tiny_base_dir))
    from peft import PeftModel

    merged = PeftModel.from_pretrained(load_base(str(tiny_base_dir)).model, str(adapter_dir)).merge_and_unload()
    got = last_logits(quantized.model, quantized.tokenizer)
    to_merged = (got - last_logits(merged, base.tokenizer)).abs().max()
    to_base = (got - last_logits(base.model, base.tokenizer)).abs().max()
    assert to_merged < to_base, "the adapter was not merged before quantizing"


def test_adapter_without_merge_is_refused(adapter_dir, tmp_path):
    with pytest.raises(ConfigError, match="--merge"):
        quantize(str(adapter_dir), QuantizeConfig(), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_adapter_on_changed_base_is_refused(adapter_dir, tmp_path):
    import shutil

    copy = tmp_path / "adapter"
    shutil.copytree(adapter_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["base"]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BaseModelMismatch):
        quantize(str(copy), QuantizeConfig(merge=True), tmp_path / "x")


def test_already_quantized_is_refused(int8_dir, tmp_path):
    with pytest.raises(ArtifactInvalid, match="already a quantized-model"):
        quantize(str(int8_dir), QuantizeConfig(), tmp_path / "x")


def test_unknown_scheme_and_bad_flags_are_refused(tiny_base_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown scheme 'int3'") as info:
        quantize(str(tiny_base_dir), QuantizeConfig(scheme="int3"), tmp_path / "x")
    assert "torch-int8" in info.value.hint
    with pytest.raises(ConfigError, match="--merge needs an adapter"):
        quantize(str(tiny_base_dir), QuantizeConfig(merge=True), tmp_path / "x")
    with pytest.raises(DataError, match="does not exist"):
        quantize(str(tiny_base_dir), QuantizeConfig(calibration=tmp_path / "missing.jsonl"), tmp_path / "x")


def test_int8_file_with_wrong_format_is_refused(int8_dir, tmp_path):
    from safetensors.torch import save_file

    from training.artifact.quantized import build_int8_model

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((int8_dir / "config.json").read_text())
    save_file({"x": torch.zeros(1)}, str(bad / "model.safetensors"))
    with pytest.raises(ArtifactInvalid, match="not a tuneserve-int8"):
        build_int8_model(bad, "causal-lm")


def test_cli_quantize_writes_artifact(tiny_base_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from tuneserve.commands import quantize as command

    app = typer.Typer()
    app.callback()(lambda: None)
    command.register(app)
    out = tmp_path / "cli-int8"
    result = CliRunner().invoke(app, ["quantize", str(tiny_base_dir), "--scheme", "torch-int8", "--out", str(out),
                                      "parity.samples=2", "parity.new_tokens=4", "parity.latency_repeats=1"])
    assert result.exit_code == 0, result.output
    assert "size" in result.output and load_artifact(out).manifest.kind == "quantized-model"
    listing = CliRunner().invoke(app, ["quantize", "--list"])
    assert "torch-int8" in listing.output


def test_classifier_int8_keeps_labels_and_predictions(tmp_path):
    from quantize_support import copy_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    labels = ["card_arrival", "card_linking", "exchange_rate"]
    source = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=128, num_labels=3)).save_pretrained(source)
    copy_tokenizer(source)
    manifest = quantize(str(source), QuantizeConfig(task="classification", labels=labels, parity=FAST), tmp_path / "q")
    assert manifest.task == "classification" and manifest.labels == labels
    assert manifest.quantization["size_ratio"] <= 0.3
    loaded = load_model_artifact(load_artifact(tmp_path / "q"))
    fp32 = load_base(str(source), task="classification", labels=labels)
    texts = ["my card has not arrived", "what is the exchange rate", "link my card"]
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        got, want = loaded.model(**batch).logits, fp32.model(**batch).logits
    assert got.shape == (3, 3) and (got - want).abs().max() <= MAX_LOGIT_DIFF
    assert loaded.labels == labels
