"""Auto mode (`tuneserve train CONFIG auto=true budget=...`): budget parsing, the stop rule, a tiny budget stops in time."""

from __future__ import annotations

import json
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
    assert not out_of_budget(900, elapsed=700, longest_trial=250, fit=0.5)  # auto mode: half of it fits


def test_space_is_centred_on_the_recipe_whose_settings_are_tried_first():
    recipe = TrainConfig(task="classification", optim={"lr": 2e-3}, epochs=6, lora={"r": 12, "dropout": 0.05},
                         class_weighting="balanced")
    space, first = auto_space(recipe)
    assert {"optim.lr", "epochs", "lora.r", "lora.dropout", "class_weighting"} == set(space) == set(first)
    assert space["optim.lr"]["low"] == 5e-4 and space["optim.lr"]["high"] == 8e-3
    assert space["epochs"]["choices"] == [3, 6, 12] and 12 in space["lora.r"]["choices"]
    assert first == {"optim.lr": 2e-3, "epochs": 6, "lora.r": 12, "lora.dropout": 0.05, "class_weighting": "balanced"}
    full, first = auto_space(TrainConfig(method="full", max_steps=10, optim={"lr": 5e-5}))
    assert set(full) == set(first) == {"optim.lr"}


def test_a_first_trial_outside_the_space_is_refused():
    from training.search.config import SearchConfig

    space = {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    SearchConfig(train=TrainConfig(), space=space, first_trials=[{"optim.lr": 1e-3}])
    for bad in ({"optim.lr": 1.0}, {"epochs": 3}):
        with pytest.raises(ValueError, match="first_trials"):
            SearchConfig(train=TrainConfig(), space=space, first_trials=[bad])


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
    assert report["trials"][0]["params"]["optim.lr"] == pytest.approx(5e-3)  # the config's, tried first
    assert read_manifest(tmp_path / "auto").metrics["steps"] == 2
    assert (tmp_path / "auto.search" / "report.json").is_file() and (tmp_path / "auto.search" / "recipe").is_dir()
    assert report["choice"]["trial"] == 0 and report["refit_decision"].startswith("refit=false")


def _report(values: list[float], metric_states: list[str] | None = None) -> dict:
    states = metric_states or ["COMPLETE"] * len(values)
    trials = [{"number": n, "state": st, "value": v, "params": {}} for n, (v, st) in enumerate(zip(values, states))]
    best = max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    return {"best": {"number": best["number"], "value": best["value"]}, "trials": trials}


def test_a_winner_within_one_standard_error_of_the_recipe_does_not_replace_it():
    from training.search.auto import choose_trial, lead_needed

    assert lead_needed(0.967, 150) == pytest.approx(0.0146, abs=1e-4)
    kept = choose_trial(_report([0.9667, 0.9467, 0.98]), "val_accuracy", 150)  # SQuAD topics: 2 rows of 150
    assert kept["trial"] == 0 and kept["value"] == 0.9667 and "kept" in kept["why"]
    assert choose_trial(_report([0.9667, 0.9467, 0.98]), "val_accuracy", 1500)["trial"] == 2  # 20 rows of 1 500
    assert choose_trial(_report([0.80, 0.86]), "val_accuracy", 300)["trial"] == 1  # 18 rows: 2.6 standard errors
    assert choose_trial(_report([0.90, 0.85]), "val_accuracy", 300)["trial"] == 0  # the recipe is the best
    # val_loss has no binomial error: the best one is written
    loss = {"best": {"number": 1, "value": 0.5}, "trials": [{"number": 0, "state": "COMPLETE", "value": 0.51},
                                                            {"number": 1, "state": "COMPLETE", "value": 0.5}]}
    assert choose_trial(loss, "val_loss", 150)["trial"] == 1


def test_cli_takes_auto_and_budget_out_of_the_overrides():
    from tuneserve.commands.train import split_auto

    assert split_auto(["a.yaml", "auto=true", "budget=2m", "optim.lr=1e-3"]) == (["a.yaml", "optim.lr=1e-3"],
                                                                                  {"budget": 120, "soup": 4})
    assert split_auto(["a.yaml", "auto=true", "soup=1"]) == (["a.yaml"], {"budget": 900, "soup": 1})
    assert split_auto(["a.yaml", "epochs=2"]) == (["a.yaml", "epochs=2"], None)
    for bad in ("soup=0", "soup=many", "soup=-2"):
        with pytest.raises(ConfigError, match="soup="):
            split_auto(["a.yaml", "auto=true", bad])


def test_the_budget_stops_a_running_trial_within_ten_percent(monkeypatch, tmp_path):
    """A first short trial, then trials far longer than what is left: the second one is stopped at an
    evaluation once the budget is spent, so the search ends within 10 % of it; the completed trial wins."""
    from types import SimpleNamespace

    from training.search.config import SearchConfig
    from training.search.run import search

    budget, ends, calls = 8.0, [], []

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


def test_with_refit_the_winner_is_retrained_on_train_and_validation_for_its_selected_steps(tiny_base_dir, tmp_path):
    from training.artifact import read_manifest
    from training.search.auto import auto_train

    data = write_jsonl(tmp_path / "rows.jsonl", instruction_rows(40))
    cfg = make_config(*train_args(tiny_base_dir, data, tmp_path / "auto", "max_steps=3", "eval_every=1",
                                  "data.validation_fraction=0.2", "profile.enabled=false", "refit=true",
                                  "lora.target_modules=[q_proj, v_proj]"))
    report = auto_train(cfg, budget=1)
    trial = read_manifest(tmp_path / "auto.search" / "best").metrics
    metrics = read_manifest(tmp_path / "auto").metrics
    assert report["refit"]["steps"] == trial["best_step"] == metrics["refit_steps"] == metrics["steps"]
    assert metrics["val_loss"] == trial["val_loss"]  # the selection's validation numbers are kept
    assert report["trials"][0]["params"]["optim.lr"] == pytest.approx(5e-3)
    written = json.loads((tmp_path / "auto.search" / "report.json").read_text())
    assert written["refit"] == report["refit"] and "## Refit" in (tmp_path / "auto.search" / "report.md").read_text()


def test_a_trial_the_budget_cuts_can_keep_its_best_weights_and_win(monkeypatch, tmp_path):
    """Auto mode's rule: the long second trial starts (half of the longest fits), the budget ends it at an
    evaluation like early stopping, and its better validation score wins; the search still ends within 10 %."""
    from types import SimpleNamespace

    from training.search.config import SearchConfig
    from training.search.run import search

    budget, ends, calls = 8.0, [], []

    def fake_train(cfg, on_eval=None):
        seconds, score = (1.5, 0.5) if not calls else (30.0, 0.7)
        calls.append(cfg.optim.lr)
        for step in range(1, int(seconds / 0.05) + 1):
            time.sleep(0.05)
            if on_eval(step, {"val_accuracy": score, "val_loss": 1.0}):
                break
        ends.append(time.monotonic())
        return SimpleNamespace(result=SimpleNamespace(metrics={"val_accuracy": score}, steps=step))

    monkeypatch.setattr("training.train.run.train", fake_train)
    cfg = SearchConfig(train=TrainConfig(eval_every=1, output=str(tmp_path / "t")), space={
        "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, pruner="none", budget=budget, n_trials=50,
        metric="val_accuracy", trial_fit=0.5, cut_trials_compete=True, output=str(tmp_path / "search"),
        progress=False, tracking={"enabled": False})
    search(cfg.model_copy(update={"n_trials": 1, "output": str(tmp_path / "warm-up")}))  # one-time imports
    calls.clear()
    started = time.monotonic()
    report = search(cfg)
    assert len(calls) == 2 and max(ends) - started <= 1.1 * budget
    assert [t["state"] for t in report["trials"]] == ["COMPLETE", "COMPLETE"] and report["best"]["number"] == 1
    assert report["trials"][0]["cut_by_budget"] is None and report["trials"][1]["cut_by_budget"] >= 1
    assert "(cut by the budget at step" in (tmp_path / "search" / "report.md").read_text()
