"""Helpers for the search tests (`tests/test_search*.py`): a tiny, fast search config on synthetic rows."""

from __future__ import annotations

from pathlib import Path

from train_support import instruction_rows, write_jsonl

# lr from "barely moves" to "learns fast" so the median pruner always has a clearly worse trial to stop.
SPACE = ["space.optim.lr={type: loguniform, low: 1.0e-6, high: 3.0e-2, grid_points: 3}",
         "space.lora.r={type: categorical, choices: [2, 4]}"]


def search_args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    train = [f"train.base={base}", f"train.data.path={data}", "train.data.max_length=32", "train.data.validation_fraction=0.2",
             "train.batch_size=4", "train.max_steps=6", "train.eval_every=2", "train.eval_batches=1",
             "train.optim.warmup_steps=0", "train.profile.enabled=false", "train.threads=2",
             "train.lora.target_modules=[q_proj, v_proj]"]
    tracking = [f"tracking.uri=file:{out.parent / 'mlruns'}", f"tracking.tensorboard_dir={out.parent / 'tb'}"]
    return [*train, *SPACE, *tracking, f"output={out}", "progress=false", "startup_trials=1", *extra]


def data_file(directory: Path) -> Path:
    return write_jsonl(directory / "rows.jsonl", instruction_rows(40))


def make_search_config(*args: str):
    from training.artifact.config import load_config
    from training.search.config import SearchConfig

    return load_config(SearchConfig, None, list(args))
