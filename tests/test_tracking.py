"""The tracker writes a real MLflow run and a TensorBoard event file; absent backends stay silent."""

from __future__ import annotations

import importlib.util
import json

import pytest

from training.artifact.errors import ConfigError
from training.tracking import BACKENDS, Tracker, TrackingConfig, system_info


def make_tracker(tmp_path, **kw) -> Tracker:
    return Tracker(TrackingConfig(uri=f"file:{tmp_path / 'mlruns'}", tensorboard_dir=str(tmp_path / "tb"),
                                  experiment="unit", **kw))


def test_mlflow_run_and_tensorboard_events(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    report = tmp_path / "eval_report.json"
    report.write_text(json.dumps({"accuracy": 0.5}))
    tracker = make_tracker(tmp_path)
    assert tracker.available_backends() == ["mlflow", "tensorboard"]
    with tracker.start_run("evaluate", params={"model": "a", "lora": {"r": 8}}, tags={"task": "qa"}) as run:
        run.log_metrics({"em": 0.25, "f1": 0.5, "nested": {"x": 1}, "skip": "text", "flag": True}, step=0)
        run.log_metrics({"em": 0.3}, step=1)
        run.log_artifact(report)
    assert run.active == ["mlflow", "tensorboard"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params["model"] == "a" and stored.data.params["lora.r"] == "8"
    assert stored.data.metrics == {"em": 0.3, "f1": 0.5, "nested.x": 1.0}
    assert [m.value for m in client.get_metric_history(run.run_id, "em")] == [0.25, 0.3]
    assert stored.data.tags["task"] == "qa" and stored.data.tags["sys.python"]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["eval_report.json"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "tb" / "unit").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.value for e in acc.Scalars("em")] == pytest.approx([0.25, 0.3])


def test_nested_run_and_failed_status(tmp_path):
    tracker = make_tracker(tmp_path, backends=["mlflow"])
    parent = tracker.start_run("search")
    with pytest.raises(RuntimeError):
        with tracker.start_run("trial-0", parent_run_id=parent.run_id):
            raise RuntimeError("trial crashed")
    parent.end()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    child = next(r for r in runs if r.info.run_name == "trial-0")
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child.info.status == "FAILED"


def test_unconfigured_backends_are_absent_without_error(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    tracker = make_tracker(tmp_path, backends=["wandb", "comet"])
    assert tracker.available_backends() == [], "not configured: absent even if installed"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("COMET_API_KEY", "configured")
    installed = [n for n in ("wandb", "comet") if importlib.util.find_spec(BACKENDS[n].module)]
    assert tracker.available_backends() == installed, "configured: present exactly when importable"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("COMET_API_KEY")
    with tracker.start_run("nothing") as run:
        run.log_metrics({"x": 1.0})
    assert run.run_id is None and run.active == []
    assert make_tracker(tmp_path, enabled=False).available_backends() == []


def test_failing_backend_is_dropped_not_fatal(tmp_path):
    tracker = make_tracker(tmp_path, backends=["mlflow", "tensorboard"])
    run = tracker.start_run("r")
    run.backends[0].client = None  # the MLflow server went away mid-run
    run.log_metrics({"x": 1.0})
    assert run.active == ["tensorboard"]
    run.end()


def test_unknown_backend_and_system_info(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracking backend"):
        make_tracker(tmp_path, backends=["neptune"])
    info = system_info()
    assert info["python"] and int(info["cpu_count"]) >= 1 and float(info["ram_gib"]) > 0


def test_a_relative_store_is_the_current_directorys_after_a_chdir(tmp_path, monkeypatch):
    """MLflow caches the store of `file:./mlruns`: a run after a chdir must land in the new directory."""
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        tracker = Tracker(TrackingConfig(uri="file:./mlruns", experiment="unit", backends=["mlflow"]))
        with tracker.start_run(name) as run:
            run.log_metrics({"em": 0.5}, step=0)
        assert run.active == ["mlflow"], f"mlflow did not start in {name}"
        assert (tmp_path / name / "mlruns").is_dir()
    from training.tracking import local_store_uri

    assert local_store_uri("mlruns") == (tmp_path / "second" / "mlruns").as_uri()
    for kept in ("http://mlflow:5000", "sqlite:///runs.db", "file:///srv/mlruns", "databricks", "databricks://p"):
        assert local_store_uri(kept) == kept
