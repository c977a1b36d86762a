"""LoRA SFT on the tiny base: loss goes down, the artifact is complete and reloads to identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from train_support import (
    instruction_rows,
    logits_of,
    make_config,
    train_args,
    write_jsonl,
)

from training.artifact import fingerprint_model_dir, load_artifact
from training.artifact.loading import attach_adapter, load_base
from training.train.templates import IGNORE_INDEX, PromptTemplate

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def lora_run(tiny_base_dir, tmp_path_factory):
    from training.train.run import train

    tmp = tmp_path_factory.mktemp("lora")
    data = write_jsonl(tmp / "rows.jsonl", instruction_rows(80))
    cfg = make_config(*train_args(tiny_base_dir, data, tmp / "adapter", "max_steps=24", "optim.lr=1e-2",
                                  "eval_every=12", "data.validation_fraction=0.2"))
    return train(cfg), tiny_base_dir


def test_loss_goes_down(lora_run):
    outcome, _ = lora_run
    losses = [r["loss"] for r in outcome.result.history]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.95 * sum(losses[:4]) / 4, losses
    evals = [r["val_loss"] for r in outcome.result.history if "val_loss" in r]
    assert evals and outcome.result.metrics["val_loss"] < evals[0] * 1.05


def test_manifest_records_the_run(lora_run):
    outcome, base_dir = lora_run
    art = load_artifact(outcome.artifact, expect_base_sha256=fingerprint_model_dir(base_dir), expect_kind="adapter")
    m = art.manifest
    assert m.task == "causal-lm" and m.method == "lora"
    assert {"adapter_model.safetensors", "adapter_config.json", "reference_profile.json"} <= set(m.files)
    assert m.data.rows == 64 and m.data.fingerprint and m.data.source.endswith("rows.jsonl")
    assert {"train_loss", "val_loss"} <= set(m.metrics)
    assert m.hyperparameters["method_options"]["lora"]["r"] == 8 and m.hyperparameters["optim"]["lr"] == 1e-2
    assert 0 < m.trainable_parameters < sum(p.numel() for p in outcome.model.base_model.parameters())
    assert m.wall_time_seconds > 0 and m.tokenizer["template"] in ("chat", "plain")
    profile = json.loads((outcome.artifact / "reference_profile.json").read_text())
    assert profile["rows"] == 64 and profile["tokens"]["count"] == 64


def test_adapter_reloads_to_identical_logits(lora_run):
    outcome, base_dir = lora_run
    expected = logits_of(outcome.model, outcome.collate, outcome.examples[:4])
    base = load_base(str(base_dir))
    reloaded = attach_adapter(base.model, load_artifact(outcome.artifact), "reloaded")
    got = logits_of(reloaded, outcome.collate, outcome.examples[:4])
    assert torch.equal(expected, got)
    untouched = logits_of(load_base(str(base_dir)).model, outcome.collate, outcome.examples[:4])
    assert not torch.allclose(untouched, got)


def _encode(tokenizer, kind):
    row = {"instruction": "Reverse the words.", "input": "apple river", "output": "river apple"}
    return PromptTemplate(kind).encode(row, tokenizer, max_length=128), row


@pytest.mark.parametrize("kind", ["chat", "plain"])
def test_loss_only_on_response_tokens(tiny_base_dir, kind):
    from training.artifact.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_base_dir, padding_side="right")
    if kind == "chat" and not tokenizer.chat_template:
        pytest.fail("the tiny base should ship a chat template")
    example, row = _encode(tokenizer, kind)
    labels = example["labels"]
    first = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    assert all(x == IGNORE_INDEX for x in labels[:first]) and IGNORE_INDEX not in labels[first:]
    assert labels[first:] == example["input_ids"][first:]
    response = tokenizer.decode(labels[first:], skip_special_tokens=True)
    assert row["output"] in response
    prompt = tokenizer.decode(example["input_ids"][:first], skip_special_tokens=True)
    assert row["output"] not in prompt and "apple river" in prompt


def test_template_choice_follows_tokenizer(tiny_base_dir):
    from training.artifact.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_base_dir)
    assert PromptTemplate.for_tokenizer(tokenizer).kind == ("chat" if tokenizer.chat_template else "plain")
    tokenizer.chat_template = None
    assert PromptTemplate.for_tokenizer(tokenizer).kind == "plain"
    assert "### Response:" in PromptTemplate("plain").render_prompt(tokenizer, "Say hi", "")
