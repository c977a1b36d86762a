"""Sequence classification with the same trainer: MiniLM + LoRA learns an easy task, the head is saved
with the adapter, labels and class weights come from the data."""

from __future__ import annotations

import json

import pytest
import torch
from train_support import (
    classification_rows,
    logits_of,
    make_config,
    train_args,
    write_jsonl,
)

from training.artifact import MINILM, load_artifact
from training.train.config import DataConfig
from training.train.data import balanced_class_weights, load_splits

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    from training.train.run import train

    tmp = tmp_path_factory.mktemp("cls")
    data = write_jsonl(tmp / "rows.jsonl", classification_rows(96))
    cfg = make_config(*train_args(MINILM, data, tmp / "clf", "task=classification", "max_steps=20",
                                  "optim.lr=3e-3", "data.validation_fraction=0.25", "lora.r=4"))
    return train(cfg)


def test_minilm_lora_learns_and_saves_head(minilm_run):
    outcome = minilm_run
    assert outcome.manifest.metrics["val_accuracy"] >= 0.9, outcome.manifest.metrics
    art = load_artifact(outcome.artifact, expect_kind="adapter")
    assert art.manifest.task == "classification" and art.manifest.labels == ["fruit", "music", "weather"]
    from safetensors import safe_open

    with safe_open(str(art.file("adapter_model.safetensors")), "pt") as f:
        assert any("classifier" in k for k in f.keys())


def test_classifier_reloads_identically(minilm_run):
    from training.artifact.loading import attach_adapter, load_base

    outcome = minilm_run
    expected = logits_of(outcome.model, outcome.collate, outcome.examples[:6])
    base = load_base(MINILM, task="classification", labels=outcome.manifest.labels)
    got = logits_of(attach_adapter(base.model, load_artifact(outcome.artifact), "clf"), outcome.collate,
                    outcome.examples[:6])
    assert torch.equal(expected, got)


def test_profile_has_label_and_confidence_distributions(minilm_run):
    profile = json.loads((minilm_run.artifact / "reference_profile.json").read_text())
    assert set(profile["labels"]) <= {"fruit", "music", "weather"}
    assert abs(sum(profile["labels"].values()) - 1) < 1e-9
    assert 0 < profile["confidence"]["quantiles"]["0.5"] <= 1


def test_class_weights_computed_or_read(tmp_path):
    rows = classification_rows(60)
    splits = load_splits(DataConfig(path=str(write_jsonl(tmp_path / "r.jsonl", rows)), validation_fraction=0.0), "classification")
    counts = {label: sum(r["label"] == label for r in rows) for label in splits.labels}
    assert splits.class_weights == balanced_class_weights(splits.labels, rows)
    assert splits.class_weights["music"] > splits.class_weights["fruit"]  # rarer class weighs more
    assert abs(sum(splits.class_weights[k] * counts[k] for k in counts) - len(rows)) < 1e-6

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split, part in (("train", rows[:40]), ("validation", rows[40:50]), ("test", rows[50:])):
        write_jsonl(prepared / f"{split}.jsonl", part)
    meta = {"task": "classification", "fingerprint": "abc", "labels": ["fruit", "music", "weather"],
            "class_weights": {"fruit": 1.0, "music": 5.0, "weather": 0.5}, "rows": {}, "fields": {}}
    (prepared / "dataset.json").write_text(json.dumps(meta))
    splits = load_splits(DataConfig(path=str(prepared)), "classification")
    assert splits.class_weights == meta["class_weights"] and splits.fingerprint == "abc"
    assert len(splits.validation) == 10 and len(splits.test) == 10


def test_weighted_loss_uses_class_weights(tiny_base_dir, tmp_path):
    """The same batch gives a different loss when one class is up-weighted."""
    from training.artifact.loading import load_tokenizer
    from training.train.loop import TrainLoop
    from training.train.methods import get_method
    from training.train.run import encoder, load_training_model

    data = write_jsonl(tmp_path / "r.jsonl", classification_rows(24))
    cfg = make_config(*train_args(tiny_base_dir, data, tmp_path / "o", "task=classification", "data.validation_fraction=0"))
    splits = load_splits(cfg.data, "classification")
    tokenizer = load_tokenizer(tiny_base_dir, padding_side="right")
    model = load_training_model(cfg, get_method("full"), tiny_base_dir, splits.labels, torch.device("cpu"))
    model.config.pad_token_id = tokenizer.pad_token_id
    enc, collate, _ = encoder(cfg, splits, tokenizer)
    train_ex = enc(splits.train)
    losses = []
    for weights in ([1.0, 1.0, 1.0], [1.0, 10.0, 1.0]):
        loop = TrainLoop(cfg, model, train_ex, [], collate, torch.device("cpu"), weights)
        loss, logits, labels = loop._forward_loss(collate(train_ex[:12]))
        manual = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(weights))
        assert torch.allclose(loss, manual)
        losses.append(float(loss.detach()))
    assert losses[0] != losses[1]
