"""Benchmark: is fine-tuning worth it on Banking77 (Q3), and how much data does it need (Q4)?

Every number comes from the CLI (`tuneserve baseline`, `tuneserve learning-curve`), run as
subprocesses; run it under `flock /tmp/tuneserve-bench.lock` on a shared host.

- `--step minilm`: MiniLM (all-minilm-l6-v2) nearest-centroid and kNN over the 10,003 train rows,
  on a seeded sample of `--limit` rows of test.csv.
- `--step smollm2`: SmolLM2-135M-Instruct zero-shot and few-shot (`--shots`, `--selection`) label
  likelihood, scores calibrated/mean/sum, on a seeded sample of `--lm-limit` rows of test.csv.
- `--step curve`: MiniLM LoRA (training/configs/classify-minilm.yaml) learning curve.
- `--step augmentation`: the same recipe at `--aug-fraction` of the rows, `--aug-seeds` seeds, trained
  without and with the data pipeline's augmentation (`learning-curve compare=augmentation`): the paired
  difference with its interval (the seed blog's "15 % average gain" claim, measured).
- `--step report`: Q3 = fine-tuned accuracy (benchmarks/results/banking77_compare.json: LoRA, same
  recipe, the full test.csv) minus the best baseline, in points (goal >= 20); Q4 = the smallest
  fraction reaching 95 % of full-data accuracy (reported, with the PNG).

    flock /tmp/tuneserve-bench.lock python benchmarks/baseline.py --step minilm --step smollm2 --step curve --step report
Writes benchmarks/results/baseline.{json,md} and benchmarks/results/baseline/ (reports, curve PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "baseline"
DATA = ROOT.parent / "shared" / "data" / "banking77"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


def cli(*args: str) -> dict:
    command = [sys.executable, "-m", "tuneserve.cli", *args]
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    return {"command": "tuneserve " + " ".join(shlex.quote(a) for a in args), "rc": done.returncode,
            "seconds": round(time.time() - started, 1)}


def common(limit: int) -> list[str]:
    return [f"data={DATA / 'test.csv'}", "task=classification", f"train_data={DATA / 'train.csv'}",
            "columns.label=category", f"limit={limit}", "seed=0", "--no-progress"]


def step_minilm(args) -> dict:
    return cli("baseline", "base=all-minilm-l6-v2", *common(args.limit), f"out={OUT / 'minilm'}")


def step_smollm2(args) -> dict:
    return cli("baseline", "base=smollm2-135m", *common(args.lm_limit), f"shots={args.shots}",
               f"selection={args.selection}", f"out={OUT / 'smollm2'}")


def curve_cli(args, *extra: str) -> dict:
    return cli("learning-curve", "train=training/configs/classify-minilm.yaml", f"train.data.path={DATA}",
               f"train.epochs={args.epochs}", "train.threads=2", "train.profile.embed=false", "train.eval_batches=10",
               "train.progress=false", "small_fraction=0.2", f"test_rows={args.limit}", *extra)


def step_curve(args) -> dict:
    return curve_cli(args, f"fractions={args.fractions}", f"seeds={args.seeds}", "full_seeds=1",
                     f"output={OUT / 'curve'}")


def step_augmentation(args) -> dict:
    return curve_cli(args, "compare=augmentation", f"fractions=[{args.aug_fraction}]", f"seeds={args.aug_seeds}",
                     f"full_seeds={args.aug_seeds}", f"output={OUT / 'augmentation'}")


def versions(*packages: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def report(args, runs: dict) -> None:
    previous = load(RESULTS / "baseline.json") or {}
    runs = {**previous.get("runs", {}), **runs}
    baselines = []
    for name in ("minilm", "smollm2"):
        summary = load(OUT / name / "baseline_summary.json")
        for r in (summary or {}).get("results", []):
            baselines.append({"base": summary["base"], **{k: r[k] for k in ("mode", "name", "rows", "accuracy", "ci95",
                                                                          "macro_f1", "latency_per_example_s")}})
    tuned = load(RESULTS / "banking77_compare.json")
    lora = next(r for r in tuned["results"] if r["method"] == "lora") if tuned else None
    best = max(baselines, key=lambda b: b["accuracy"]) if baselines else None
    goals = []
    if lora and best:
        gap = 100 * (lora["value"] - best["accuracy"])
        goals.append({"id": "Q3", "measure": "fine-tuned (MiniLM LoRA) minus best prompt/embedding baseline accuracy "
                      "(points)", "value": round(gap, 2), "goal": ">= 20", "met": gap >= 20,
                      "fine_tuned": {"accuracy": lora["value"], "rows": 3080, "source": "banking77_compare.json"},
                      "best_baseline": best,
                      "gap_range_from_baseline_ci": [round(100 * (lora["value"] - best["ci95"][1]), 2),
                                                     round(100 * (lora["value"] - best["ci95"][0]), 2)]})
    curve = load(OUT / "curve" / "learning_curve.json")
    if curve:
        hit = curve["smallest_fraction_reaching_target"]
        goals.append({"id": "Q4", "measure": "smallest data fraction reaching 95 % of full-data accuracy",
                      "value": hit["fraction"] if hit else None, "goal": "reported (curve PNG)",
                      "met": hit is not None, "curve_png": "baseline/curve/learning_curve.png",
                      "missing_fractions": curve.get("missing_fractions", []),
                      "points": [{k: p[k] for k in ("fraction", "train_rows", "n_seeds", "mean", "low", "high")}
                                 for p in curve["curves"]["plain"]]})
    augmented = load(OUT / "augmentation" / "learning_curve.json")
    augmentation = augmented and {"fraction_rows": augmented["curves"]["plain"][0]["train_rows"],
                                  "arms": {arm: points[0] for arm, points in augmented["curves"].items()},
                                  "effect": augmented.get("augmentation", [])}
    out = {"benchmark": "baseline", "goals": goals, "augmentation": augmentation, "baselines": baselines, "fine_tuned": lora and
           {k: lora[k] for k in ("method", "value", "trainable_parameters", "train_seconds")},
           "runs": runs, "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                     "load_average": os.getloadavg(),
                                     "note": "2-core host shared with other jobs (load average above)"},
           "versions": {"python": platform.python_version(), **versions("torch", "transformers", "peft", "scikit-learn")}, "command": "python benchmarks/baseline.py " +
           " ".join(sys.argv[1:])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "baseline.json").write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
    lines = ["# Banking77: prompt/embedding baselines vs fine-tuning (Q3) and learning curve (Q4)", "",
             f"Command: `{out['command']}`  ", f"Machine: {out['machine']}  ", f"Versions: {out['versions']}", "",
             "Baselines: seeded samples of test.csv (`--limit` rows for MiniLM, `--lm-limit` for SmolLM2: 77 label "
             "options per row on 2 shared cores); their Wilson intervals are wide at small n.", "",
             "| base | mode | rows | accuracy | 95% CI (Wilson) | macro F1 | s / example |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    lines += [f"| {b['base']} | {b['mode']} | {b['rows']} | {b['accuracy']:.4f} | [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}] | "
              f"{b['macro_f1']:.4f} | {b['latency_per_example_s']:.3f} |" for b in baselines]
    if lora:
        lines += ["", f"Fine-tuned: MiniLM LoRA (classify-minilm recipe), test accuracy {lora['value']:.4f} on all 3,080 "
                  f"test rows, {lora['trainable_parameters']:,} trainable parameters, {lora['train_seconds']:.0f} s "
                  "training (benchmarks/results/banking77_compare.json)."]
    lines += ["", "| goal | measure | value | target | met |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {g['id']} | {g['measure']} | {g['value']} | {g['goal']} | {g['met']} |" for g in goals]
    if curve:
        lines += ["", (OUT / "curve" / "learning_curve.md").read_text(encoding="utf-8").replace(
            "](learning_curve.png)", "](baseline/curve/learning_curve.png)")]
    if augmentation:
        lines += ["", "# Is augmentation worth it? (same recipe, same rows, without and with augmentation)", "",
                  "| arm | train rows | seeds | mean accuracy | CI low | CI high |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {arm} | {p['train_rows']} | {p['n_seeds']} | {p['mean']:.4f} | {p['low']:.4f} | {p['high']:.4f} |"
                  for arm, p in augmentation["arms"].items()]
        lines += [f"\nAugmented minus plain at fraction {e['fraction']:g}, paired by seed ({e['n_seeds']} seeds): "
                  f"**{100 * e['mean']:+.2f} points** (95 % CI {100 * e['low']:+.2f} to {100 * e['high']:+.2f}); "
                  f"relative {e['relative_mean']:+.1%}." for e in augmentation["effect"]]
    (RESULTS / "baseline.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", action="append", choices=["minilm", "smollm2", "curve", "augmentation", "report"],
                        required=True)
    parser.add_argument("--limit", type=int, default=200, help="test rows for the embedding baselines and the curve")
    parser.add_argument("--lm-limit", type=int, default=200, help="test rows for SmolLM2 (77 label options each)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--selection", default="nearest")
    parser.add_argument("--epochs", default="auto", help="train.epochs of every curve point: a number, or auto "
                        "(the recipe's data-driven rule: more epochs for fewer rows)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", default="[0.05,0.1,0.25,0.5,1.0]")
    parser.add_argument("--aug-fraction", type=float, default=0.1)
    parser.add_argument("--aug-seeds", type=int, default=3)
    args = parser.parse_args()
    steps = {"minilm": step_minilm, "smollm2": step_smollm2, "curve": step_curve, "augmentation": step_augmentation}
    for step in args.step:
        report(args, {step: steps[step](args)} if step in steps else {})  # partial results survive a timeout


if __name__ == "__main__":
    main()
