"""`backend=ray`: two tiny trials run at once as Ray Tune trials (one CPU each) on a local 2-CPU Ray instance
and land in the SQLite study. Run as a user would: `tuneserve search` in a fresh process whose environment
has none of the Ray settings (token auth, loopback only) that the command must make itself."""

from __future__ import annotations

import os
import shutil

import pytest
from search_support import data_file, make_search_config, search_args
from train_support import run_cli, without_ray_setup

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def test_ray_backend_runs_trials_into_the_study(tiny_base_dir, tmp_path):
    import json

    import optuna

    out = tmp_path / "search"
    args = search_args(tiny_base_dir, data_file(tmp_path), out, "backend=ray", "sampler=random", "pruner=none",
                       "n_trials=2", "ray.num_cpus=2", "ray.concurrency=2", "train.threads=1")
    ray_tmp = f"/tmp/rts-{os.getpid()}"  # short: Ray's socket paths must stay under 107 bytes
    try:
        run_cli(["search", *args], without_ray_setup(RAY_TMPDIR=ray_tmp))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    cfg = make_search_config(*args)
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "ray" and report["states"] == {"COMPLETE": 2}
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url())
    trials = study.get_trials()
    assert len({t.params["optim.lr"] for t in trials}) == 2, "each Ray trial got its own sampled parameters"
    assert all(len(t.intermediate_values) == 2 for t in trials), "workers reported each mid-run evaluation"
    assert (out / "best").is_dir() and report["best"]["number"] in {t.number for t in trials}
