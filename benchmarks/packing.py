"""Benchmark P13: SFT with sequence packing vs padded batches (real tokens/s and the loss curve).

LoRA SFT of the tiny Llama base on `../shared/data/alpaca_en_demo` (10% held out), through the
project's own `prepare` + `TrainLoop`: padded batches of `--batch-size` examples vs packed rows of
`--max-length` tokens (`packing=true`), the packed batch size chosen so that both see about the
same number of real tokens per optimizer step (same learning rate and schedule). Each rep trains
`--epochs` of the training split in both modes (alternating, seed 42 + rep). Measured:

- real (non-pad) training tokens per second of the optimizer steps (evaluation time excluded);
  P13 is the ratio of the medians, packed / padded (goal >= 1.5);
- the held-out loss (padded, per real target token, same rows for both) at each quarter of the
  run, against the real tokens trained on so far; "within noise" compares the packed-minus-padded
  gap of the final held-out loss with the spread of that loss over the reps' seeds;
- the padding share of each mode's batches (in its shuffled epoch order).

    flock /tmp/tuneserve-bench.lock python benchmarks/packing.py [--reps 3] [--epochs 0.5]
Writes benchmarks/results/packing.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "alpaca_en_demo" / "alpaca_en_demo.json"


def config(args, packed: bool, seed: int, batch_size: int):
    from training.artifact.config import load_config
    from training.train.config import TrainConfig

    return load_config(TrainConfig, None, [
        f"base={args.base}", f"data.path={args.data}", "data.validation_fraction=0.1",
        f"data.max_length={args.max_length}", f"packing={str(packed).lower()}", f"batch_size={batch_size}",
        f"epochs={args.epochs}", f"optim.lr={args.lr}", "optim.warmup_steps=0", "optim.scheduler=linear",
        "early_stopping.restore_best=false", "progress=false", "evaluate_test=false", f"seed={seed}",
        f"threads={args.threads}", "lora.target_modules=[q_proj,k_proj,v_proj,o_proj]", "output=unused"])


def run(args, packed: bool, seed: int, batch_size: int) -> dict:
    import torch

    from training.train.loop import TrainLoop
    from training.train.parts import prepare

    cfg = config(args, packed, seed, batch_size)
    prep = prepare(cfg, torch.device("cpu"))
    cfg = prep.cfg
    held_out = prep.val_ex[:args.val_rows]
    loop = TrainLoop(cfg, prep.model, prep.train_ex, [], prep.collate, torch.device("cpu"))
    every = max(1, loop.total_steps // args.points)
    curve = [{"tokens": 0, "step": 0, "val_loss": held_out_loss(prep.model, held_out, prep.tokenizer.pad_token_id)}]
    seen = {"tokens": 0}

    def on_record(record: dict) -> None:
        seen["tokens"] += loop.step_tokens
        if record["step"] % every == 0 or record["step"] == loop.total_steps:
            curve.append({"tokens": seen["tokens"], "step": record["step"],
                          "val_loss": held_out_loss(prep.model, held_out, prep.tokenizer.pad_token_id)})

    from training.train.packing import padding_fraction

    # Padding share of this run's batches in its epoch-0 order (packed rows or padded examples).
    padding = padding_fraction([prep.train_ex[i] for i in loop._order(0)], cfg.batch_size)
    result = loop.run(on_record=on_record)
    result.metrics["val_loss"] = curve[-1]["val_loss"]
    return {"packed": packed, "seed": seed, "batch_size": batch_size, "steps": result.steps, "tokens": result.tokens,
            "train_seconds": round(result.train_seconds, 3), "tokens_per_second": result.tokens / result.train_seconds,
            "final_val_loss": result.metrics["val_loss"], "curve": curve, "packing": prep.packing,
            "padding_fraction": round(padding, 4)}


def held_out_loss(model, examples: list[dict], pad_id: int, chunk: int = 8) -> float:
    """Mean loss per real target token over `examples` (padded batches, the same for both modes)."""
    import torch

    from training.train.templates import pad_causal

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), chunk):
            batch = pad_causal(examples[i:i + chunk], pad_id)
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1].float()
            target = labels[:, 1:]
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                             ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    model.train()
    return total / max(1, count)


def packed_batch_size(args) -> tuple[int, dict]:
    """Packed rows per batch that carry about as many real tokens as `batch_size` padded examples."""
    import torch

    from training.train.parts import prepare

    prep = prepare(config(args, True, 42, 1), torch.device("cpu"))
    info = prep.packing
    real = sum(len(r["input_ids"]) for r in prep.train_ex)
    per_example = real / info["examples"]
    per_row = real / info["packed_rows"]
    return max(1, round(args.batch_size * per_example / per_row)), {"mean_example_tokens": round(per_example, 1),
                                                                    "mean_packed_row_tokens": round(per_row, 1)}


def write(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "packing.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    s = report["summary"]
    lines = ["# Sequence packing vs padded batches (LoRA SFT, tiny Llama, alpaca_en_demo)", "",
             f"Command: `{report['command']}`  ", f"Settings: {report['settings']}  ",
             f"Machine: {report['machine']}  ", f"Versions: {report['versions']}", "",
             f"Padding share of batches: {s['padding_unpacked']:.1%} padded -> {s['padding_packed']:.1%} packed "
             f"({s['examples']} examples in {s['packed_rows']} packed rows of <= {report['settings']['max_length']} tokens)", "",
             "| mode | batch | real tokens/s (each rep) | median | final held-out loss (each rep) |",
             "| --- | ---: | --- | ---: | --- |"]
    for mode in ("padded", "packed"):
        runs = [r for r in report["runs"] if r["packed"] == (mode == "packed")]
        speeds = ", ".join(f"{r['tokens_per_second']:.0f}" for r in runs)
        losses = ", ".join(f"{r['final_val_loss']:.4f}" for r in runs)
        median = statistics.median(r["tokens_per_second"] for r in runs)
        lines.append(f"| {mode} | {runs[0]['batch_size']} | {speeds} | {median:.0f} | {losses} |")
    lines += ["", "Held-out loss against real training tokens (mean over reps):", "",
              "| point | padded tokens | padded loss | packed tokens | packed loss |", "| ---: | ---: | ---: | ---: | ---: |"]
    for k, (a, b) in enumerate(zip(s["curve_padded"], s["curve_packed"])):
        lines.append(f"| {k} | {a['tokens']:.0f} | {a['val_loss']:.4f} | {b['tokens']:.0f} | {b['val_loss']:.4f} |")
    lines += ["", "| goal | measure | value | target | met |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {g['id']} | {g['measure']} | {g['value']} | {g['goal']} | {g['met']} |" for g in report["goals"]]
    (RESULTS / "packing.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def mean_curve(runs: list[dict]) -> list[dict]:
    n = min(len(r["curve"]) for r in runs)
    return [{"tokens": statistics.mean(r["curve"][k]["tokens"] for r in runs),
             "val_loss": statistics.mean(r["curve"][k]["val_loss"] for r in runs)} for k in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny-llama")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="padded examples per batch")
    parser.add_argument("--epochs", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--points", type=int, default=4, help="held-out evaluations along each run")
    parser.add_argument("--val-rows", type=int, default=48, help="held-out examples evaluated at each point")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="2-core host shared with other engineers' runs; modes alternate within "
                        "each rep and medians are compared to spread the noise")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import peft
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    began = time.time()
    packed_bs, sizes = packed_batch_size(args)
    runs = []
    for rep in range(args.reps):
        for packed in ((False, True) if rep % 2 == 0 else (True, False)):
            runs.append(run(args, packed, 42 + rep, packed_bs if packed else args.batch_size))
            print(f"rep {rep} {'packed' if packed else 'padded'}: {runs[-1]['tokens_per_second']:.0f} tok/s, "
                  f"held-out loss {runs[-1]['final_val_loss']:.4f}", file=sys.stderr)
    padded = [r for r in runs if not r["packed"]]
    packed_runs = [r for r in runs if r["packed"]]
    ratio = statistics.median(r["tokens_per_second"] for r in packed_runs) / statistics.median(
        r["tokens_per_second"] for r in padded)
    final_pad = [r["final_val_loss"] for r in padded]
    final_pack = [r["final_val_loss"] for r in packed_runs]
    gap = statistics.mean(final_pack) - statistics.mean(final_pad)
    noise = max(statistics.stdev(final_pad) if len(final_pad) > 1 else 0.0,
                statistics.stdev(final_pack) if len(final_pack) > 1 else 0.0)
    info = packed_runs[0]["packing"]
    goals = [{"id": "P13", "measure": "real training tokens/s, packed / padded (median of reps)",
              "value": round(ratio, 3), "goal": ">= 1.5", "met": ratio >= 1.5},
             {"id": "P13-loss", "measure": "final held-out loss, mean packed - mean padded, after the same real "
              "tokens; noise = larger std over the reps' seeds", "value": {"gap": round(gap, 4), "noise": round(noise, 4)},
              "goal": "|gap| <= 2 x noise", "met": abs(gap) <= 2 * noise}]
    report = {"benchmark": "packing", "goals": goals, "runs": runs,
              "summary": {"examples": info["examples"], "packed_rows": info["packed_rows"],
                          "padding_unpacked": statistics.mean(r["padding_fraction"] for r in padded),
                          "padding_packed": statistics.mean(r["padding_fraction"] for r in packed_runs),
                          "curve_padded": mean_curve(padded), "curve_packed": mean_curve(packed_runs)},
              "settings": {"base": args.base, "method": "lora r8 q/k/v/o", "max_length": args.max_length,
                           "padded_batch": args.batch_size, "packed_batch": packed_bs, **sizes, "epochs": args.epochs,
                           "lr": args.lr, "reps": args.reps, "val_rows": args.val_rows, "data": "alpaca_en_demo (10% held out)"},
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                          "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
                          "wall_seconds": round(time.time() - began, 1), "note": args.note},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
              "command": "python benchmarks/packing.py " + " ".join(sys.argv[1:])}
    write(report)


if __name__ == "__main__":
    main()
