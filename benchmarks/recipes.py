"""Benchmark (issue 23): do the shipped recipes beat a plain hand-written loop on data nobody tuned them for?

A panel of classification sets (`banking77`, `emotion`: 6 imbalanced classes, `squad-topics`:
which of the 6 SQuAD dev articles a question is about, 6 imbalanced classes, derived offline
from `../shared/data/squad_v1.1_dev`; `banking77-six`: six banking77 intents drawn with a fixed seed,
and `banking77-cards`: six card intents that are easy to confuse, both added to check refit=auto's
threshold out of sample). For each, these arms on the same train/test rows:

- `plain`: `benchmarks/plain_loop.py` (LoRA r16, lr 2e-3 one-cycle, batch 32, 2 epochs, all rows, last weights)
- `default`: `training/configs/classify-minilm.yaml` as shipped (`tuneserve train ... data.path=...`):
  epochs, lr, warm-up and class weighting picked from the data (`training.train.recipes`), no refit
- `refit` / `norefit` / `refitauto`: the same with `refit=true` (always retrain on train + validation
  for the selected steps) / `refit=false` (never: the shipped default) / `refit=auto` (only when
  validation made too few errors to select with; the shipped default until its evidence was rescored)
- `fixed`: the same with banking77's fixed settings (epochs=4, lr 2e-3, warm-up 0.06, balanced):
  the recipe as shipped before its settings became data-driven
- `unweighted`: the same with `class_weighting=none` (whether the imbalance rule's weights pay)
- `auto`: auto mode (`tuneserve train CONFIG auto=true budget=...`, `training.search.auto.auto_train`):
  the recipe's trial, a search, then more runs of the chosen settings averaged into a weight soup
  (`training.search.soup`) as the budget allows

The recipe arms are scored with `tuneserve evaluate`'s entry point (`training.evaluation.runner.evaluate`)
on the test split; every arm's accuracy and macro-F1 come from the same scorer. Goals: Q6 = default
minus plain accuracy, worst dataset (>= 0); Q7 = auto minus default, mean over the panel (>= +0.5
points, and never below the default on any dataset). A dataset run with --seeds counts with the mean of
its paired seeds (seed 0 = the arms' own runs); each row also records its seed-0-only value.

Sizes are configurable; the defaults are the issue's (all rows, 15-minute auto budget). Run one
dataset per call (each writes benchmarks/results/recipes/<dataset>.json), then `--report`:

    python benchmarks/recipes.py --dataset emotion --train-rows 2000 --test-rows 1000 --budget 4m
    python benchmarks/recipes.py --report      # -> benchmarks/results/recipes.json + recipes.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchmarks.recipes_report import PARTS, SCORING, report, scoring_of  # noqa: E402
SHARED = ROOT.parent / "shared" / "data"
CONFIG = ROOT / "training" / "configs" / "classify-minilm.yaml"
ARMS = ("plain", "default", "refit", "norefit", "refitauto", "auto", "fixed", "unweighted")
ARM_OVERRIDES = {"refit": ["refit=true"], "norefit": ["refit=false"], "refitauto": ["refit=auto"],
                 "unweighted": ["class_weighting=none"],
                 "fixed": ["epochs=4", "optim.lr=2e-3", "optim.warmup_ratio=0.06", "class_weighting=balanced"]}
SQUAD_TEST_FRACTION = 0.3


def _csv_rows(path: Path, label_field: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{"text": row["text"], "label": row[label_field]} for row in csv.DictReader(handle)]


def _squad_topics() -> tuple[list[dict], list[dict]]:
    """Question -> article title of the SQuAD dev subset; a seeded 70/30 split."""
    path = SHARED / "squad_v1.1_dev" / "squad_v1.1_dev_subset2k.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [{"text": r["question"], "label": r["title"]} for r in rows]
    random.Random(23).shuffle(rows)
    cut = int(len(rows) * (1 - SQUAD_TEST_FRACTION))
    return rows[:cut], rows[cut:]


CARD_INTENTS = ("activate_my_card", "card_arrival", "card_delivery_estimate", "get_physical_card",
                "order_physical_card", "getting_spare_card")  # pairs a user would mix up


def _banking77() -> tuple[list[dict], list[dict]]:
    return (_csv_rows(SHARED / "banking77" / "train.csv", "category"),
            _csv_rows(SHARED / "banking77" / "test.csv", "category"))


def _banking77_subset(pick) -> tuple[list[dict], list[dict]]:
    """All rows of the banking77 intents `pick(sorted labels)` chooses: small sets (few validation errors),
    added after refit=auto's threshold was set from the other three datasets, to check it out of sample."""
    train, test = _banking77()
    chosen = set(pick(sorted({r["label"] for r in train})))
    return [r for r in train if r["label"] in chosen], [r for r in test if r["label"] in chosen]


DATASETS = {
    "banking77": _banking77,
    "emotion": lambda: (_csv_rows(SHARED / "emotion" / "train.csv", "label"),
                        _csv_rows(SHARED / "emotion" / "test.csv", "label")),
    "squad-topics": _squad_topics,
    "banking77-six": lambda: _banking77_subset(lambda labels: random.Random(6).sample(labels, 6)),
    "banking77-cards": lambda: _banking77_subset(lambda labels: CARD_INTENTS),
}


def cap_rows(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    if not limit or limit >= len(rows):
        return rows
    return random.Random(seed).sample(rows, limit)


def write_split(folder: Path, name: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def train_config(data: Path, output: Path, extra: list[str], threads: int):
    from training.artifact.config import load_config
    from training.train.config import TrainConfig

    overrides = [f"data.path={data}", "data.label_field=label", f"output={output}", f"threads={threads}",
                 "evaluate_test=false", "progress=false", "overwrite=true", "profile.enabled=false", *extra]
    return load_config(TrainConfig, str(CONFIG), overrides), overrides


def score_artifact(artifact: Path, data: Path, out: Path, threads: int) -> dict[str, float]:
    """`tuneserve evaluate --model ARTIFACT --data DATA` on the test split, rescored by the shared scorer."""
    from plain_loop import score

    from training.evaluation.runner import EvalConfig, evaluate

    cfg = EvalConfig(model=str(artifact), data=str(data / "test.csv"), task="classification", batch_size=64,
                     threads=threads, out=str(out), tracking={"enabled": False})
    result, _ = evaluate(cfg, progress=False)
    gold, predicted = [s["gold"] for s in result.samples], [s["prediction"] for s in result.samples]
    return {**score(gold, predicted), "evaluate_accuracy": result.metrics["accuracy"],
            "evaluate_macro_f1": result.metrics["macro_f1"], "eval_seconds": round(result.wall_time_s, 1)}


def run_arm(arm: str, data: Path, work: Path, train_rows: list, test_rows: list, budget: float, threads: int,
            seed: int = 0) -> dict:
    """One arm's scores; `seed` > 0: another seed of it (the plain loop's seed, the recipe's seed 42 + seed)."""
    if arm == "plain":
        from plain_loop import plain_loop, score

        run = plain_loop(train_rows, test_rows, threads=threads, seed=seed)
        return {**score([r["label"] for r in test_rows], run["predictions"]), "train_seconds": run["train_seconds"],
                "steps": run["steps"], "command": "benchmarks/plain_loop.py (2 epochs, lr 2e-3 one-cycle, r16, batch 32)"}
    output = work / "artifacts" / arm
    cfg, overrides = train_config(data, output, ARM_OVERRIDES.get(arm, []) + ([f"seed={42 + seed}"] if seed else []),
                                  threads)
    started = time.perf_counter()
    extra: dict = {}
    if arm == "auto":
        from training.search.auto import auto_train

        report = auto_train(cfg, budget)
        extra = {"budget_seconds": budget, "trials": len(report["trials"]), "stopped": report.get("stopped"),
                 "best_params": report.get("best", {}).get("params") if isinstance(report.get("best"), dict) else None,
                 "trial_values": [[t["number"], t["state"], t["value"]] for t in report["trials"]],
                 "written_trial": report["choice"]["trial"], "choice": report["choice"]["why"],
                 "refit": report["refit_decision"],
                 "soup": {k: v for k, v in (report.get("soup") or {}).items() if k != "written"} | {
                     "written": bool((report.get("soup") or {}).get("written"))}}
        command = f"tuneserve train {CONFIG.relative_to(ROOT)} {' '.join(overrides)} auto=true budget={budget:.0f}s"
    else:
        from training.train.run import train

        outcome = train(cfg)
        hp = outcome.manifest.hyperparameters
        extra = {"steps": outcome.result.steps, "best_step": outcome.result.metrics.get("best_step"),
                 "val_accuracy": outcome.result.metrics.get("val_accuracy"),
                 "settings": {"epochs": hp.get("epochs"), "lr": hp.get("optim", {}).get("lr"),
                              "warmup_ratio": hp.get("optim", {}).get("warmup_ratio"),
                              "class_weighting": hp.get("class_weighting"), "refit": hp.get("refit")}}
        command = f"tuneserve train {CONFIG.relative_to(ROOT)} {' '.join(overrides)}"
    seconds = round(time.perf_counter() - started, 1)
    return {**score_artifact(output, data, work / "eval" / arm, threads), "scoring": SCORING, "train_seconds": seconds,
            **extra,
            "command": command + f" && tuneserve evaluate --model {output} --data {data / 'test.csv'}"}


def machine(threads: int) -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": threads,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "note": "2-core host SHARED with other sessions' work (tests, training); wall times are noisy"}


def versions() -> dict[str, str]:
    import optuna
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "optuna": optuna.__version__}


def merge_earlier(part: dict, before: dict) -> bool:
    """Keep the arms, notes and seeds (stale ones too) measured before at the same sizes in `part`, and the
    earlier commands in its command; False, nothing kept, when the sizes differ."""
    if any(before.get(k) != part[k] for k in ("train_rows", "test_rows", "budget_seconds")):
        return False
    part["arms"] = before["arms"]
    part.update({k: before[k] for k in ("notes", "seeds", "seeds_left_padded", "seeds_superseded") if k in before})
    part["command"] = before["command"] + " ; " + part["command"]
    return True


def run_dataset(args: argparse.Namespace) -> dict:
    from training.search.auto import parse_budget

    budget = parse_budget(args.budget)
    train_all, test_all = DATASETS[args.dataset]()
    train_rows, test_rows = cap_rows(train_all, args.train_rows, 0), cap_rows(test_all, args.test_rows, 1)
    work = Path(tempfile.mkdtemp(prefix=f"recipes-{args.dataset}-"))
    data = work / "data"
    write_split(data, "train", train_rows)
    write_split(data, "test", test_rows)
    labels = sorted({r["label"] for r in train_rows})
    counts = [sum(r["label"] == label for r in train_rows) for label in labels]
    part = {"dataset": args.dataset, "train_rows": len(train_rows), "train_rows_available": len(train_all),
            "test_rows": len(test_rows), "test_rows_available": len(test_all), "labels": len(labels),
            "imbalance": round(max(counts) / max(1, min(counts)), 2), "budget_seconds": budget,
            "machine_at_start": machine(args.threads), "versions": versions(), "arms": {},
            "command": "python benchmarks/recipes.py " + " ".join(sys.argv[1:])}
    PARTS.mkdir(parents=True, exist_ok=True)
    earlier = PARTS / f"{args.dataset}.json"
    if earlier.is_file():  # same sizes: add these arms to the ones measured before
        merge_earlier(part, json.loads(earlier.read_text(encoding="utf-8")))

    def save() -> None:  # after every run: a killed benchmark keeps what it measured
        part["machine_at_end"] = machine(args.threads)
        earlier.write_text(json.dumps(part, indent=2, default=str), encoding="utf-8")

    for arm in filter(None, args.arms.split(",")):  # --arms "" with --seeds: only the extra seeds
        print(f"[{args.dataset}] {arm} ...", flush=True)
        retire_seeds(part, arm, run_arm(arm, data, work, train_rows, test_rows, budget, args.threads))
        print(f"[{args.dataset}] {arm}: {json.dumps({k: v for k, v in part['arms'][arm].items() if k != 'command'})}",
              flush=True)
        save()
    for seed in range(args.seed_from, args.seeds):  # more seeds (of plain and default by default): seed noise?
        for arm in filter(None, args.seed_arms.split(",")):
            print(f"[{args.dataset}] {arm} seed {seed} ...", flush=True)
            accuracy = run_arm(arm, data, work, train_rows, test_rows, budget, args.threads, seed)["accuracy"]
            part.setdefault("seeds", {}).setdefault(arm, {})[str(seed)] = accuracy
            save()
    shutil.rmtree(work, ignore_errors=True)
    return part


def retire_seeds(part: dict, arm: str, run: dict) -> None:
    """Record `arm`'s new seed-0 `run`; its earlier seeds no longer pair with it when they were scored the old
    way (moved to seeds_left_padded) or ran other settings (seeds_superseded, e.g. `default` after the shipped
    config changed)."""
    before, seeds = part["arms"].get(arm), part.get("seeds", {})
    if arm in seeds and before is not None:
        if scoring_of(arm, before) != SCORING:
            part.setdefault("seeds_left_padded", {})[arm] = seeds.pop(arm)
        elif before.get("settings") != run.get("settings"):
            part.setdefault("seeds_superseded", {})[arm] = {"seeds": seeds.pop(arm), "settings": before.get("settings")}
    part["arms"][arm] = run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS))
    parser.add_argument("--train-rows", type=int, default=None, help="cap on training rows (default: all, the issue's)")
    parser.add_argument("--test-rows", type=int, default=None, help="cap on test rows (default: all)")
    parser.add_argument("--budget", default="15m", help="auto mode budget (default 15m, the issue's)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1,
                        help="also run the --seed-arms with seeds 1..N-1 (recorded as Q6-seeds, Q7-seeds, Q6-refit-seeds)")
    parser.add_argument("--seed-arms", default="plain,default", help="arms run again by --seeds")
    parser.add_argument("--seed-from", type=int, default=1, help="first extra seed (to add seeds to earlier runs)")
    parser.add_argument("--report", action="store_true", help="combine the per-dataset results into recipes.json/.md")
    args = parser.parse_args()
    if args.dataset:
        run_dataset(args)
    if args.report or not args.dataset:
        report()


if __name__ == "__main__":
    main()
