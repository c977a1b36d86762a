"""Auto mode's weight soup: more runs of the chosen settings, averaged into one adapter.

Each member trains the chosen trial's settings from the same initialisation and validation split
(`seed`) with another batch order and dropout (`order_seed`); the soup is the exact mean of the
members' LoRA updates and of their trained heads (`tuneserve merge` combination=cat, rank = members
x r). Fine-tunes that share their starting point average into one basin and usually score above
each member ("model soups", Wortsman et al. 2022); members that do not share it do not: on banking77
(77 intents) two runs with their own seeds (own head initialisation and split) averaged to 0.744
against 0.861 and 0.862 alone, and even from one initialisation banking77's soup of two runs scored
0.814 against 0.861 and 0.855 (emotion's: 0.901 against 0.891 and 0.891). So the soup is written only
when it scores at least the chosen trial on the validation split (both scored by the same evaluator:
banking77's 0.770 against 0.820 is caught there); soups of refit members (trained on train + validation)
have no validation left and are written as a refit is.

    runs = soup_plan(4, left_seconds, seconds_per_run, refit=False)      # more runs the budget allows
    result = cook_soup(trial_cfg, chosen_dir, runs, folder, deadline, seconds_per_run)   # as auto_train does
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from training.train.config import TrainConfig

ORDER_SEED_STEP = 1000  # member i trains with order_seed = seed + i * this


def soup_supported(cfg: TrainConfig) -> bool:
    """Plain LoRA (lora, qlora) classification adapters: what `tuneserve merge` averages exactly, on the task
    where soups were measured (benchmarks/results/recipes.md)."""
    return cfg.task == "classification" and cfg.method in ("lora", "qlora") and not cfg.lora.use_rslora


def soup_plan(size: int, left: float, member_seconds: float, refit: bool) -> int:
    """How many runs to add for the soup: up to `size` members in all within `left` seconds (without a refit the
    chosen trial's own run is the first member; with one every member is a refit run)."""
    if size < 2 or member_seconds <= 0:
        return 1 if refit else 0
    runs = size if refit else size - 1
    fits = int(left // member_seconds)
    return max(1 if refit else 0, min(runs, fits))


def train_members(train_cfg: TrainConfig, count: int, folder: Path, deadline: float, seconds_each: float,
                  run: Callable[[TrainConfig], Any]) -> list[Path]:
    """`count` runs of `train_cfg` with order seeds seed + i * ORDER_SEED_STEP (i = 1..count; a refit starts
    at i = 0, the chosen run's own order), each into folder/member-i; none starts that would end past `deadline`."""
    members: list[Path] = []
    first = 0 if train_cfg.refit else 1
    for i in range(first, first + count):
        if members and time.monotonic() + seconds_each > deadline:
            break
        out = folder / f"member-{i}"
        run(train_cfg.model_copy(update={"order_seed": train_cfg.seed + i * ORDER_SEED_STEP, "output": str(out),
                                         "overwrite": True}))
        members.append(out)
    return members


def validation_accuracy(cfg: TrainConfig, artifacts: list[Path], folder: Path) -> list[float]:
    """Each artifact's accuracy on the run's validation split, scored by `tuneserve evaluate`'s runner."""
    from training.evaluation.runner import EvalConfig, evaluate
    from training.train.data import load_splits

    rows = load_splits(cfg.data, cfg.task, cfg.seed, cfg.objective).validation
    data = folder / "validation.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows), encoding="utf-8")
    scores = []
    for artifact in artifacts:
        result, _ = evaluate(EvalConfig(model=str(artifact), data=str(data), task="classification", batch_size=64,
                                        threads=cfg.threads or 2, perplexity=False, tracking={"enabled": False}),
                             progress=False)
        scores.append(float(result.metrics["accuracy"]))
    return scores


def merge_members(members: list[Path], output: Path, like_manifest) -> None:
    """The uniform soup of `members` at `output`, its manifest the first member's plus the soup's lineage."""
    from training.artifact.config import load_config
    from training.train.merge import MergeConfig, merge_adapters

    cfg = load_config(MergeConfig, None, [f"sources={json.dumps([str(m) for m in members])}", "combination=cat",
                                          f"output={output}", f"name={like_manifest.name}", "overwrite=true"])
    merge_adapters(cfg, like=like_manifest)


def cook_soup(cfg: TrainConfig, chosen: Path, count: int, folder: Path, deadline: float, seconds_each: float,
              refit_steps: int | None = None, selected: dict[str, float] | None = None) -> dict[str, Any]:
    """Train `count` more runs of `cfg` (the chosen trial's settings; with `refit_steps`, refit runs on train +
    validation for that many steps) and average them (with the chosen run, without a refit) into folder/soup.
    Returns what happened; "written" is the artifact to write: the soup, the one refit run when only one fit,
    or None when the chosen run stays (the soup scored below it on validation, or no member fit)."""
    from training.artifact import read_manifest
    from training.train.run import train

    started = time.monotonic()
    refit = refit_steps is not None
    folder.mkdir(parents=True, exist_ok=True)

    def run(member_cfg: TrainConfig) -> None:
        train(member_cfg, refit_steps=refit_steps, selected=selected) if refit else train(member_cfg)

    runs = train_members(cfg.model_copy(update={"refit": refit}), count, folder, deadline, seconds_each, run)
    members = runs if refit else [chosen, *runs]
    out: dict[str, Any] = {"members": len(members), "refit": refit, "written": None,
                           "order_seeds": [read_manifest(m).hyperparameters.get("order_seed") for m in members]}
    if len(members) < 2:
        written = str(members[0]) if refit else None
        out.update(written=written, why="one run fit the budget: no soup", seconds=round(time.monotonic() - started, 1))
        return out
    soup = folder / "soup"
    merge_members(members, soup, read_manifest(members[0]))
    if refit:
        out.update(written=str(soup), why="refit runs: no validation is left to check the soup against")
    else:
        soup_acc, chosen_acc = validation_accuracy(cfg, [soup, chosen], folder)
        out.update(val_accuracy=soup_acc, chosen_val_accuracy=chosen_acc)
        if soup_acc >= chosen_acc:
            out.update(written=str(soup), why=f"soup {soup_acc:.4f} >= chosen run {chosen_acc:.4f} on validation")
        else:
            out["why"] = f"soup {soup_acc:.4f} < chosen run {chosen_acc:.4f} on validation: the chosen run is kept"
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def member_seconds(trial_seconds: float, refit: bool) -> float:
    """What one more run of a trial's settings is expected to take (a refit trains on validation too)."""
    from training.search.auto import REFIT_RESERVE

    return trial_seconds * (REFIT_RESERVE if refit else 1.0)
