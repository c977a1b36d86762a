"""Auto mode: a time-budgeted search over the few settings that matter, the winner written as the artifact.

`tuneserve train CONFIG auto=true budget=15m` runs `auto_train(cfg, budget_seconds)`: a TPE
study with the Hyperband (successive-halving) pruner, centred on the data-driven recipe of
`training.train.recipes` (the config's `auto` values resolved from the data): the learning rate
within a factor of 4 of the recipe's, epochs at half, once and twice the recipe's (unless
`max_steps` is set), LoRA rank and dropout (LoRA-family methods) and class weighting
(classification). The recipe's own settings are the first trial, so the winner (best on
validation) is never worse on validation than what plain `tuneserve train` would write. The
whole budget is used: another trial starts while half of the longest trial so far still fits,
and the budget ends the last one at an evaluation the way early stopping would, its best
validated weights written and competing (the first trial always completes, so a budget
shorter than one trial still yields a model). The recipe's trial runs first, alone, and its
artifact is kept: another trial replaces it only when its validation accuracy leads by more than
one binomial standard error (`choose_trial`), because on 150-300 validation rows the best of many
trials is mostly the luckiest (before this rule, SQuAD topics: 0.980 against the recipe's 0.967 on
validation, 0.915 against 0.927 on test). The chosen trial's artifact is copied to `cfg.output`,
or, when `refit` (true, or auto by `training.train.recipes.refit_decision`) says so, its settings
are retrained on train + validation for the steps their trial selected; when the recipe's trial
already calls for a refit, 1.2 x its time is held back from the search for it. The study,
`report.json` (with the `choice` and the refit decision) and `report.md` stay in
`<output>.search/`. What the budget holds back for it then goes to a weight soup (`training.search.soup`):
up to `soup` - 1 one-epoch continuations of the run about to be written, trained on train + validation
(+0.09 test points over members on train alone, paired on seven runs), averaged with it and written.
Measured against the default recipe and a plain loop by `benchmarks/recipes.py` (benchmarks/results/recipes.md),
15 minutes at 1 thread: no search trial led the recipe's by a standard error on banking77, emotion or SQuAD
topics (2, 2 and 14 trials at seed 0), and the soup of the recipe's run and three continuations was written on
every run: +0.84, +0.85 and +0.16 points of test accuracy over the default at seed 0, +0.65, +1.25 and +0.62 at
seed 1, +1.85, +0.50 and 0.00 at seed 2; Q7 = +0.75, goal +0.5 (members on train alone: +0.498).
The soup alone, its three members not bounded by a budget (benchmarks/soup_probe.py), adds +0.84, +0.73 and
+0.10 points over the run (2, 2 and 3 seeds).

    report = auto_train(load_config(TrainConfig, "training/configs/classify-minilm.yaml"), budget=900)
"""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError
from training.train.config import TrainConfig
from training.train.recipes import FAMILY, data_shape, pick_recipe

UNITS = {"s": 1, "m": 60, "h": 3600}
AUTO_TRIAL_FIT = 0.5  # start another trial while half the longest one fits; the budget cuts it at an evaluation
REFIT_RESERVE = 1.2  # x the recipe's trial time, held back for the refit when one is expected
SOUP_SIZE = 4  # auto mode's weight soup: at most this many runs of the chosen settings (training.search.soup)
SOUP_ON_VALIDATION = True  # its members train on train + validation (benchmarks/results/soup_probe.md: >= 0 on 7 of 7 runs)


def parse_budget(text: str) -> float:
    """'15m', '900s', '1.5h' or plain seconds -> seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not found or float(found.group(1)) <= 0:
        raise ConfigError(f"budget {text!r} is not a duration", "write e.g. budget=15m, budget=900s or budget=1h")
    return float(found.group(1)) * UNITS[found.group(2) or "s"]


def resolve_recipe(cfg: TrainConfig) -> tuple[TrainConfig, int]:
    """`cfg` with every `auto` filled by the data-driven rules (what a plain `tuneserve train` would run),
    and the training rows (for the evaluation cadence)."""
    from training.artifact.loading import load_tokenizer
    from training.artifact.paths import resolve_base_dir
    from training.train.data import load_splits

    splits = load_splits(cfg.data, cfg.task, cfg.seed, cfg.objective)
    tokenizer = load_tokenizer(resolve_base_dir(cfg.base), padding_side="right")
    return pick_recipe(cfg, data_shape(cfg, splits, tokenizer)).config, len(splits.train)


def _choices(*values: Any) -> list[Any]:
    return sorted(set(values), key=lambda v: (str(type(v)), v))


def auto_space(recipe: TrainConfig) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The searched settings around the data-driven recipe (dotted TrainConfig keys -> distributions),
    and the recipe's own point of that space, which is tried first: the search starts from what
    `tuneserve train` would do, so its winner is never worse than the default on validation."""
    lr = float(recipe.optim.lr)
    space: dict[str, dict[str, Any]] = {"optim.lr": {"type": "loguniform", "low": lr / 4, "high": lr * 4}}
    first: dict[str, Any] = {"optim.lr": lr}
    if recipe.max_steps is None:
        epochs = int(math.ceil(float(recipe.epochs)))
        space["epochs"] = {"type": "categorical", "choices": _choices(max(1, math.ceil(epochs / 2)), epochs, 2 * epochs)}
        first["epochs"] = epochs
    if FAMILY.get(recipe.method, "adapter") == "adapter":
        space["lora.r"] = {"type": "categorical", "choices": _choices(8, 16, 32, recipe.lora.r)}
        space["lora.dropout"] = {"type": "categorical", "choices": _choices(0.0, 0.1, recipe.lora.dropout)}
        first.update({"lora.r": recipe.lora.r, "lora.dropout": recipe.lora.dropout})
    if recipe.task == "classification":
        space["class_weighting"] = {"type": "categorical", "choices": ["balanced", "none"]}
        first["class_weighting"] = recipe.class_weighting
    return space, first


def auto_eval_every(cfg: TrainConfig, rows: int) -> int:
    """Evaluate at least twice an epoch, so the pruner and the budget can stop a trial on small data
    (the recipe's eval_every=200 would otherwise evaluate a 1 000-row run only at its end)."""
    per_epoch = math.ceil(rows / (cfg.batch_size * cfg.grad_accum))
    return max(1, min(int(cfg.eval_every), math.ceil(per_epoch / 2)))


def auto_search_config(cfg: TrainConfig, budget: float):
    """The study of auto mode for `cfg`, its `auto` values resolved from the data first."""
    from training.search.config import SearchConfig

    cfg, rows = resolve_recipe(cfg)
    space, first = auto_space(cfg)
    metric = "val_accuracy" if cfg.task == "classification" else "val_loss"
    return SearchConfig(train=cfg.model_copy(update={"eval_every": auto_eval_every(cfg, rows)}), space=space,
                        first_trials=[first], trial_fit=AUTO_TRIAL_FIT, cut_trials_compete=True,
                        sampler="tpe", pruner="hyperband", n_trials=1000,
                        budget=budget, timeout=budget, metric=metric, output=f"{cfg.output}.search",
                        progress=cfg.progress, study_name="auto",
                        tracking=cfg.tracking.model_dump(exclude={"experiment"}))


def lead_needed(recipe_value: float, validated: int) -> float:
    """The validation accuracy a trial must gain over the recipe's trial to replace it: one binomial
    standard error of the recipe's accuracy on `validated` rows (1.5 points at 0.967 on 150 rows)."""
    return math.sqrt(max(recipe_value * (1.0 - recipe_value), 0.0) / max(1, validated))


def choose_trial(report: dict[str, Any], metric: str, validated: int) -> dict[str, Any]:
    """The trial auto mode writes: the best on validation, unless it is another trial than the recipe's (#0)
    and leads it by less than `lead_needed` (accuracy metrics only: a lead of a few rows is noise, and the
    winner of many trials on a small split is the luckiest, not the best; SQuAD topics: 0.980 against
    0.967 on validation, 0.915 against 0.927 on test)."""
    best = report["best"]
    recipe = next(t for t in report["trials"] if t["number"] == 0)
    choice = {"trial": best["number"], "value": best["value"], "recipe_value": recipe["value"], "validated_rows": validated}
    if best["number"] == 0 or recipe["state"] != "COMPLETE" or "accuracy" not in metric:
        return {**choice, "why": "best on validation"}
    needed = lead_needed(recipe["value"], validated)
    lead = best["value"] - recipe["value"]
    choice.update(lead=lead, lead_needed=needed)
    if lead > needed:
        return {**choice, "why": f"leads the recipe's trial by {lead:.4f} > one standard error ({needed:.4f})"}
    return {**choice, "trial": 0, "value": recipe["value"],
            "why": f"trial {best['number']} leads the recipe's trial by only {lead:.4f} <= one standard error "
                   f"({needed:.4f}) on {validated} validation rows: the recipe's trial is kept"}


def _trial_seconds(report: dict[str, Any], number: int) -> float:
    return float(next(t["seconds"] for t in report["trials"] if t["number"] == number) or 0.0)


def _epochs(train: TrainConfig, report: dict[str, Any], number: int) -> float:
    """The epochs trial `number` ran (its searched value, else the recipe's; 1 for a max_steps run)."""
    params = next(t["params"] for t in report["trials"] if t["number"] == number)
    epochs = params.get("epochs", train.epochs)
    return 1.0 if train.max_steps is not None or not isinstance(epochs, (int, float)) else float(epochs)


def _epoch_steps(train: TrainConfig, manifest) -> int:
    """Optimiser steps in one epoch of train + validation (a refit's soup members train that long)."""
    splits = getattr(manifest.data, "splits", None) or {}
    rows = int(splits.get("train", 0)) + int(splits.get("validation", 0))
    return max(1, math.ceil(rows / (train.batch_size * train.grad_accum)))


def selected_steps(selected: dict[str, float]) -> int:
    """The steps a trial's run selected (its best validated step, else all it ran): what a refit trains for."""
    return int(selected.get("best_step") or selected["steps"])


def refit_winner(scfg, params: dict[str, Any], selected: dict[str, float], output: str) -> dict[str, Any]:
    """Retrain the chosen settings on train + validation for the steps its trial selected (`selected`: its
    artifact's metrics), at `output`."""
    from training.search.config import trial_config
    from training.train.run import train

    steps = selected_steps(selected)
    winner = trial_config(scfg.train, params, output)
    started = time.monotonic()
    train(winner.model_copy(update={"progress": scfg.progress}), refit_steps=steps, selected=selected)
    return {"steps": steps, "seconds": round(time.monotonic() - started, 1)}


def auto_train(cfg: TrainConfig, budget: float, soup: int = SOUP_SIZE,
               soup_on_validation: bool = SOUP_ON_VALIDATION) -> dict[str, Any]:
    """Search within `budget` seconds and write the chosen trial's artifact at `cfg.output`, retrained on
    train + validation when `cfg.refit` (true, or auto by `refit_decision`) says so; returns the report.

    The recipe's trial runs first, alone; its artifact is kept (`<search>/recipe`), and when a refit is
    expected 1.2 x its time is held back from the rest of the search for the refit. The soup's members train
    on train + validation when `soup_on_validation` (or after a refit), else on train alone, the soup then
    checked against the run on validation."""
    from training.artifact import read_manifest
    from training.search.config import trial_config
    from training.search.report import save_report
    from training.search.run import out_of_budget, search
    from training.search.soup import cook_soup, member_seconds, soup_plan, soup_supported
    from training.train.loop import validated_rows
    from training.train.recipes import refit_decision

    if Path(cfg.output).exists() and not cfg.overwrite:
        raise ConfigError(f"output {cfg.output} already exists", "choose another output= or pass overwrite=true")
    if cfg.eval_every is None:
        raise ConfigError("auto mode compares trials on validation and prunes at evaluations",
                          "set eval_every=N (validate every N steps)")
    started = time.monotonic()
    scfg = auto_search_config(cfg.model_copy(update={"refit": False}), budget)
    search_dir = Path(scfg.output)
    report = search(scfg.model_copy(update={"n_trials": 1}))
    if not (search_dir / "best").is_dir():
        raise ConfigError(f"the recipe's trial of the auto search did not finish within {budget:.0f} s",
                          f"give a larger budget; the study is in {scfg.output}")
    recipe_dir = search_dir / "recipe"
    if not recipe_dir.is_dir():  # else a resumed study: trial 0 ran before and was kept then
        shutil.copytree(search_dir / "best", recipe_dir)
    recipe = read_manifest(recipe_dir)
    validated = validated_rows(scfg.train, int((getattr(recipe.data, "splits", None) or {}).get("validation", 0)))
    size = soup if soup_supported(scfg.train) else 1
    expected = refit_decision(cfg, recipe.metrics, validated)[0]
    elapsed = time.monotonic() - started
    refit_s = REFIT_RESERVE * _trial_seconds(report, 0) if expected else 0.0
    member = member_seconds(_trial_seconds(report, 0), _epochs(scfg.train, report, 0),
                            REFIT_RESERVE if expected or soup_on_validation else 1.0)
    reserve = refit_s + soup_plan(size, budget - elapsed - refit_s, member) * member
    if out_of_budget(budget - reserve, elapsed, _trial_seconds(report, 0), AUTO_TRIAL_FIT):
        held = f" ({reserve:.0f} s held for the soup and refit runs)" if reserve else ""
        report["stopped"] = f"budget: {elapsed:.0f} s of {budget:.0f} s used, another trial would not fit{held}"
    else:
        left = budget - reserve - elapsed
        report = search(scfg.model_copy(update={"budget": left, "timeout": left}))
    choice = choose_trial(report, scfg.metric, validated)
    chosen = recipe_dir if choice["trial"] == 0 else search_dir / "best"
    params = next(t["params"] for t in report["trials"] if t["number"] == choice["trial"])
    selected = (recipe if choice["trial"] == 0 else read_manifest(chosen)).metrics
    do_refit, why = refit_decision(cfg, selected, validated)
    report.update(choice=choice, refit_decision=why)
    shutil.rmtree(cfg.output, ignore_errors=True)
    if do_refit:
        report["refit"] = refit_winner(scfg, params, selected, cfg.output)
    written = Path(cfg.output) if do_refit else chosen
    on_validation = do_refit or soup_on_validation
    member = member_seconds(_trial_seconds(report, choice["trial"]), _epochs(scfg.train, report, choice["trial"]),
                            REFIT_RESERVE if on_validation else 1.0)
    runs = soup_plan(size, budget - (time.monotonic() - started), member)
    if runs:
        settings = trial_config(scfg.train, params, cfg.output).model_copy(update={"progress": scfg.progress})
        report["soup"] = cook_soup(settings, written, runs, search_dir / "soup", started + budget, member,
                                   lambda accuracy: lead_needed(accuracy, validated),
                                   refit_steps=_epoch_steps(scfg.train, recipe) if on_validation else None, selected=selected)
        if report["soup"]["written"]:
            shutil.rmtree(cfg.output, ignore_errors=True)
            written = Path(report["soup"]["written"])
    if written != Path(cfg.output):
        shutil.copytree(written, cfg.output)
    report.update(budget_seconds=budget, seconds=round(time.monotonic() - started, 1))
    save_report(search_dir, report)
    return report
