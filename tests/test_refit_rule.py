"""`refit: auto`: retrain on train + validation only when validation made too few errors to select with."""

from __future__ import annotations

import pytest
import torch
from train_support import classification_rows, make_config, train_args, write_jsonl

from training.artifact import MINILM
from training.train.config import TrainConfig
from training.train.loop import validated_rows
from training.train.recipes import REFIT_MAX_VAL_ERRORS, refit_decision

torch.set_num_threads(2)


def _auto(**kw) -> TrainConfig:
    return TrainConfig(task="classification", refit="auto", **kw)


def test_few_validation_errors_refit_many_keep_the_selection():
    # SQuAD topics' shape: ~5 errors in 150 rows; banking77's: ~60 in 300
    assert refit_decision(_auto(), {"val_accuracy": 0.967}, 150)[0] is True
    assert refit_decision(_auto(), {"val_accuracy": 0.80}, 300)[0] is False
    edge = 1 - REFIT_MAX_VAL_ERRORS / 1000
    assert refit_decision(_auto(), {"val_accuracy": edge}, 1000)[0] is False  # exactly the limit: kept
    assert "validation errors" in refit_decision(_auto(), {"val_accuracy": 0.9}, 100)[1]


def test_explicit_refit_wins_and_auto_never_refits_what_was_not_measured():
    assert refit_decision(_auto().model_copy(update={"refit": True}), {"val_accuracy": 0.1}, 300)[0] is True
    assert refit_decision(_auto().model_copy(update={"refit": False}), {"val_accuracy": 1.0}, 30)[0] is False
    causal = TrainConfig(task="causal-lm", refit="auto")
    assert refit_decision(causal, {"val_loss": 0.1}, 30)[0] is False
    assert refit_decision(_auto(), {"val_loss": 0.1}, 30)[0] is False  # no accuracy: nothing to count
    assert refit_decision(_auto(), {"val_accuracy": 1.0}, 0)[0] is False  # no validation split


def test_validated_rows_counts_what_eval_batches_lets_one_evaluation_score():
    assert validated_rows(TrainConfig(batch_size=8), 300) == 300
    assert validated_rows(TrainConfig(batch_size=8, eval_batches=2), 300) == 32
    assert validated_rows(TrainConfig(batch_size=8, eval_batches=50), 300) == 300


def test_refit_auto_is_allowed_on_ray_and_true_is_refused():
    TrainConfig(refit="auto", distributed={"backend": "ray"})
    with pytest.raises(ValueError, match="refit=true runs in one process"):
        TrainConfig(refit=True, distributed={"backend": "ray"})
    assert make_config("refit=auto").refit == "auto" and make_config("refit=true").refit is True


def test_an_easy_split_with_no_validation_errors_is_refit(tmp_path):
    from training.train.run import train

    data = write_jsonl(tmp_path / "rows.jsonl", classification_rows(96))
    outcome = train(make_config(*train_args(MINILM, data, tmp_path / "clf", "task=classification", "max_steps=12",
                                            "optim.lr=3e-3", "data.validation_fraction=0.25", "lora.r=4",
                                            "refit=auto", "profile.enabled=false")))
    metrics = outcome.manifest.metrics
    assert metrics["val_accuracy"] == 1.0, metrics  # 0 errors in 24 rows
    assert metrics["refit_steps"] == 12 and outcome.manifest.hyperparameters["refit"] is True
