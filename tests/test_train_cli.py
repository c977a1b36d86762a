"""The `tuneserve train/plan/compare` commands through the real CLI: help, clean errors, a plan table."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def tuneserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneserve", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_training_commands():
    out = tuneserve("--help")
    assert out.returncode == 0, out.stderr
    for command in ("train", "plan", "compare"):
        assert command in out.stdout


def test_plan_prints_table_and_recommendation():
    out = tuneserve("plan", "model=7b", "gpu_memory_gb=12", "batch_size=1")
    assert out.returncode == 0, out.stderr
    assert "qlora" in out.stdout and "recommendation: qlora" in out.stdout.replace("\n", " ")


def test_unknown_method_is_a_clean_error(tmp_path):
    out = tuneserve("train", "method=lorra", f"output={tmp_path / 'x'}", "base=all-minilm-l6-v2")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown fine-tuning method 'lorra'" in out.stderr and "qlora" in out.stderr


def test_bad_override_names_the_field(tmp_path):
    out = tuneserve("train", "optim.lr=-1", f"output={tmp_path / 'x'}")
    assert out.returncode == 2 and "optim.lr" in out.stderr and "Traceback" not in out.stderr
