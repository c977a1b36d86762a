"""Auto mode's weight soup: short continuations of the written run, averaged with it into one adapter.

Each member starts from the run auto mode would write (the chosen trial's artifact, or its refit), and
trains one more epoch at a tenth of its learning rate, constant, with another batch order and dropout
(`order_seed`); the soup is the exact mean of the run and its members (LoRA updates and trained heads;
`tuneserve merge` combination=cat, rank = members x r). Members that start from the same fine-tuned
weights stay in its basin, so their mean is a flat-region point of it (the idea of stochastic weight
averaging and of "model soups", Wortsman et al. 2022). Measured on MiniLM with 3 members (test accuracy, run
alone -> soup): banking77 0.8614 -> 0.8649, emotion 0.8910 -> 0.8955. Members beyond three add little (seed 2,
the run then 1, 2, 3, 4, 5 members: banking77 0.8510, 0.8555, 0.8584, 0.8614, 0.8627, 0.8594; emotion to 4:
0.8885, 0.8970, 0.8975, 0.8975, 0.8995), so auto mode's soup is the run and three members. Over seven runs
(`benchmarks/soup_probe.py`, results/soup_probe.md) the run and three members gain +0.84 points on banking77 (2
seeds), +0.73 on emotion (2) and +0.10 on SQuAD topics (3; saturated, 1 test row = 0.16). Members at 0.3 x the
learning rate instead of 0.1 x, paired on the same runs: banking77 +0.39, +0.29, emotion -0.25, +0.05, SQuAD
topics -0.16, +0.31, -0.31 (per-dataset means +0.34, -0.10, -0.05): noise, so the tenth stays. Independent
runs of the same settings (same initialisation, other batch orders, full schedule each) do not average:
banking77 0.861 and 0.855 alone, 0.814 averaged. Auto mode's members train their epoch on train + validation
(`SOUP_ON_VALIDATION` in training.search.auto; as after a refit): paired with members on train alone on the
same seven runs, the soup of the run and three members scored +0.19, +0.03 (banking77), 0.00, +0.10 (emotion),
+0.16, 0.00, +0.16 (SQuAD topics) test points more, never less. Such a soup has no validation left and is
written; members on train alone are checked instead: their soup is written unless it trails the run on the
validation split by more than one binomial standard error (the same noise bar as `choose_trial`: on 300 rows a
1-point difference is noise; banking77's independent-run soup, 0.753 against 0.820, is caught; no soup of
continuations trailed its run by more than one test row in the seven probes).

    runs = soup_plan(4, left_seconds, seconds_per_member)   # members the budget allows
    result = cook_soup(settings, written_dir, runs, folder, deadline, seconds_per_member, lambda acc: 0.02)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from training.train.config import TrainConfig

ORDER_SEED_STEP = 1000  # member i trains with order_seed = seed + i * this
MEMBER_LR_FACTOR = 0.1  # members continue at a tenth of the run's learning rate


def soup_supported(cfg: TrainConfig) -> bool:
    """Plain LoRA (lora, qlora) classification adapters: what `tuneserve merge` averages exactly, on the task
    where soups were measured (benchmarks/results/recipes.md)."""
    return cfg.task == "classification" and cfg.method in ("lora", "qlora") and not cfg.lora.use_rslora


def soup_plan(size: int, left: float, member_seconds: float) -> int:
    """How many members (continuations) to train: up to `size` - 1 within `left` seconds (none when size < 2)."""
    if size < 2 or member_seconds <= 0:
        return 0
    return max(0, min(size - 1, int(left // member_seconds)))


def member_config(settings: TrainConfig, start: Path, i: int, output: Path,
                  lr_factor: float = MEMBER_LR_FACTOR) -> TrainConfig:
    """Member i: one epoch (at most the run's max_steps) from `start` at `lr_factor` x the learning rate (a tenth),
    constant, batch order seed + i * ORDER_SEED_STEP, no mid-run evaluation (its last weights are the member)."""
    optim = settings.optim.model_copy(update={"lr": float(settings.optim.lr) * lr_factor, "scheduler": "constant",
                                              "warmup_ratio": 0.0, "warmup_steps": None})
    return settings.model_copy(update={"init_adapter": str(start), "epochs": 1, "optim": optim,
                                       "order_seed": settings.seed + i * ORDER_SEED_STEP, "eval_every": None,
                                       "output": str(output), "overwrite": True, "refit": False})


def train_member(cfg: TrainConfig, refit_steps: int | None, selected: dict[str, float] | None) -> Path:
    """Train one member (a `member_config`): with `refit_steps`, that many steps on train + validation (auto mode's
    soup), else its epoch on train alone. Returns its artifact."""
    from training.train.run import train

    if refit_steps:
        train(cfg.model_copy(update={"refit": True}), refit_steps=refit_steps, selected=selected)
    else:
        train(cfg)
    return Path(cfg.output)


def train_members(settings: TrainConfig, start: Path, count: int, folder: Path, deadline: float, seconds_each: float,
                  refit_steps: int | None, selected: dict[str, float] | None) -> list[Path]:
    """`count` members from `start` into folder/member-i; none starts that would end past `deadline`. With
    `refit_steps` each member trains that many steps on train + validation (auto mode's soup)."""
    members: list[Path] = []
    for i in range(1, count + 1):
        if time.monotonic() + seconds_each > deadline:
            break
        members.append(train_member(member_config(settings, start, i, folder / f"member-{i}"), refit_steps, selected))
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


def cook_soup(settings: TrainConfig, written: Path, count: int, folder: Path, deadline: float, seconds_each: float,
              trail_allowed: Callable[[float], float], refit_steps: int | None = None,
              selected: dict[str, float] | None = None) -> dict[str, Any]:
    """Train up to `count` members from `written` (the run auto mode would write) and average them with it into
    folder/soup; `trail_allowed(run accuracy)`: how far the soup may trail the run on validation (auto mode's
    one standard error). With `refit_steps` the members train that many steps on train + validation and the soup
    is written unchecked. Returns what happened; "written" is the soup's path, or None when `written` stays."""
    from training.artifact import read_manifest

    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    members = [written, *train_members(settings, written, count, folder, deadline, seconds_each, refit_steps,
                                       selected)]
    out: dict[str, Any] = {"members": len(members), "on_validation": refit_steps is not None, "written": None,
                           "member_lr": float(settings.optim.lr) * MEMBER_LR_FACTOR,
                           "order_seeds": [read_manifest(m).hyperparameters.get("order_seed") for m in members]}
    if len(members) < 2:
        out.update(why="no member fit the budget", seconds=round(time.monotonic() - started, 1))
        return out
    soup = folder / "soup"
    merge_members(members, soup, read_manifest(written))
    if refit_steps is not None:
        out.update(written=str(soup), why="its members trained on train + validation: no validation is left to check "
                                          "it against")
    else:
        soup_acc, run_acc = validation_accuracy(settings, [soup, written], folder)
        needed = trail_allowed(run_acc)
        out.update(val_accuracy=soup_acc, run_val_accuracy=run_acc, trail_allowed=needed)
        if soup_acc >= run_acc - needed:
            out.update(written=str(soup), why=f"soup {soup_acc:.4f} against the run's {run_acc:.4f} on validation: "
                                              f"within one standard error ({needed:.4f}) or ahead")
        else:
            out["why"] = (f"soup {soup_acc:.4f} trails the run's {run_acc:.4f} on validation by more than one standard "
                          f"error ({needed:.4f}): the run is kept")
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def member_seconds(trial_seconds: float, trial_epochs: float, factor: float = 1.0) -> float:
    """What one member (one epoch) is expected to take: the trial's time per epoch, x `factor` (a refit's
    members train on train + validation)."""
    return trial_seconds / max(trial_epochs, 1.0) * factor
