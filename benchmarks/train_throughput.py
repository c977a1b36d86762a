"""Benchmark: training throughput (samples/s) of our trainer vs transformers `Trainer` + PEFT.

Same base model, same LoRA config, same tokenized data and padding collator, same batch
size, optimizer (AdamW), learning rate, schedule and clipping, in one process. Each
trainer runs `--reps` times, alternating, and the median samples/s is compared (goal P5:
ours / baseline >= 0.95).

    python benchmarks/train_throughput.py [--base tiny-llama] [--steps 40] [--reps 3]
Writes benchmarks/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import (  # noqa: E402
    DATA, arguments, command, goals_table, machine, provenance, versions, write_results)

ALPACA = DATA / "alpaca_en_demo" / "alpaca_en_demo.json"


def build(cfg):
    """A fresh LoRA model + tokenized data, identical for both trainers."""
    import torch

    from training.artifact import resolve_base_dir
    from training.artifact.loading import load_tokenizer
    from training.train.data import load_splits
    from training.train.methods import get_method
    from training.train.run import encoder, load_training_model

    model_dir = resolve_base_dir(cfg.base)
    splits = load_splits(cfg.data, cfg.task, cfg.seed)
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    torch.manual_seed(cfg.seed)
    method = get_method(cfg.method)
    model = method.wrap(cfg, load_training_model(cfg, method, model_dir, None, torch.device("cpu")))
    enc, collate, _ = encoder(cfg, splits, tokenizer)
    return model, enc(splits.train), collate


def run_ours(cfg) -> float:
    import torch

    from training.train.loop import TrainLoop

    model, train_ex, collate = build(cfg)
    loop = TrainLoop(cfg, model, train_ex, [], collate, torch.device("cpu"))
    started = time.perf_counter()
    result = loop.run()
    return result.samples / (time.perf_counter() - started)


def run_hf(cfg, workdir: str) -> float:
    from transformers import Trainer, TrainingArguments

    model, train_ex, collate = build(cfg)
    args = TrainingArguments(
        output_dir=workdir, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_steps=cfg.max_steps, learning_rate=cfg.optim.lr, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.optim.grad_clip, optim="adamw_torch",
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=cfg.seed, disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=train_ex, data_collator=collate)
    started = time.perf_counter()
    trainer.train()
    return cfg.max_steps * cfg.batch_size * cfg.grad_accum / (time.perf_counter() - started)


def main() -> None:
    parser = arguments(__doc__, threads=True,
                       note="CPU shared with other engineers' test runs; reps alternate to spread the noise")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--data", default=str(ALPACA), help="instruction rows (JSON/JSONL)")
    args = parser.parse_args()
    import torch

    from training.artifact.config import load_config
    from training.train.config import TrainConfig

    torch.set_num_threads(args.threads)
    cfg = load_config(TrainConfig, None, [
        f"base={args.base}", f"data.path={args.data}", "data.validation_fraction=0", f"data.max_length={args.max_length}",
        f"max_steps={args.steps}", f"batch_size={args.batch_size}", "optim.lr=1e-3", "optim.warmup_steps=0",
        "optim.scheduler=linear", "progress=false", "lora.target_modules=[q_proj,k_proj,v_proj,o_proj]",
        "output=unused"])
    ours, hf = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.reps):
            hf.append(run_hf(cfg, workdir))
            ours.append(run_ours(cfg))
    ratio = statistics.median(ours) / statistics.median(hf)
    goals = [{"id": "P5", "measure": "samples/s ours / transformers Trainer+PEFT (median of reps)",
              "value": round(ratio, 3), "goal": ">= 0.95", "met": ratio >= 0.95}]
    report = {"benchmark": "train_throughput", "goals": goals,
              "ours_samples_per_second": ours, "baseline_samples_per_second": hf,
              "settings": {"base": args.base, "method": "lora r8 q/k/v/o", "steps": args.steps,
                           "batch_size": args.batch_size, "max_length": args.max_length, "reps": args.reps},
              "machine": machine(torch_threads=args.threads, note=args.note),
              "versions": versions("torch", "transformers", "peft"), "command": command()}
    lines = ["# Training throughput: tuneserve trainer vs transformers Trainer + PEFT", "", *provenance(report),
             f"Settings: {report['settings']}", "", "| trainer | samples/s (each rep) | median |", "| --- | --- | ---: |",
             f"| tuneserve | {', '.join(f'{x:.2f}' for x in ours)} | {statistics.median(ours):.2f} |",
             f"| transformers Trainer + PEFT | {', '.join(f'{x:.2f}' for x in hf)} | {statistics.median(hf):.2f} |", "",
             *goals_table(goals)]
    write_results("train_throughput", report, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
