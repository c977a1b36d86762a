"""Sequence packing and multi-turn SFT: packed logits equal unpacked ones, positions restart, bins fit,
only assistant turns are targets, and a packed run on the tiny base writes a loadable artifact."""

from __future__ import annotations

import random

import pytest
import torch
from train_support import instruction_rows, logits_of, make_config, train_args, write_jsonl

from training.artifact.errors import ConfigError, DataError
from training.train.packing import (
    block_causal_mask,
    check_packable,
    collate_packed,
    first_fit_decreasing,
    pack_examples,
    packing_report,
)
from training.train.templates import IGNORE_INDEX, PromptTemplate, pad_causal

torch.set_num_threads(2)

CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "lemon"},
        {"role": "user", "content": "And a colour?"},
        {"role": "assistant", "content": "silver"}]


@pytest.fixture(scope="module")
def tiny(tiny_base_dir):
    from transformers import AutoModelForCausalLM

    from training.artifact.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_base_dir, padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir), dtype=torch.float32).eval()
    return model, tokenizer


def _examples(tokenizer, n=6):
    template = PromptTemplate.for_tokenizer(tokenizer)
    rows = instruction_rows(n) + [{"messages": CHAT}]
    return [template.encode(r, tokenizer, max_length=96) for r in rows]


def test_packed_row_logits_equal_each_example_alone(tiny):
    model, tokenizer = tiny
    examples = _examples(tokenizer)
    rows = pack_examples(examples, max_length=96)
    assert len(rows) < len(examples) and max(len(r["seq_lens"]) for r in rows) >= 3
    batch = collate_packed(rows, tokenizer.pad_token_id)
    labels = batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch).logits
        # The same packed rows under a plain causal mask (attention across examples) must differ.
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                      attention_mask=(batch["input_ids"] != -1).long()).logits
    worst, leak = 0.0, 0.0
    members = first_fit_decreasing([len(e["input_ids"]) for e in examples], 96)
    for b, row in enumerate(rows):
        start = 0
        for i, n in zip(members[b], row["seq_lens"]):
            assert examples[i]["input_ids"] == row["input_ids"][start:start + n]
            alone = logits_of(model, lambda ex: pad_causal(ex, tokenizer.pad_token_id), [examples[i]])[0]
            worst = max(worst, float((packed[b, start:start + n] - alone).abs().max()))
            leak = max(leak, float((leaky[b, start:start + n] - alone).abs().max()))
            start += n
    assert worst < 1e-4, f"packed logits differ from unpacked by {worst}"
    assert leak > 1e-2, "the control (cross-example attention) should change the logits"
    # The loss over a packed batch is the token mean of the unpacked examples' losses.
    with torch.no_grad():
        packed_loss = float(model(**batch, labels=labels).loss)
        plain = pad_causal(examples, tokenizer.pad_token_id)
        plain_loss = float(model(**plain).loss)
    assert abs(packed_loss - plain_loss) < 1e-4


def test_position_ids_restart_per_example(tiny):
    _, tokenizer = tiny
    examples = _examples(tokenizer)
    rows = pack_examples(examples, max_length=96)
    batch = collate_packed(rows, tokenizer.pad_token_id)
    for b, row in enumerate(rows):
        expected = [p for n in row["seq_lens"] for p in range(n)]
        assert batch["position_ids"][b, :len(expected)].tolist() == expected
        assert sum(1 for p in expected if p == 0) == len(row["seq_lens"])
        # Each example's first token is not a target (it would be predicted from the previous example).
        starts = [sum(row["seq_lens"][:k]) for k in range(len(row["seq_lens"]))]
        assert all(batch["labels"][b, s] == IGNORE_INDEX for s in starts)


def test_block_mask_is_causal_and_block_diagonal():
    mask = block_causal_mask([[2, 3]], 6)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_bins_never_exceed_max_length_and_keep_every_example():
    rng = random.Random(3)
    for capacity in (16, 64, 256):
        lengths = [rng.randint(1, capacity) for _ in range(300)]
        bins = first_fit_decreasing(lengths, capacity)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
        assert len(bins) <= 2 * sum(lengths) / capacity + 1  # first-fit never leaves two bins half empty
    examples = [{"input_ids": [5] * n, "labels": [5] * n} for n in (10, 300, 40)]
    rows = pack_examples(examples, max_length=128)
    assert all(len(r["input_ids"]) <= 128 for r in rows)
    report = packing_report(examples, rows, batch_size=3)
    assert report["packed_rows"] == 2 and report["padding_fraction_packed"] < report["padding_fraction_unpacked"]


@pytest.mark.parametrize("kind", ["chat", "plain"])
def test_only_assistant_turns_are_targets(tiny, kind):
    _, tokenizer = tiny
    template = PromptTemplate(kind)
    example = template.encode({"messages": CHAT}, tokenizer, max_length=256)
    ids, labels = example["input_ids"], example["labels"]
    targets = [t for t, y in zip(ids, labels) if y != IGNORE_INDEX]
    assert [y for y in labels if y != IGNORE_INDEX] == targets
    said = tokenizer.decode(targets, skip_special_tokens=True)
    assert "lemon" in said and "silver" in said
    for text in ("terse", "fruit", "colour", "Instruction", "System", "Response"):
        assert text not in said, f"{text!r} of a non-assistant turn or scaffolding is a target: {said!r}"
    context = tokenizer.decode([t for t, y in zip(ids, labels) if y == IGNORE_INDEX], skip_special_tokens=True)
    assert "Name a fruit." in context and "And a colour?" in context and "lemon" not in context
    prompt = template.render_chat_prompt(tokenizer, CHAT)
    assert prompt.rstrip().endswith(("Response:", "assistant")) or "And a colour?" in prompt
    assert "silver" not in prompt and "lemon" in prompt


def test_chat_rows_are_validated(tmp_path):
    from training.train.config import DataConfig
    from training.train.data import load_splits

    data = write_jsonl(tmp_path / "chat.jsonl", [{"conversations": [{"from": "human", "value": "hi"},
                                                                    {"from": "gpt", "value": "hello"}]}] * 4)
    splits = load_splits(DataConfig(path=str(data), validation_fraction=0.0), "causal-lm")
    assert splits.train[0] == {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 4)
    with pytest.raises(DataError, match="no assistant turn"):
        load_splits(DataConfig(path=str(bad), validation_fraction=0.0), "causal-lm")


def test_packing_refuses_what_the_mask_cannot_describe():
    with pytest.raises(ConfigError, match="prompt"):
        check_packable("prompt", "causal-lm", "sdpa")
    with pytest.raises(ConfigError, match="eager"):
        check_packable("lora", "causal-lm", "eager")
    with pytest.raises(Exception, match="packing"):
        make_config("packing=true", "task=classification")


def test_packed_run_writes_a_loadable_artifact(tiny_base_dir, tmp_path):
    from training.artifact import fingerprint_model_dir, load_artifact
    from training.train.run import load_trained, train

    rows = instruction_rows(40) + [{"messages": CHAT}] * 8
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = make_config(*train_args(tiny_base_dir, data, tmp_path / "packed", "packing=true", "batch_size=4",
                                  "packing_max_length=128", "data.validation_fraction=0.2"))
    outcome = train(cfg)
    m = load_artifact(outcome.artifact, expect_base_sha256=fingerprint_model_dir(tiny_base_dir)).manifest
    info = m.metrics["packing"]
    assert info["packed_rows"] < info["examples"] and 0 <= info["padding_fraction_packed"] < 1
    assert m.hyperparameters["packing"] is True and m.metrics["train_tokens_per_second"] > 0
    assert all(r["loss"] == r["loss"] for r in outcome.result.history) and "val_loss" in m.metrics
    model, _, _ = load_trained(outcome.artifact)
    examples = outcome.examples[:3]  # validation examples, unpacked
    assert torch.allclose(logits_of(outcome.model, outcome.collate, examples),
                          logits_of(model, outcome.collate, examples), atol=1e-5)
