"""Benchmark: LoRA vs full fine-tuning of all-MiniLM-L6-v2 on Banking77 intent classification.

Runs `training.train.compare` (the code behind `tuneserve compare`) on the real Banking77
data in `../shared/data/banking77` (train.csv with 10% held out for validation, test.csv
for the test accuracy) and checks goals Q1 (LoRA test accuracy >= 0.90 within 15 minutes
on 2 cores) and Q2 (LoRA within 2 accuracy points of full fine-tuning, measured in the same run).

    python benchmarks/banking77_compare.py [--epochs 4] [--threads 2] [--no-group-by-length]
Writes benchmarks/results/banking77_compare.{json,md} (+ banking77_compare.png).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import (  # noqa: E402
    DATA, arguments, command, goals_table, machine, provenance, versions, write_results)

BANKING77 = DATA / "banking77"


def main() -> None:
    parser = arguments(__doc__, base=False, threads=True, note="2-core dev box, nothing else heavy running")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--full-lr", type=float, default=1e-4)
    parser.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                        help="random batches instead of length-grouped ones (pads to ~46 instead of ~17 tokens)")
    parser.add_argument("--keep-artifacts", action="store_true")
    parser.add_argument("--data", default=str(BANKING77), help="folder with Banking77 train.csv / test.csv")
    args = parser.parse_args()
    from training.artifact.config import load_config
    from training.train.compare import CompareConfig, compare

    work = Path(tempfile.mkdtemp(prefix="banking77-"))
    shared = [f"data.path={args.data}", "data.label_field=category", "data.max_length=64", "data.validation_fraction=0.1",
              "base=all-minilm-l6-v2", "task=classification", f"epochs={args.epochs}", f"batch_size={args.batch_size}",
              f"threads={args.threads}", "optim.scheduler=linear", "optim.warmup_ratio=0.06", "profile.embed=true",
              "eval_batches=20", f"group_by_length={str(args.group_by_length).lower()}", "output=unused"]
    from training.train.config import TrainConfig

    train_cfg = load_config(TrainConfig, None, shared)
    cfg = CompareConfig(methods=["lora", "full"], train=train_cfg, output=str(work),
                        overrides={"lora": {"optim": {"lr": args.lora_lr},
                                            "lora": {"r": 16, "alpha": 32, "dropout": 0.1,
                                                     "target_modules": ["query", "key", "value", "dense"]}},
                                   "full": {"optim": {"lr": args.full_lr, "weight_decay": 0.01}}})
    started = time.time()
    result = compare(cfg)
    rows = {r["method"]: r for r in result["results"]}
    lora, full = rows["lora"], rows["full"]
    lora_acc, full_acc = lora["metrics"]["test_accuracy"], full["metrics"]["test_accuracy"]
    gap = (full_acc - lora_acc) * 100
    goals = [
        {"id": "Q1", "measure": "LoRA test accuracy (train time s)", "value": round(lora_acc, 4),
         "train_seconds": lora["train_seconds"], "goal": ">= 0.90 within 900 s on 2 cores",
         "met": lora_acc >= 0.90 and lora["train_seconds"] <= 900},
        {"id": "Q2", "measure": "full minus LoRA test accuracy (points)", "value": round(gap, 2), "goal": "<= 2.0",
         "met": gap <= 2.0},
    ]
    report = {"benchmark": "banking77_compare", "goals": goals, "results": result["results"],
              "baseline": "full fine-tuning of the same model on the same data in the same run",
              "machine": machine(torch_threads=args.threads, note=args.note),
              "versions": versions("torch", "transformers", "peft"), "command": command(),
              "total_seconds": round(time.time() - started, 1)}
    table = Path(result["markdown"]).read_text(encoding="utf-8")
    lines = ["# Banking77: LoRA vs full fine-tuning (all-MiniLM-L6-v2)", "", *provenance(report), "", table,
             *goals_table(goals), "", "![comparison](banking77_compare.png)"]
    path = write_results("banking77_compare", report, "\n".join(lines))
    shutil.copy(result["plot"], path.with_suffix(".png"))
    print("\n".join(lines))
    if not args.keep_artifacts:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
