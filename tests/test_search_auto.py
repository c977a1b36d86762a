"""Auto mode (`tuneserve train CONFIG auto=true budget=...`): budget parsing, the stop rule, a tiny budget stops in time."""

from __future__ import annotations

import time

import pytest
from train_support import instruction_rows, make_config, train_args, write_jsonl

from training.artifact.errors import ConfigError
from training.search.auto import auto_space, parse_budget
from training.search.run import out_of_budget
from training.train.config import TrainConfig


def test_budget_parsing():
    assert [parse_budget(t) for t in ("15m", "900s", "90", "1.5h")] == [900, 900, 90, 5400]
    with pytest.raises(ConfigError, match="budget"):
        parse_budget("soon")


def test_no_trial_starts_that_would_overrun_the_budget():
    assert not out_of_budget(900, elapsed=600, longest_trial=250)
    assert out_of_budget(900, elapsed=700, longest_trial=250)
    assert not out_of_budget(None, elapsed=10**6, longest_trial=10**6)


def test_space_follows_method_and_task():
    cls = auto_space(TrainConfig(task="classification", optim={"lr": "auto"}))
    assert {"optim.lr", "epochs", "lora.r", "class_weighting"} <= set(cls) and cls["optim.lr"]["high"] == 8e-3
    full = auto_space(TrainConfig(method="full", max_steps=10))
    assert set(full) == {"optim.lr"}


def test_a_tiny_budget_stops_after_one_trial_and_writes_the_winner(tiny_base_dir, tmp_path):
    from training.artifact import read_manifest
    from training.search.auto import auto_train

    data = write_jsonl(tmp_path / "rows.jsonl", instruction_rows(40))
    cfg = make_config(*train_args(tiny_base_dir, data, tmp_path / "auto", "max_steps=2", "eval_every=1",
                                  "data.validation_fraction=0.2", "profile.enabled=false",
                                  "lora.target_modules=[q_proj, v_proj]"))
    started = time.monotonic()
    report = auto_train(cfg, budget=1)
    assert time.monotonic() - started < 120
    assert len(report["trials"]) == 1 and report["stopped"].startswith("budget")
    assert read_manifest(tmp_path / "auto").metrics["steps"] == 2
    assert (tmp_path / "auto.search" / "report.json").is_file()


def test_cli_takes_auto_and_budget_out_of_the_overrides():
    from tuneserve.commands.train import split_auto

    assert split_auto(["a.yaml", "auto=true", "budget=2m", "optim.lr=1e-3"]) == (["a.yaml", "optim.lr=1e-3"], 120)
    assert split_auto(["a.yaml", "auto=true"]) == (["a.yaml"], 900)
    assert split_auto(["a.yaml", "epochs=2"]) == (["a.yaml", "epochs=2"], None)


def test_the_budget_stops_a_running_trial_within_ten_percent(monkeypatch, tmp_path):
    """A first short trial, then trials far longer than what is left: the second one is stopped at an
    evaluation once the budget is spent, so the search ends within 10 % of it; the completed trial wins."""
    from types import SimpleNamespace

    from training.search.config import SearchConfig
    from training.search.run import search

    budget, ends, calls = 4.0, [], []

    def fake_train(cfg, on_eval=None):
        seconds = 0.5 if len(calls) != 1 else 30.0
        calls.append(cfg.optim.lr)
        try:
            for step in range(1, int(seconds / 0.05) + 1):
                time.sleep(0.05)
                on_eval(step, {"val_accuracy": 0.5, "val_loss": 1.0})
        finally:
            ends.append(time.monotonic())
        return SimpleNamespace(result=SimpleNamespace(metrics={"val_accuracy": 0.5}, steps=step))

    monkeypatch.setattr("training.train.run.train", fake_train)
    cfg = SearchConfig(train=TrainConfig(eval_every=1, output=str(tmp_path / "t")), space={
        "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, pruner="none", budget=budget, n_trials=50, metric="val_accuracy",
        output=str(tmp_path / "search"), progress=False, tracking={"enabled": False})
    search(cfg.model_copy(update={"n_trials": 1, "output": str(tmp_path / "warm-up")}))  # one-time imports
    calls.clear()
    started = time.monotonic()
    report = search(cfg)
    assert len(calls) == 2 and max(ends) - started <= 1.1 * budget  # without the mid-trial stop: ~30 s
    assert report["best"]["number"] == 0 and [t["state"] for t in report["trials"]] == ["COMPLETE", "PRUNED"]
