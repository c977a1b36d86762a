"""Training controls: schedules, early stopping, L1 penalty, dropout override, merge, checkpoint contents."""

from __future__ import annotations

import pytest
import torch
from train_support import (
    instruction_rows,
    logits_of,
    make_config,
    train_args,
    write_jsonl,
)

from training.train.loop import lr_factor

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "rows.jsonl", instruction_rows(40))


def test_schedules():
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    linear = [lr_factor(s, 10, 0, "linear") for s in range(10)]
    assert linear[0] == 1.0 and all(a > b for a, b in zip(linear, linear[1:]))
    cosine = [lr_factor(s, 10, 0, "cosine") for s in range(11)]
    assert cosine[0] == 1.0 and abs(cosine[5] - 0.5) < 1e-9 and abs(cosine[10]) < 1e-9


def test_early_stopping_stops_and_restores_best(tiny_base_dir, data_file, tmp_path):
    from training.train.run import train

    cfg = make_config(*train_args(tiny_base_dir, data_file, tmp_path / "a", "max_steps=20", "eval_every=1",
                                  "early_stopping.enabled=true", "early_stopping.patience=2",
                                  "early_stopping.min_delta=100"))
    outcome = train(cfg)
    assert outcome.result.stopped_early and outcome.result.steps == 3
    evals = [r["val_loss"] for r in outcome.result.history if "val_loss" in r]
    assert abs(outcome.result.metrics["val_loss"] - evals[0]) < 1e-5  # weights of the best (first) eval


def test_early_stopping_requires_eval_every(tiny_base_dir, data_file, tmp_path):
    from training.artifact.errors import ConfigError

    with pytest.raises(ConfigError, match="eval_every"):
        make_config(*train_args(tiny_base_dir, data_file, tmp_path / "a", "early_stopping.enabled=true"))


def _lora_weight_mass(model) -> float:
    return float(sum(p.detach().abs().sum() for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n))


def test_l1_penalty_shrinks_trainable_weights(tiny_base_dir, data_file, tmp_path):
    from training.train.run import train

    masses = [_lora_weight_mass(train(make_config(*train_args(tiny_base_dir, data_file, tmp_path / f"l1-{l1}",
                                                               f"optim.l1={l1}", "optim.lr=1e-2"))).model)
              for l1 in (0.0, 0.05)]
    assert masses[1] < 0.9 * masses[0], masses


def test_dropout_override_reaches_model_config(tiny_base_dir, data_file, tmp_path):
    from training.artifact import resolve_base_dir
    from training.train.methods import get_method
    from training.train.run import load_training_model

    cfg = make_config(*train_args(tiny_base_dir, data_file, tmp_path / "a", "dropout=0.3"))
    model = load_training_model(cfg, get_method("lora"), resolve_base_dir(cfg.base), None, torch.device("cpu"))
    assert model.config.attention_dropout == 0.3


def test_merge_writes_equivalent_full_model(tiny_base_dir, data_file, tmp_path):
    from training.artifact import load_artifact
    from training.artifact.loading import load_model_artifact
    from training.train.run import train

    outcome = train(make_config(*train_args(tiny_base_dir, data_file, tmp_path / "a", "merge=true", "optim.lr=2e-2")))
    art = load_artifact(outcome.merged, expect_kind="merged-model")
    assert art.manifest.method == "lora" and "model.safetensors" in art.manifest.files
    assert any(name.startswith("tokenizer") for name in art.manifest.files)
    merged = load_model_artifact(art).model
    expected = logits_of(outcome.model, outcome.collate, outcome.examples[:4])
    got = logits_of(merged, outcome.collate, outcome.examples[:4])
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()


def test_checkpoints_hold_no_pickle(tiny_base_dir, data_file, tmp_path):
    from training.train.run import train

    cfg = make_config(*train_args(tiny_base_dir, data_file, tmp_path / "a", "checkpoint_every=2", "keep_checkpoints=2"))
    train(cfg)
    ckpts = sorted(p.name for p in cfg.checkpoint_path().iterdir())
    assert ckpts == ["step-2", "step-4"]
    files = {p.name for p in (cfg.checkpoint_path() / "step-4").iterdir()}
    assert files == {"trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}


def _loop_over(lengths, group_by_length, seed=3):
    from training.train.config import TrainConfig
    from training.train.loop import TrainLoop

    cfg = TrainConfig(batch_size=8, seed=seed, group_by_length=group_by_length, progress=False)
    examples = [{"input_ids": [1] * n, "row": k} for k, n in enumerate(lengths)]
    return TrainLoop(cfg, torch.nn.Linear(2, 2), examples, [], collate=lambda b: b, device=torch.device("cpu"))


def test_group_by_length_cuts_padding_and_stays_a_seeded_permutation():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(1003)]
    grouped, plain = _loop_over(lengths, True), _loop_over(lengths, False)

    def padded(loop, epoch):
        batches = [loop.micro_batch(epoch * loop.batches_per_epoch + b) for b in range(loop.batches_per_epoch)]
        assert sorted(id(e) for b in batches for e in b) == sorted(id(e) for e in loop.train)
        return sum(max(len(e["input_ids"]) for e in b) * len(b) for b in batches)

    assert padded(grouped, 0) < 0.6 * padded(plain, 0)
    assert all(len(grouped.micro_batch(b)) == 8 for b in range(grouped.batches_per_epoch - 1))
    again = _loop_over(lengths, True)
    assert [again.micro_batch(b) for b in range(5)] == [grouped.micro_batch(b) for b in range(5)]
    next_epoch = [grouped.micro_batch(grouped.batches_per_epoch + b) for b in range(5)]
    assert next_epoch != [grouped.micro_batch(b) for b in range(5)]
    first = [[len(e["input_ids"]) for e in grouped.micro_batch(b)] for b in range(10)]
    assert sorted(first) != first, "batch order must be shuffled, not sorted by length"
