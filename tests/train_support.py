"""Helpers for the training tests (`tests/test_train_*.py`): synthetic data and small run configs."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "forest", "candle", "rocket", "garden", "silver"]


def instruction_rows(n: int, seed: int = 0) -> list[dict]:
    """Learnable rows: reverse a short list of words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, 3)
        rows.append({"instruction": "Reverse the words.", "input": " ".join(words),
                     "output": " ".join(reversed(words))})
    return rows


def classification_rows(n: int, seed: int = 0) -> list[dict]:
    """Two easy classes plus a rare third one: fruit words, weather words, music words."""
    rng = random.Random(seed)
    classes = {"fruit": ["apple", "lemon", "banana", "cherry"], "weather": ["cloud", "rain", "storm", "snow"],
               "music": ["piano", "guitar", "violin", "drum"]}
    rows = []
    for i in range(n):
        label = "music" if i % 6 == 0 else ("fruit" if i % 2 else "weather")
        words = rng.sample(classes[label], 2)
        rows.append({"text": f"I like the {words[0]} and the {words[1]}", "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_args(base: Path | str, data: Path, out: Path, *extra: str) -> list[str]:
    """key=value overrides for a fast run on the tiny base."""
    return [f"base={base}", f"data.path={data}", f"output={out}", "data.max_length=64", "batch_size=8",
            "max_steps=6", "optim.lr=5e-3", "optim.warmup_steps=0", "profile.embed=false", "progress=false",
            "threads=2", *extra]


def make_config(*args: str):
    from training.artifact.config import load_config
    from training.train.config import TrainConfig

    return load_config(TrainConfig, None, list(args))


def logits_of(model, collate, examples):
    import torch

    batch = collate(examples)
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


CLI = ("import typer; from tuneserve.commands.train import register; app = typer.Typer(); register(app); "
       "app(prog_name='tuneserve')")


def cli_command(*args: str) -> list[str]:
    """argv that runs only the training commands of the CLI (independent of other areas' modules)."""
    import sys

    return [sys.executable, "-c", CLI, *args]


def without_ray_setup(**extra: str) -> dict[str, str]:
    """This process's environment without the Ray settings conftest made (token auth, loopback): a child
    started with it shows that the code under test makes them itself, as for a user's first command."""
    import os

    from training.artifact.local_ray import LOOPBACK_ENV

    dropped = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", LOOPBACK_ENV)
    return {**{k: v for k, v in os.environ.items() if k not in dropped}, **extra}


def run_cli(args: list[str], env: dict[str, str], timeout: float = 600):
    """`python -m tuneserve ARGS` in a child process; fails the test with its output's tail on a non-zero exit."""
    import subprocess
    import sys

    import pytest

    run = subprocess.run([sys.executable, "-m", "tuneserve", *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if run.returncode != 0:
        pytest.fail(f"tuneserve {args[0]} exited {run.returncode}:\n{(run.stdout + run.stderr)[-4000:]}")
    return run


def is_loopback(ip: str) -> bool:
    """Whether a listening socket's address (psutil's laddr.ip, IPv4-mapped IPv6 too) is this machine's only."""
    import ipaddress

    return ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback
