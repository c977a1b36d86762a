"""A run killed with SIGKILL after a checkpoint resumes (`--resume`) to the same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from train_support import cli_command, instruction_rows, make_config, train_args, write_jsonl

from training.train.run import train

pytestmark = pytest.mark.integration
STEPS = 12


def _args(base, data, out, *extra):
    return ["train", *train_args(base, data, out, f"max_steps={STEPS}", "checkpoint_every=3", "batch_size=4",
                                 "grad_accum=2", "lora.dropout=0.2", "eval_every=6", "optim.scheduler=cosine",
                                 "optim.warmup_steps=2", *extra)]


def _env(delay: float = 0.0):
    env = dict(os.environ)
    env["TUNESERVE_TRAIN_STEP_DELAY_S"] = str(delay)
    return env


def _metrics(out):
    return json.loads((out / "manifest.json").read_text())["metrics"]


def test_killed_run_resumes_to_the_same_result(tiny_base_dir, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", instruction_rows(48))
    straight = tmp_path / "straight"  # in this process: only the killed run needs one of its own
    train(make_config(*_args(tiny_base_dir, data, straight)[1:]))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli_command(*_args(tiny_base_dir, data, killed)), env=_env(0.4),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed.checkpoints" / "step-6"
    deadline = time.time() + 240
    while not checkpoint.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    assert checkpoint.is_dir() and not killed.exists()

    done = subprocess.run(cli_command(*_args(tiny_base_dir, data, killed), "--resume"), env=_env(), timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _metrics(straight), _metrics(killed)
    assert a["steps"] == b["steps"] == STEPS
    for key in ("train_loss", "val_loss", "train_loss_first"):
        assert abs(a[key] - b[key]) < 1e-4 * max(1.0, abs(a[key])), (key, a[key], b[key])


def test_resume_without_checkpoint_is_a_clear_error(tiny_base_dir, tmp_path):
    from training.artifact.errors import TrainingError

    data = write_jsonl(tmp_path / "rows.jsonl", instruction_rows(8))
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(make_config(*_args(tiny_base_dir, data, tmp_path / "x")[1:], "resume=true"))
