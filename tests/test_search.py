"""Hyper-parameter search on the tiny base: every sampler prunes, resumes from SQLite, keeps only the best artifact."""

from __future__ import annotations

import json

import pytest
import torch
from search_support import data_file, make_search_config, search_args

from training.artifact.errors import ConfigError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return data_file(tmp_path_factory.mktemp("search-data"))


def test_space_validation_and_grid():
    from training.search.config import ParamSpec

    assert ParamSpec(type="int", low=4, high=16, step=4).grid() == [4, 8, 12, 16]
    assert ParamSpec(type="loguniform", low=1e-4, high=1e-2, grid_points=3).grid() == pytest.approx([1e-4, 1e-3, 1e-2])
    assert ParamSpec(type="float", low=0.0, high=0.2, step=0.1).grid() == pytest.approx([0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="choices"):
        ParamSpec(type="categorical")
    with pytest.raises(ValueError, match="low < high"):
        ParamSpec(type="float", low=1, high=1)
    with pytest.raises(ConfigError, match="optim.lrr"):
        make_search_config("space.optim.lrr={type: float, low: 0.1, high: 0.2}")
    with pytest.raises(ConfigError, match="lora.r"):  # r must be > 0: the range is checked against TrainConfig
        make_search_config("space.lora.r={type: int, low: 0, high: 4}")
    cfg = make_search_config("space.lora.r={type: categorical, choices: [2, 4]}", "metric=val_accuracy")
    assert cfg.resolved_direction() == "maximize" and cfg.storage_path().name == "study.db"


def _check_outcome(report, out, n_trials):
    from training.artifact import load_artifact

    states = report["states"]
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == n_trials
    assert states.get("PRUNED", 0) >= 1, report["trials"]
    best = report["best"]
    complete = [t for t in report["trials"] if t["state"] == "COMPLETE"]
    assert best["value"] == min(t["value"] for t in complete)
    manifest = load_artifact(out / "best").manifest
    assert manifest.name.endswith(f"trial-{best['number']}")
    assert manifest.metrics["val_loss"] == pytest.approx(best["value"])
    assert not any((out / "trials").iterdir()), "only the best trial's artifact is kept"
    for name in ("report.json", "report.md", "history.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "report.json").read_text())["best"]["number"] == best["number"]


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_sampler_prunes_and_resumes(tiny_base_dir, rows, tmp_path, sampler):
    from training.search import search

    out = tmp_path / "search"
    args = search_args(tiny_base_dir, rows, out, f"sampler={sampler}", "pruner=median")
    first = search(make_search_config(*args, "n_trials=3"))
    assert sum(first["states"].values()) == 3 and first["resumed_trials"] == 0
    before = {t["number"]: t["params"] for t in first["trials"]}
    second = search(make_search_config(*args, "n_trials=6"))
    assert second["resumed_trials"] == 3
    assert {t["number"]: t["params"] for t in second["trials"][:3]} == before
    assert len({json.dumps(t["params"], sort_keys=True) for t in second["trials"]}) == 6, "no trial repeats"
    _check_outcome(second, out, 6)
    if second["importance"]:
        assert set(second["importance"]) == {"optim.lr", "lora.r"} and (out / "importance.png").is_file()
    else:
        assert "completed" in second["importance_note"] or "computed" in second["importance_note"]


def test_cli_hyperband_patience_and_tracking(tiny_base_dir, rows, tmp_path):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from tuneserve.cli import app

    out = tmp_path / "search"
    args = search_args(tiny_base_dir, rows, out, "sampler=random", "pruner=hyperband", "n_trials=4",
                       "patience=1", "study_name=hb")
    result = CliRunner().invoke(app, ["search", *args])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["pruner"] == "hyperband" and report["stopped"] == "no improvement in 1 trials"
    finished = [t for t in report["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) < 4 and "best trial #" in result.output
    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name("search")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_name == "search-hb"]
    trials = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(parent) == 1 and len(trials) == len(finished)
    assert all(r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id for r in trials)
    assert "optim.lr" in trials[0].data.params and "val_loss" in trials[0].data.metrics


def test_bad_metric_is_a_clear_error(tiny_base_dir, rows, tmp_path):
    from training.search import search

    cfg = make_search_config(*search_args(tiny_base_dir, rows, tmp_path / "s", "metric=val_accuracy", "n_trials=1"))
    with pytest.raises(ConfigError, match="val_accuracy"):
        search(cfg)
