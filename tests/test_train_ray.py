"""`distributed.backend=ray`: Ray Train on a local 2-CPU Ray instance (gloo, 2 workers of 1 CPU each).

Two workers with the global batch split in halves train like one process (same loss per step),
the artifact they write serves, their metrics reach MLflow, a killed worker resumes from the
last checkpoint, and a search trial (Ray Tune) is a 2-worker Ray Train run. The first runs as a
user would: `tuneserve train --backend ray` in a fresh process whose environment has none of the
Ray settings (token auth, loopback only) that the command must make itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from search_support import data_file, make_search_config, search_args
from train_support import instruction_rows, make_config, run_cli, train_args, without_ray_setup, write_jsonl

from tests.service_fixtures import service_args

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.timeout(240)]

RAY = ["distributed.backend=ray", "distributed.workers=2", "distributed.num_cpus=2", "distributed.cpus_per_worker=1"]
# lora.dropout=0: dropout masks draw from each process's RNG, the only thing N workers cannot share with one process
SAME = ["lora.dropout=0", "max_steps=4", "batch_size=8", "grad_accum=2", "threads=1"]


RAY_TMP = f"/tmp/ts-rt-{os.getpid()}"  # short: Ray's socket paths must stay under 107 bytes


@pytest.fixture(autouse=True)
def ray_env(monkeypatch, request):
    os.makedirs(RAY_TMP, exist_ok=True)
    monkeypatch.setenv("RAY_TMPDIR", RAY_TMP)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    yield
    import ray

    if "running_ray" not in request.fixturenames:  # (that instance's dir goes with it)
        assert not ray.is_initialized(), "the Ray backend stops the Ray instance it started"
        shutil.rmtree(RAY_TMP, ignore_errors=True)


@pytest.fixture(scope="module")
def running_ray():
    """A Ray instance started by the caller, as a cluster the user joined or a Tune trial's: the backend
    runs on it and leaves it up. One start and stop for the tests that take it, instead of one each."""
    import ray

    os.makedirs(RAY_TMP, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", RAY_TMP)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
            assert ray.is_initialized(), "the backend left the caller's Ray instance running"
        finally:
            ray.shutdown()
            shutil.rmtree(RAY_TMP, ignore_errors=True)


def test_two_gloo_workers_train_like_one_process_and_the_artifact_serves(tiny_base_dir, tmp_path, serve_keys,
                                                                         monkeypatch):
    import asyncio

    from mlflow.tracking import MlflowClient

    from benchmarks.load_faults import wait_for  # (seconds until, or None)
    from service.core import ServingCore
    from service.schemas import CompletionRequest
    from service.settings import load_settings
    from training.artifact import read_manifest
    from training.train import train

    data = write_jsonl(tmp_path / "rows.jsonl", instruction_rows(64))
    single = train(make_config(*train_args(tiny_base_dir, data, tmp_path / "one" / "solo", *SAME)))
    tracking = [f"tracking.uri=file:{tmp_path / 'mlruns'}", f"tracking.tensorboard_dir={tmp_path / 'tb'}"]
    out = tmp_path / "served" / "ray-lora"
    storage = f"distributed.storage={tmp_path / 'ray-storage'}"
    cli_tmp = f"{RAY_TMP}-cli"
    try:
        run_cli(["train", *train_args(tiny_base_dir, data, out, *SAME, *RAY, storage, "tracking.enabled=true",
                                      *tracking)], without_ray_setup(RAY_TMPDIR=cli_tmp))
        assert wait_for(lambda: not _ray_processes_under(cli_tmp), 15) is not None, "the command stopped its Ray"
    finally:
        shutil.rmtree(cli_tmp, ignore_errors=True)

    solo_losses = [r["loss"] for r in single.result.history]
    assert solo_losses[-1] < solo_losses[0] - 0.1, "the comparison is over a run that actually learns"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (the tracker sets it in the process that trains)
    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    run = client.search_runs([client.get_experiment_by_name("train").experiment_id])[0]
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    assert [value for _, value in logged] == pytest.approx(solo_losses, rel=1e-4), \
        "the workers' averaged loss per step: same global batch, same seed, same loss curve as one process"
    assert run.data.tags["backend"] == "ray" and "val_loss" in run.data.metrics
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))

    manifest = read_manifest(out)
    assert manifest.metrics["steps"] == 4
    assert manifest.metrics["val_loss"] == pytest.approx(single.result.metrics["val_loss"], rel=1e-4)
    assert manifest.hyperparameters["batch_size"] == 8, "the manifest records the global batch"
    assert not list(out.parent.glob(".*")), "one writer: no second (or half-written) artifact next to it"

    core = ServingCore(load_settings(service_args(tiny_base_dir, out.parent, serve_keys[0])))
    core.start()
    try:
        ids = {m.id for m in asyncio.run(core.list_models(None)).data}
        assert "ray-lora" in ids
        reply = asyncio.run(core.complete(CompletionRequest(model="ray-lora", prompt="Reverse the words.",
                                                            max_tokens=4, temperature=0), None))
        assert reply.choices[0].text is not None and reply.usage.completion_tokens > 0
    finally:
        core.stop()


def _ray_processes_under(temp_dir: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if temp_dir in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _kill_one_worker_after_a_checkpoint(storage: Path, killed: dict) -> None:
    """SIGKILL one Ray Train worker of this test's own Ray instance once Ray Train registered a checkpoint
    (it writes its checkpoint manager's snapshot then; files alone may still be mid-report)."""
    import psutil

    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and not list(storage.rglob("checkpoint_manager_snapshot.json")):
        time.sleep(0.2)
    while time.monotonic() < deadline:
        workers = [p for p in psutil.Process().children(recursive=True)
                   if "RayTrainWorker" in " ".join(p.cmdline() if p.is_running() else [])]
        if workers:
            os.kill(workers[-1].pid, signal.SIGKILL)
            killed["pid"] = workers[-1].pid
            return
        time.sleep(0.2)


def test_a_killed_worker_resumes_from_the_last_checkpoint(running_ray, tiny_base_dir, tmp_path, monkeypatch):
    from training.train import train

    # slow enough that the kill (about a second after the first checkpoint) lands before the last step
    monkeypatch.setenv("TUNESERVE_TRAIN_STEP_DELAY_S", "1.0")
    data = write_jsonl(tmp_path / "rows.jsonl", instruction_rows(64))
    out = tmp_path / "killed"
    cfg = make_config(*train_args(tiny_base_dir, data, out, *RAY, "max_steps=6", "checkpoint_every=2",
                                  "distributed.max_failures=1", "threads=1"))
    killed: dict = {}
    watcher = threading.Thread(target=_kill_one_worker_after_a_checkpoint, args=(Path(f"{out}.ray"), killed), daemon=True)
    watcher.start()
    outcome = train(cfg)
    watcher.join(5)
    assert killed.get("pid"), "a worker was killed mid-run"
    assert outcome.result.resumed_from and outcome.result.resumed_from % 2 == 0, "resumed from a stored checkpoint"
    assert outcome.result.resumed_from < 6 and outcome.result.steps == 6, "the step counter continued to the end"
    assert [r["step"] for r in outcome.result.history] == list(range(1, 7))
    assert (out / "manifest.json").is_file() and outcome.manifest.metrics["steps"] == 6


def test_a_search_trial_is_a_two_worker_ray_train_run(running_ray, tiny_base_dir, tmp_path):
    import optuna

    from training.search import search

    out = tmp_path / "search"
    train = [f"train.{arg}" for arg in RAY] + ["train.threads=1", "train.max_steps=4"]
    cfg = make_search_config(*search_args(tiny_base_dir, data_file(tmp_path), out, "backend=ray", "sampler=random",
                                          "pruner=median", "n_trials=1", "ray.num_cpus=2", *train))
    report = search(cfg)
    assert report["states"] == {"COMPLETE": 1}
    trials = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url()).get_trials()
    # the mid-run evaluation (step 2 of 4) travelled from rank 0 through the driver to the pruner and back
    assert [list(t.intermediate_values) for t in trials] == [[1]]
    assert (out / "best" / "manifest.json").is_file() and not list((out / "trials").glob("*.ray"))
