"""Q5: DPO after SFT raises held-out reward accuracy on real text (SmolLM2-135M-Instruct, alpaca_en_demo).

Pairs from `../shared/data/alpaca_en_demo`: chosen = the reference answer (its first `--answer-words`
words), rejected = the same words in a seeded random order (a corrupted answer with the same
tokens and length, so length cannot explain a preference). They go through `tuneserve data prepare`
(task=preference: cleaning, dedup, prompt-grouped split, leakage check). Then, with the real code paths:

1. SFT: LoRA on the training prompts' chosen answers (`objective=sft`),
2. DPO: the SFT adapter trained further (`objective=dpo init_adapter=<SFT>`; the reference is the
   SFT policy, its log-probabilities precomputed once),
3. held-out (test split) pairs scored by `training.evaluation.preference`: implicit reward
   beta*(logp_model - logp_base) for SFT alone and for SFT+DPO (the same base reference, so the
   two are comparable), and the win rate of SFT+DPO against SFT alone by the likelihood judge.

Goal Q5: held-out reward accuracy after DPO >= 0.8 and above SFT alone. CPU-sized on purpose
(short sequences, few steps); the host is shared, its load is recorded.

    flock /tmp/tuneserve-bench.lock python benchmarks/preference.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_en_demo" / "alpaca_en_demo.json"
Q5_GOAL = 0.8
REJECTED = {"shuffled": "the same words shuffled", "other": "another row's answer (its first words)"}
READING = ("Reading: the raw-likelihood column shows how easy the corruption is to spot for every model; the reward "
           "columns measure what tuning changed relative to the base (beta*(logp - logp_base)), which is what Q5 asks "
           "DPO to move: SFT on the chosen answers alone need not raise them more than their shuffled copies.")


def build_pairs(path: Path, n: int, words: int, max_instruction_chars: int, seed: int,
                rejected: str = "shuffled") -> list[dict]:
    """{prompt, chosen, rejected} from short alpaca rows without input; rejected = chosen's words shuffled,
    or (`rejected="other"`) the next row's answer (fluent, but to another question)."""
    rng = random.Random(seed)
    rows = [r for r in json.loads(path.read_text(encoding="utf-8"))
            if not r.get("input") and len(r["instruction"]) <= max_instruction_chars and len(r["output"].split()) >= 6]
    rng.shuffle(rows)
    pairs = []
    for i, row in enumerate(rows[:n]):
        tokens = row["output"].split()[:words]
        if rejected == "other":
            corrupted = rows[(i + 1) % min(n, len(rows))]["output"].split()[:words]
        else:
            corrupted = tokens[:]
            while corrupted == tokens:
                rng.shuffle(corrupted)
        pairs.append({"prompt": row["instruction"], "chosen": " ".join(tokens), "rejected": " ".join(corrupted)})
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=120)
    parser.add_argument("--test-pairs", type=int, default=24)
    parser.add_argument("--answer-words", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=80)
    parser.add_argument("--sft-steps", type=int, default=4)
    parser.add_argument("--dpo-steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--dpo-lr", type=float, default=2e-3)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rejected", choices=("shuffled", "other"), default="shuffled",
                        help="corruption: the chosen words shuffled, or another row's answer")
    parser.add_argument("--name", default="preference", help="results file name (benchmarks/results/NAME.json/.md)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    from training.artifact.config import load_config
    from training.data.config import DataConfig
    from training.data.pipeline import prepare
    from training.evaluation.preference import pair_logprobs, reward_metrics, win_rate
    from training.train.config import TrainConfig
    from training.train.run import load_trained, train

    started, load_start = time.perf_counter(), os.getloadavg()
    timings: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="tuneserve-q5-"))
    pairs = build_pairs(ALPACA, args.pairs, args.answer_words, 120, args.seed, args.rejected)
    (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    test_fraction = args.test_pairs / len(pairs)
    data_cfg = load_config(DataConfig, None, [
        "task=preference", f"sources=[{{path: {work / 'pairs.jsonl'}}}]", f"output.dir={work / 'prepared'}",
        f"split.ratios={{train: {1 - test_fraction - 0.05}, validation: 0.05, test: {test_fraction}}}",
        f"split.seed={args.seed}"])
    prepared = prepare(data_cfg)
    read = lambda split: [json.loads(x) for x in (work / "prepared" / f"{split}.jsonl").read_text().splitlines() if x]
    train_pairs, test_pairs = read("train"), read("test")
    timings["prepare_s"] = time.perf_counter() - started
    sft_rows = [{"instruction": p["prompt"], "input": "", "output": p["chosen"]} for p in train_pairs]
    (work / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows), encoding="utf-8")
    common = ["base=smollm2-135m", "method=lora", f"data.max_length={args.max_length}", f"batch_size={args.batch}",
              "optim.warmup_steps=0", "optim.scheduler=constant", "profile.enabled=false", "progress=false",
              f"threads={args.threads}", f"seed={args.seed}", "eval_batches=1", "evaluate_test=false"]
    sft_args = [*common, "objective=sft", f"data.path={work / 'sft.jsonl'}", "data.validation_fraction=0.05",
                f"output={work / 'sft'}", f"max_steps={args.sft_steps}", f"optim.lr={args.sft_lr}"]
    dpo_rows = args.dpo_steps * args.batch
    dpo_args = [*common, "objective=dpo", f"data.path={work / 'prepared'}", f"data.max_rows={dpo_rows}",
                f"init_adapter={work / 'sft'}", f"output={work / 'dpo'}", f"max_steps={args.dpo_steps}",
                f"optim.lr={args.dpo_lr}", f"preference.beta={args.beta}"]
    t = time.perf_counter()
    sft = train(load_config(TrainConfig, None, sft_args))
    timings["sft_s"] = time.perf_counter() - t
    t = time.perf_counter()
    dpo = train(load_config(TrainConfig, None, dpo_args))
    timings["dpo_s"] = time.perf_counter() - t

    t = time.perf_counter()
    scores = {}
    sft_model, tokenizer, _ = load_trained(sft.artifact)
    scores["base"] = pair_logprobs(sft_model, tokenizer, test_pairs, args.max_length, 8, reference=True)
    scores["sft"] = pair_logprobs(sft_model, tokenizer, test_pairs, args.max_length, 8)
    del sft_model
    dpo_model, tokenizer, _ = load_trained(dpo.artifact)
    scores["dpo"] = pair_logprobs(dpo_model, tokenizer, test_pairs, args.max_length, 8)
    timings["eval_s"] = time.perf_counter() - t
    sft_metrics, _ = reward_metrics(scores["sft"], scores["base"], args.beta)
    dpo_metrics, _ = reward_metrics(scores["dpo"], scores["base"], args.beta)
    dpo_vs_sft, _ = reward_metrics(scores["dpo"], scores["sft"], args.beta)
    judge = win_rate(scores["dpo"], scores["sft"])
    preference_accuracy = {name: sum(c > r for c, r in zip(*s)) / len(test_pairs) for name, s in scores.items()}
    timings["total_s"] = time.perf_counter() - started
    write_report(args, prepared, len(train_pairs), len(test_pairs), dpo_rows, sft_metrics, dpo_metrics, dpo_vs_sft,
                 judge, preference_accuracy, sft, dpo, timings, load_start)


def write_report(args, prepared, n_train, n_test, dpo_rows, sft_m, dpo_m, dpo_vs_sft, judge, pref_acc, sft, dpo,
                 timings, load_start) -> None:
    from importlib.metadata import version

    value = dpo_m["reward_accuracy"]
    goals = [{"id": "Q5", "measure": "held-out reward accuracy (beta*(logp - logp_base), chosen > rejected) of "
                                     "SFT+DPO LoRA on SmolLM2-135M-Instruct, alpaca pairs, and above SFT alone",
              "value": round(value, 4), "baseline_sft": round(sft_m["reward_accuracy"], 4),
              "goal": f">= {Q5_GOAL} and > SFT alone", "met": value >= Q5_GOAL and value > sft_m["reward_accuracy"]}]
    report = {
        "benchmark": "preference", "goals": goals,
        "held_out": {"pairs": n_test, "sft_vs_base": sft_m, "dpo_vs_base": dpo_m, "dpo_vs_sft_reference": dpo_vs_sft,
                     "win_rate_dpo_vs_sft": judge, "raw_preference_accuracy": pref_acc},
        "training": {"sft": {k: sft.result.metrics.get(k) for k in ("train_loss_first", "train_loss", "val_loss")},
                     "dpo": {k: dpo.result.metrics.get(k) for k in ("train_loss_first", "train_loss", "val_loss",
                                                                      "val_reward_accuracy", "val_reward_margin")},
                     "sft_steps": sft.result.steps, "dpo_steps": dpo.result.steps, "train_pairs_available": n_train,
                     "dpo_pairs_used": dpo_rows, "data_rows": prepared.meta["rows"]},
        "settings": vars(args), "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "command": "flock /tmp/tuneserve-bench.lock python benchmarks/preference.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                    "note": "shared 2-core host (other helpers' jobs running); timings are not a speed claim"},
        "versions": {name: version(name) for name in ("torch", "transformers", "peft")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    f = lambda x: f"{x:.3f}"
    lines = ["# Preference tuning: DPO after SFT (Q5)", "",
             "| goal | value | SFT alone | target | met |", "|---|---|---|---|---|",
             *[f"| {g['id']} | {g['value']} | {g['baseline_sft']} | {g['goal']} | {'yes' if g['met'] else 'no'} |"
               for g in goals], "",
             f"SmolLM2-135M-Instruct (CPU, fp32), LoRA; {n_test} held-out pairs (test split of `tuneserve data prepare` "
             f"task=preference over alpaca_en_demo: chosen = the reference answer's first {args.answer_words} words, "
             f"rejected = {REJECTED[args.rejected]}). SFT: "
             f"{sft.result.steps} steps x {args.batch}; DPO from the SFT adapter: {dpo.result.steps} steps x {args.batch} "
             f"pairs, beta {args.beta}, reference = SFT (precomputed).", "",
             "| model | reward accuracy vs base | mean margin vs base | logp(chosen) > logp(rejected) |",
             "|---|---|---|---|",
             f"| base | - | - | {f(pref_acc['base'])} |",
             f"| SFT | {f(sft_m['reward_accuracy'])} | {f(sft_m['reward_margin'])} | {f(pref_acc['sft'])} |",
             f"| SFT + DPO | {f(dpo_m['reward_accuracy'])} | {f(dpo_m['reward_margin'])} | {f(pref_acc['dpo'])} |", "",
             READING, "",
             f"DPO vs its own reference (SFT): reward accuracy {f(dpo_vs_sft['reward_accuracy'])}, margin "
             f"{f(dpo_vs_sft['reward_margin'])}. Win rate SFT+DPO vs SFT (likelihood judge): {f(judge['win_rate'])}.", "",
             f"Timings (s): {report['timings_s']}; load average {load_start} -> {report['machine']['loadavg_end']} "
             "(shared host).", "", f"Command: `{report['command']}`"]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
