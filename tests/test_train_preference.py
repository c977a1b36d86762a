"""Preference objectives (training.train.preference): each loss on a hand-computed example, the LoRA
reference is the adapter switched off, a few steps on planted pairs raise held-out reward accuracy
and margin (DPO on LoRA and full fine-tuning, ORPO, KTO), the SFT -> DPO two-stage flow, clear errors,
and the preference evaluation (reward accuracy, win rate)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from train_support import WORDS, instruction_rows, make_config, train_args, write_jsonl

from training.artifact.errors import ConfigError, DataError
from training.train.preference import dpo_loss, kto_loss, orpo_loss

torch.set_num_threads(2)
T = torch.tensor


def planted_pairs(n: int, seed: int) -> list[dict]:
    """Chosen ends with 'yes', rejected with 'no': a preference a few steps can learn and that generalises."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = " ".join(rng.sample(WORDS, 3))
        rows.append({"prompt": f"Repeat: {words}", "chosen": f"{words} yes", "rejected": f"{words} no"})
    return rows


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", planted_pairs(24, 0))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_dpo_loss_matches_hand_computation():
    loss, chosen, rejected = dpo_loss(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.5)
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)  # -log sigmoid(0.5 - -0.5)


def test_orpo_loss_matches_hand_computation():
    loss, _, _ = orpo_loss(T([-2.0]), T([2]), T([-6.0]), T([3]), lam=0.1, beta=0.1)
    odds = lambda mean: mean - math.log(1 - math.exp(mean))  # log(p / (1 - p)), p = exp(mean token logp)
    expected = 1.0 - 0.1 * math.log(sigmoid(odds(-1.0) - odds(-2.0)))  # NLL per token 1.0 + lambda * ratio loss
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kto_loss_matches_hand_computation():
    losses, rewards = kto_loss(T([-1.0, -3.0]), T([-2.0, -2.0]), T([True, False]), beta=1.0, kl=T(0.5),
                               desirable_weight=1.0, undesirable_weight=2.0)
    assert losses[0].item() == pytest.approx(1 - sigmoid(1.0 - 0.5), rel=1e-6)
    assert losses[1].item() == pytest.approx(2 * (1 - sigmoid(0.5 - -1.0)), rel=1e-6)
    assert rewards.tolist() == pytest.approx([1.0, -1.0])


def test_lora_reference_is_the_adapter_switched_off(tiny_base_dir, pair_file):
    from transformers import AutoModelForCausalLM

    from training.train.parts import pick_device, prepare
    from training.train.preference import sequence_logprobs

    cfg = make_config(*train_args(tiny_base_dir, pair_file, "/tmp/unused", "objective=dpo", "data.max_length=32"))
    prep = prepare(cfg, pick_device(cfg))
    objective = prep.objective
    assert objective.reference == "adapter-disabled" and not objective.cache
    assert not any(isinstance(v, torch.nn.Module) for v in vars(objective).values())  # no second model held
    with torch.no_grad():  # move the adapter away from the base so the two differ
        for name, param in prep.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = prep.collate(prep.train_ex[:4])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir), dtype=torch.float32).eval()
    prep.model.eval()
    with torch.no_grad():
        reference = objective._reference_logprobs(prep.model, batch)
        expected = sequence_logprobs(base, batch)[0]
        policy = sequence_logprobs(prep.model, batch)[0]
    assert torch.allclose(reference, expected, atol=1e-5)
    assert not torch.allclose(policy, expected, atol=1e-3)


@pytest.mark.parametrize("objective,method", [("dpo", "lora"), ("dpo", "full"), ("orpo", "lora"), ("kto", "lora")])
def test_a_few_steps_raise_held_out_reward_accuracy(objective, method, tiny_base_dir, pair_file, tmp_path):
    from training.train.loop import TrainLoop
    from training.train.parts import pick_device, prepare

    lr = "1e-3" if method == "full" else "1e-2"
    cfg = make_config(*train_args(tiny_base_dir, pair_file, tmp_path / "out", f"objective={objective}",
                                  f"method={method}", "data.max_length=32", "batch_size=4", "max_steps=5",
                                  f"optim.lr={lr}", "data.validation_fraction=0.34", "preference.beta=0.5"))
    device = pick_device(cfg)
    prep = prepare(cfg, device)
    assert prep.objective.reference == {"lora": "adapter-disabled", "full": "precomputed"}[method] or objective == "orpo"
    loop = TrainLoop(prep.cfg, prep.model, prep.train_ex, prep.val_ex, prep.collate, device, objective=prep.objective)
    before = loop.evaluate()
    result = loop.run()
    after = result.metrics
    assert after["val_reward_margin"] > before["val_reward_margin"]
    assert after["val_reward_accuracy"] >= before["val_reward_accuracy"]
    if objective != "kto":  # pairs: every reward starts equal (accuracy 0); KTO rows start at 0.5
        assert after["val_reward_accuracy"] >= 0.75 > before["val_reward_accuracy"]
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_sft_then_dpo_two_stage_flow_and_preference_eval(tiny_base_dir, pair_file, tmp_path):
    from training.evaluation.runner import EvalConfig, evaluate
    from training.tracking import TrackingConfig
    from training.train.run import train

    sft_data = write_jsonl(tmp_path / "sft.jsonl", instruction_rows(8))
    sft = train(make_config(*train_args(tiny_base_dir, sft_data, tmp_path / "sft", "max_steps=2", "batch_size=4",
                                        "data.max_length=32")))
    dpo = train(make_config(*train_args(tiny_base_dir, pair_file, tmp_path / "dpo", "objective=dpo", "max_steps=4",
                                        "batch_size=4", "data.max_length=32", f"init_adapter={sft.artifact}",
                                        "optim.lr=1e-2", "preference.beta=0.5", "data.validation_fraction=0.34")))
    hp = dpo.manifest.hyperparameters
    assert hp["objective"] == "dpo" and hp["preference"]["reference"] == "precomputed"
    assert dpo.manifest.lineage["sources"][0]["name"] == "sft" and dpo.manifest.kind == "adapter"
    assert dpo.result.metrics["val_reward_accuracy"] >= 0.5
    held_out = write_jsonl(tmp_path / "held_out.jsonl", planted_pairs(8, 99))
    cfg = EvalConfig(model=str(dpo.artifact), data=str(held_out), task="preference", baseline=str(sft.artifact),
                     beta=0.5, out=str(tmp_path / "eval"), tracking=TrackingConfig(enabled=False))
    result, out = evaluate(cfg, progress=False)  # what `tuneserve evaluate --baseline` runs on preference data
    assert result.task == "preference" and (out / "eval_report.json").is_file()
    metrics = result.metrics
    assert metrics["pairs"] == 8 and 0.0 <= metrics["reward_accuracy"] <= 1.0
    assert metrics["win_rate"] > 0.5  # DPO prefers chosen over rejected by more than the SFT-only adapter
    assert metrics["judge_margin"] > metrics["baseline_judge_margin"]


def test_init_adapter_must_match_the_method(tiny_base_dir, pair_file, tmp_path):
    from training.train.run import train

    sft_data = write_jsonl(tmp_path / "sft.jsonl", instruction_rows(4))
    sft = train(make_config(*train_args(tiny_base_dir, sft_data, tmp_path / "sft", "max_steps=1", "batch_size=4",
                                        "data.max_length=24", "method=ia3")))
    with pytest.raises(ConfigError, match="method ia3"):
        train(make_config(*train_args(tiny_base_dir, pair_file, tmp_path / "dpo", "objective=dpo", "max_steps=1",
                                      f"init_adapter={sft.artifact}")))


def test_bad_configs_and_rows_are_clear_errors(tmp_path):
    from training.train.config import DataConfig
    from training.train.data import load_splits

    with pytest.raises(ConfigError, match="task=causal-lm"):
        make_config("objective=dpo", "task=classification")
    with pytest.raises(ConfigError, match="reference=precomputed"):
        make_config("objective=dpo", "method=full", "preference.reference=adapter-disabled")
    sft_rows = write_jsonl(tmp_path / "sft.jsonl", instruction_rows(4))
    with pytest.raises(DataError, match="has no prompt") as err:
        load_splits(DataConfig(path=str(sft_rows), validation_fraction=0.0), "causal-lm", objective="dpo")
    assert "task=preference" in err.value.hint
    chosen_only = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "completion": "a", "label": "maybe"}])
    with pytest.raises(DataError, match="not a preference row for objective kto"):
        load_splits(DataConfig(path=str(chosen_only), validation_fraction=0.0), "causal-lm", objective="kto")
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "p", "chosen": "a", "rejected": " a "}])
    with pytest.raises(DataError, match="same text"):
        load_splits(DataConfig(path=str(same), validation_fraction=0.0), "causal-lm", objective="dpo")
    kto = load_splits(DataConfig(path=str(write_jsonl(tmp_path / "p.jsonl", planted_pairs(2, 1))),
                                 validation_fraction=0.0), "causal-lm", objective="kto")
    assert [r["label"] for r in kto.train] == [True, False, True, False]  # each pair: a desirable and an undesirable row
