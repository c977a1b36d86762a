"""Model selection by validation: a planted validation curve, best-step restore, resume keeps the best, refit."""

from __future__ import annotations

import pytest
import torch
from train_support import instruction_rows, make_config, train_args, write_jsonl

from training.train.checkpoint import latest_checkpoint
from training.train.config import TrainConfig
from training.train.loop import TrainLoop

torch.set_num_threads(2)
LR = 0.1
BEST_STEP = 4
NO_EVALUATION_YET = {"best": None, "best_step": None, "best_loss": float("inf"), "bad_evals": 0}  # _judge's state


class PlantedModel(torch.nn.Module):
    """One weight w. Training rows pull w up by ~LR per Adam step (loss -w); validation rows score
    (w - BEST_STEP*LR)^2, so validation is best after exactly BEST_STEP steps and worse after."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, is_val):
        loss = (self.w - BEST_STEP * LR) ** 2 if bool(is_val[0]) else -self.w
        return type("Out", (), {"loss": loss})()


def planted_loop(tmp_path, **overrides) -> TrainLoop:
    cfg = TrainConfig(task="causal-lm", max_steps=10, eval_every=1, batch_size=1, checkpoint_dir=str(tmp_path),
                      optim={"lr": LR, "scheduler": "constant", "warmup_steps": 0, "grad_clip": None}, **overrides)
    collate = lambda rows: {"is_val": torch.tensor([r["is_val"] for r in rows])}
    train = [{"is_val": 0, "input_ids": [1], "labels": [1, 1]}] * 4
    return TrainLoop(cfg, PlantedModel(), train, [{"is_val": 1}], collate, torch.device("cpu"))


def weights_by_step(loop: TrainLoop) -> tuple[dict[int, float], callable]:
    seen: dict[int, float] = {}
    return seen, lambda record: seen.__setitem__(record["step"], float(loop.model.w.detach()))


def test_planted_curve_restores_the_best_steps_weights_exactly(tmp_path):
    loop = planted_loop(tmp_path)
    seen, snapshot = weights_by_step(loop)
    result = loop.run(on_record=snapshot)
    evals = {r["step"]: r["val_loss"] for r in result.history if "val_loss" in r}
    assert min(evals, key=evals.get) == BEST_STEP and evals[9] > evals[BEST_STEP]  # the curve is as planted
    assert result.steps == 10 and not result.stopped_early
    assert float(loop.model.w) == seen[BEST_STEP] != seen[10]
    assert result.metrics["best_step"] == BEST_STEP
    assert result.metrics["val_loss"] == pytest.approx(evals[BEST_STEP])


def test_restore_best_off_keeps_the_last_weights(tmp_path):
    loop = planted_loop(tmp_path, early_stopping={"restore_best": False})
    seen, snapshot = weights_by_step(loop)
    loop.run(on_record=snapshot)
    assert float(loop.model.w) == seen[10]


def test_early_stopping_patience_then_best_restore(tmp_path):
    loop = planted_loop(tmp_path, early_stopping={"enabled": True, "patience": 2})
    seen, snapshot = weights_by_step(loop)
    result = loop.run(on_record=snapshot)
    assert result.stopped_early and result.steps == BEST_STEP + 2
    assert float(loop.model.w) == seen[BEST_STEP]


def test_resume_after_the_best_step_still_restores_it(tmp_path):
    first = planted_loop(tmp_path, checkpoint_every=6)
    seen, snapshot = weights_by_step(first)
    first.run(on_record=snapshot)
    resumed = planted_loop(tmp_path, checkpoint_every=6)
    result = resumed.run(resume_from=latest_checkpoint(tmp_path))
    assert result.resumed_from == 6 and result.metrics["best_step"] == BEST_STEP
    assert float(resumed.model.w) == seen[BEST_STEP]


def test_refit_trains_a_fresh_model_on_train_plus_validation(tiny_base_dir, tmp_path):
    from training.train.run import train

    data = write_jsonl(tmp_path / "rows.jsonl", instruction_rows(40))
    outcome = train(make_config(*train_args(tiny_base_dir, data, tmp_path / "a", "max_steps=4", "eval_every=2",
                                            "data.validation_fraction=0.25", "refit=true",
                                            "profile.enabled=false")))
    metrics = outcome.manifest.metrics
    assert metrics["refit_steps"] == metrics["best_step"] == outcome.result.steps
    assert "val_loss" in metrics and outcome.manifest.hyperparameters["steps"] == metrics["refit_steps"]


def test_an_accuracy_tie_goes_to_the_lower_validation_loss(tmp_path):
    """150 validation rows saturate: equal accuracies are common; the finer val_loss breaks the tie."""
    loop = planted_loop(tmp_path, early_stopping={"metric": "val_accuracy", "enabled": True, "patience": 2})
    state = dict(NO_EVALUATION_YET)
    curve = [(2, 0.90, 0.50), (4, 0.95, 0.40), (6, 0.95, 0.30), (8, 0.95, 0.35), (10, 0.93, 0.20)]
    stops = [loop._judge(state, step, {"val_accuracy": acc, "val_loss": loss}) for step, acc, loss in curve]
    # not the first 0.95 (step 4), not the lower loss at 0.93
    assert state["best_step"] == 6 and state["best_loss"] == 0.30
    assert stops == [False, False, False, False, True]  # patience counts from the tie that won
    final = {"val_accuracy": 0.95, "val_loss": 0.25}
    assert loop._judge(state, 12, final, final_eval=True) and state["best_step"] == 12
    assert not loop._judge(state, 12, dict(final), final_eval=True)  # equal loss: the earlier one stays


def test_val_loss_selection_has_no_tie_break_by_itself(tmp_path):
    loop = planted_loop(tmp_path)
    state = dict(NO_EVALUATION_YET)
    for step in (2, 4):
        loop._judge(state, step, {"val_loss": 0.5})
    assert state["best_step"] == 2
