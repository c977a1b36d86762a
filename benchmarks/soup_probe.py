"""Benchmark (issue 23, informs auto mode's weight soup): soups of one run and k continuations, per member lr factor.

Auto mode (`training.search.auto`) ends with a soup (`training.search.soup`): the run it would write, averaged
with one-epoch continuations of it at a fraction of its learning rate. This probe measures that soup alone, with
no budget in the way: for a dataset of `benchmarks/recipes.py`'s panel and a seed it trains the default recipe
once (the run), then for each `--factors` value trains `--members` continuations from that run and scores the
soup of the run and its first i members on the test split after each member (`tuneserve evaluate`'s scorer,
as recipes.py does). Factors are paired on the same run, so their difference is the factor's alone. A factor
written `0.1+val` trains its members on train + validation instead (what auto mode's soup does after a refit).
A later call for the same dataset and seed keeps the earlier call's arms when its run scores the same (training
is deterministic at a fixed thread count) and trains only the arms not yet probed.

Each call writes benchmarks/results/soup_probe/<dataset>-s<seed>.json; `--report` combines them into
benchmarks/results/soup_probe.json + .md: soup minus run per factor and member count, and arm minus arm at the
largest member count both ran (rows Q7-soup-lr and Q7-soup-val, which inform auto mode's soup).

    python benchmarks/soup_probe.py --dataset emotion --train-rows 3000 --seed 0 --factors 0.1,0.3 --members 3
    python benchmarks/soup_probe.py --dataset emotion --train-rows 3000 --seed 0 --factors 0.1,0.1+val --members 3
    python benchmarks/soup_probe.py --report
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.recipes import (  # noqa: E402
    DATASETS, cap_rows, machine, score_artifact, train_config, versions, write_split)
from benchmarks.recipes_report import dataset_means  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = RESULTS / "soup_probe"
VAL_SUFFIX = "+val"  # a factor ending in it: members train on train + validation (a refit's soup), not train alone


def probe(args: argparse.Namespace) -> dict:
    from training.artifact import read_manifest
    from training.search.auto import _epoch_steps, resolve_recipe
    from training.search.soup import member_config, merge_members, train_member
    from training.train.run import train

    train_all, test_all = DATASETS[args.dataset]()
    work = Path(tempfile.mkdtemp(prefix=f"soup-probe-{args.dataset}-"))
    data = work / "data"
    write_split(data, "train", cap_rows(train_all, args.train_rows, 0))
    write_split(data, "test", cap_rows(test_all, args.test_rows, 1))
    cfg, _ = train_config(data / "train.csv", work / "run", [f"seed={42 + args.seed}"], args.threads)
    run = Path(cfg.output)
    train(cfg)
    settings, rows = resolve_recipe(cfg)
    run_manifest = read_manifest(run)
    part = {"dataset": args.dataset, "seed": args.seed, "train_rows": rows, "threads": args.threads,
            "start": "the default recipe's run (training/configs/classify-minilm.yaml)",
            "machine_at_start": machine(args.threads), "versions": versions(),
            "command": "python benchmarks/soup_probe.py " + " ".join(sys.argv[1:]),
            "run": score_artifact(run, data, work / "eval-run", args.threads)["accuracy"], "soups": {},
            "member_seconds": {}}
    part.update(earlier_arms(PARTS / f"{args.dataset}-s{args.seed}.json", part["run"]))
    PARTS.mkdir(parents=True, exist_ok=True)
    for arm in args.factors.split(","):
        factor, on_validation = float(arm.removesuffix(VAL_SUFFIX)), arm.endswith(VAL_SUFFIX)
        key = f"{factor}{VAL_SUFFIX if on_validation else ''}"
        if len(part["soups"].get(key, [])) >= args.members:
            print(f"[{args.dataset} s{args.seed}] members {key}: kept from the earlier probe of this run", flush=True)
            continue
        part["soups"].pop(key, None)
        part["member_seconds"].pop(key, None)
        members: list[Path] = []
        refit_steps = _epoch_steps(settings, run_manifest) if on_validation else None  # one epoch of train + val
        for i in range(1, args.members + 1):
            started = time.monotonic()
            member = member_config(settings, run, i, work / f"f{key}-member-{i}", lr_factor=factor)
            members.append(train_member(member, refit_steps, run_manifest.metrics))
            part["member_seconds"].setdefault(key, []).append(round(time.monotonic() - started, 1))
            soup = work / f"f{key}-soup-{i}"
            merge_members([run, *members], soup, run_manifest)
            accuracy = score_artifact(soup, data, work / f"eval-{key}-{i}", args.threads)["accuracy"]
            part["soups"].setdefault(key, []).append(accuracy)
            print(f"[{args.dataset} s{args.seed}] members {key}, run + {i} members: {accuracy:.4f} "
                  f"(run {part['run']:.4f})", flush=True)
            part["machine_at_end"] = machine(args.threads)
            (PARTS / f"{args.dataset}-s{args.seed}.json").write_text(json.dumps(part, indent=2), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    return part


def earlier_arms(path: Path, run_accuracy: float) -> dict:
    """The soups an earlier probe of this dataset and seed measured, when its run scored `run_accuracy` too (the
    same run: training is deterministic at a fixed thread count), so arms added later pair with them; else none."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text(encoding="utf-8"))
    if earlier.get("run") != run_accuracy:
        print(f"{path.name}: the earlier run scored {earlier.get('run')}, this one {run_accuracy}: not the same run, "
              "its soups are dropped", flush=True)
        return {}
    return {"soups": earlier["soups"], "member_seconds": earlier.get("member_seconds") or {}}


def paired_gaps(parts: list[dict], a: str, b: str) -> dict[str, list[float]]:
    """Factor a minus factor b, test points, per dataset: one value per run (seed), at the largest member count
    both factors reached on it."""
    gaps: dict[str, list[float]] = {}
    for p in parts:
        soups = p["soups"]
        if a in soups and b in soups and (k := min(len(soups[a]), len(soups[b]))):
            gaps.setdefault(p["dataset"], []).append(round((soups[a][k - 1] - soups[b][k - 1]) * 100, 2))
    return gaps


def soup_gains(parts: list[dict], factor: str, members: int) -> dict[str, list[float]]:
    """The soup of the run and `members` members at `factor` minus the run alone, test points, per dataset."""
    gains: dict[str, list[float]] = {}
    for p in parts:
        if len(soups := p["soups"].get(factor, [])) >= members:
            gains.setdefault(p["dataset"], []).append(round((soups[members - 1] - p["run"]) * 100, 2))
    return gains


def _row(goal_id: str, measure: str, per_run: dict[str, list[float]], goal: str) -> dict:
    return {"id": goal_id, "measure": measure, **dataset_means(per_run), "per_run": per_run,
            "goal": goal, "met": "informs", "datasets": len(per_run)}


def report(a: str = "0.3", b: str = "0.1", members: int = 3) -> dict:
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(PARTS.glob("*.json"))]
    goals = [_row("Q7-soup-lr", f"soup with members at {a} x the run's lr minus at {b} x, test accuracy points at the "
                  "largest member count both ran, mean over runs per dataset", paired_gaps(parts, a, b),
                  f"informs: > 0 on every dataset would justify moving MEMBER_LR_FACTOR from {b} to {a}"),
             _row("Q7-soup-val", f"soup with members trained on train + validation minus on train alone (both at {b} x "
                  "the run's lr), test accuracy points at the largest member count both ran, mean over runs per "
                  "dataset", paired_gaps(parts, f"{b}{VAL_SUFFIX}", b),
                  "informs: > 0 on every dataset would justify auto mode training its soup's members on train + "
                  "validation (the soup then goes unchecked on validation)"),
             _row("Q7-soup-gain", f"soup of the run and {members} members at {b} x its lr minus the run, test accuracy "
                  "points, mean over runs per dataset", soup_gains(parts, b, members),
                  "informs Q7: what auto mode's soup adds when its members fit the budget")]
    result = {"benchmark": "soup_probe", "goals": goals, "runs": parts,
              "command": "python benchmarks/soup_probe.py --report (after one --dataset run per dataset and seed)"}
    (RESULTS / "soup_probe.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    lines = ["# Weight soup probe: run + k continuations, per member lr factor (issue 23)", "",
             "Test accuracy of the run alone and of the soup of the run and its first k members; members are one "
             "epoch from the run at factor x its learning rate, constant (training.search.soup).", "",
             "| dataset | seed | train rows | factor | run | soup k=1.. | soup - run, points |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in parts:
        for factor, soups in p["soups"].items():
            accuracies = ", ".join(f"{s:.4f}" for s in soups)
            gains = ", ".join(f"{(s - p['run']) * 100:+.2f}" for s in soups)
            lines.append(f"| {p['dataset']} | {p['seed']} | {p['train_rows']} | {factor} | {p['run']:.4f} | "
                         f"{accuracies} | {gains} |")
    lines += ["", "| goal | measure | value | per run | panel mean | target |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {g['id']} | {g['measure']} | {g['value']} | {g['per_run']} | {g['panel_mean']} | {g['goal']} |"
              for g in goals] + [""]
    lines += [f"- {p['dataset']} s{p['seed']}: start = {p['start']}; `{p['command']}`" for p in parts] + [""]
    (RESULTS / "soup_probe.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS))
    parser.add_argument("--train-rows", type=int, default=None, help="cap on training rows (recipes.py's panel: 3000)")
    parser.add_argument("--test-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed is 42 + this (recipes.py's seeds)")
    parser.add_argument("--factors", default="0.1,0.3", help="member learning rate factors, paired on one run; "
                        f"'0.1{VAL_SUFFIX}': members at 0.1 x trained on train + validation")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.dataset:
        probe(args)
    if args.report or not args.dataset:
        report()


if __name__ == "__main__":
    main()
