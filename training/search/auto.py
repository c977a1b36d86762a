"""Auto mode: a time-budgeted search over the few settings that matter, the winner written as the artifact.

`tuneserve train CONFIG auto=true budget=15m` runs `auto_train(cfg, budget_seconds)`: a TPE
study with the Hyperband (successive-halving) pruner over the learning rate (a factor of 4
around the data-driven default of `training.train.recipes`), epochs (unless `max_steps` is
set), LoRA rank and dropout (LoRA-family methods) and class weighting (classification). It
stops launching trials when the longest trial so far would not fit in what is left of the
budget (the first trial always runs, so a budget shorter than one trial still yields a model).
The best trial's artifact is copied to `cfg.output`; the study, `report.json` and `report.md`
stay beside it in `<output>.search/`. This is a skeleton: the space and its ranges are not yet
tuned by the benchmark panel.

    report = auto_train(load_config(TrainConfig, "training/configs/classify-minilm.yaml"), budget=900)
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError
from training.train.config import TrainConfig
from training.train.recipes import AUTO, FAMILY, LEARNING_RATES

UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """'15m', '900s', '1.5h' or plain seconds -> seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not found or float(found.group(1)) <= 0:
        raise ConfigError(f"budget {text!r} is not a duration", "write e.g. budget=15m, budget=900s or budget=1h")
    return float(found.group(1)) * UNITS[found.group(2) or "s"]


def auto_space(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """The searched settings for `cfg`'s method and task (dotted TrainConfig keys -> distributions)."""
    lr = cfg.optim.lr
    if lr == AUTO:
        lr = LEARNING_RATES[FAMILY.get(cfg.method, "adapter")][0 if cfg.task == "classification" else 1]
    space: dict[str, dict[str, Any]] = {"optim.lr": {"type": "loguniform", "low": lr / 4, "high": lr * 4}}
    if cfg.max_steps is None:
        space["epochs"] = {"type": "categorical", "choices": [1, 2, 3, 5]}
    if FAMILY.get(cfg.method, "adapter") == "adapter":
        space["lora.r"] = {"type": "categorical", "choices": [8, 16, 32]}
        space["lora.dropout"] = {"type": "categorical", "choices": [0.0, 0.1]}
    if cfg.task == "classification":
        space["class_weighting"] = {"type": "categorical", "choices": ["balanced", "none"]}
    return space


def auto_eval_every(cfg: TrainConfig) -> int:
    """Evaluate at least twice an epoch, so the pruner and the budget can stop a trial on small data
    (the recipe's eval_every=200 would otherwise evaluate a 1 000-row run only at its end)."""
    from training.train.data import load_splits

    rows = len(load_splits(cfg.data, cfg.task, cfg.seed).train)
    per_epoch = math.ceil(rows / (cfg.batch_size * cfg.grad_accum))
    return max(1, min(int(cfg.eval_every), math.ceil(per_epoch / 2)))


def auto_search_config(cfg: TrainConfig, budget: float):
    from training.search.config import SearchConfig

    metric = "val_accuracy" if cfg.task == "classification" else "val_loss"
    return SearchConfig(train=cfg, space=auto_space(cfg), sampler="tpe", pruner="hyperband", n_trials=1000,
                        budget=budget, timeout=budget, metric=metric, output=f"{cfg.output}.search",
                        progress=cfg.progress, study_name="auto",
                        tracking=cfg.tracking.model_dump(exclude={"experiment"}))


def auto_train(cfg: TrainConfig, budget: float) -> dict[str, Any]:
    """Search within `budget` seconds and write the best trial's artifact at `cfg.output`; returns the report."""
    from training.search.run import search

    if Path(cfg.output).exists() and not cfg.overwrite:
        raise ConfigError(f"output {cfg.output} already exists", "choose another output= or pass overwrite=true")
    if cfg.eval_every is None:
        raise ConfigError("auto mode compares trials on validation and prunes at evaluations",
                          "set eval_every=N (validate every N steps)")
    cfg = cfg.model_copy(update={"eval_every": auto_eval_every(cfg)})
    scfg = auto_search_config(cfg, budget)
    report = search(scfg)
    best = Path(scfg.output) / "best"
    if not best.is_dir():
        raise ConfigError(f"no trial of the auto search finished within {budget:.0f} s",
                          f"give a larger budget; the study is in {scfg.output}")
    shutil.rmtree(cfg.output, ignore_errors=True)
    shutil.copytree(best, cfg.output)
    return report
