"""Benchmarks P8 and P9: serving memory per loaded adapter, and `tuneserve plan`'s training estimate.

P8: one process loads the embedded tiny base into the serving registry (service/engine), then 10 and
then 100 LoRA adapters (r=16 on every projection); resident memory (RSS, after gc and malloc_trim) is
read at 0, 10 and 100. Goal: RSS added per adapter ÷ the adapter's safetensors size ≤ 1.5 at 100.

P9: for full, LoRA and QLoRA training of the tiny base (causal LM) and of MiniLM (classification),
a fresh process reads its RSS, loads the base the way `tuneserve train` does
(training.train.parts.load_training_model), wraps it with the method's registry entry, runs three
AdamW steps on one fixed batch, and reads its peak RSS (VmHWM). Measured peak = VmHWM − the RSS
before the model loaded. Goal: `tuneserve plan`'s total ÷ measured within 0.75–1.25 for each.

    python benchmarks/memory.py            # both; writes benchmarks/results/memory.{json,md}
"""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import ROOT, command, goals_table, machine, provenance, versions, write_results  # noqa: E402

MB = 1024 ** 2
P8_GOAL = 1.5
P9_BAND = (0.75, 1.25)
ADAPTER_COUNTS = (10, 100)
TRAIN_CASES = [  # (base, task, method, batch, seq)
    ("tiny-llama", "causal-lm", "full", 8, 256),
    ("tiny-llama", "causal-lm", "lora", 8, 256),
    ("tiny-llama", "causal-lm", "qlora", 8, 256),
    ("all-minilm-l6-v2", "classification", "full", 16, 128),
    ("all-minilm-l6-v2", "classification", "lora", 16, 128),
    ("all-minilm-l6-v2", "classification", "qlora", 16, 128),
]
LORA_TARGETS = {"tiny-llama": ["q_proj", "k_proj", "v_proj", "o_proj"], "all-minilm-l6-v2": ["query", "key", "value", "dense"]}
TRAIN_STEPS = 3
LORA_DROPOUT = 0.05


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def settled_rss() -> int:
    """RSS after the garbage collector and glibc gave back what they hold free."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return _status("VmRSS")


# ---- P9: training peak ---------------------------------------------------------------------------
def train_peak(base: str, task: str, method_name: str, batch: int, seq: int) -> dict:
    """(In a fresh process) peak RSS of three training steps above the RSS before the model loaded."""
    import torch

    from training.artifact import resolve_base_dir
    from training.train.config import TrainConfig
    from training.train.methods import get_method
    from training.train.parts import load_training_model

    torch.manual_seed(0)
    cfg = TrainConfig.model_validate({"base": base, "task": task, "method": method_name, "output": "unused",
                                      "data": {"path": "unused"}, "batch_size": batch,
                                      "lora": {"r": 8, "target_modules": LORA_TARGETS[base], "dropout": LORA_DROPOUT}})
    model_dir = resolve_base_dir(base)
    labels = [f"l{i}" for i in range(8)] if task == "classification" else None
    method = get_method(method_name)

    def steps(rows: int, length: int, count: int) -> int:
        model = method.wrap(cfg, load_training_model(cfg, method, model_dir, labels, torch.device("cpu")))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        ids = torch.randint(3, model.config.vocab_size, (rows, length))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        inputs["labels"] = ids if task == "causal-lm" else torch.randint(0, len(labels), (rows,))
        for _ in range(count):
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return sum(p.numel() for p in params)

    steps(1, 8, 1)  # warm-up: the lazy imports and one-time buffers are not training memory
    before = settled_rss()
    trainable = steps(batch, seq, TRAIN_STEPS)
    return {"measured_bytes": _status("VmHWM") - before, "trainable": trainable, "model_dir": str(model_dir)}


def plan_total(case: dict) -> dict:
    from training.train.plan import PlanRequest, plan

    request = PlanRequest(model=case["model_dir"], task=case["task"], batch_size=case["batch"], seq_len=case["seq"],
                          cpu_memory_gb=24, lora_r=8, lora_target_modules=LORA_TARGETS[case["base"]],
                          lora_dropout=LORA_DROPOUT)
    result = plan(request)
    chosen = next(c for c in result["candidates"] if c["method"] == case["method"])
    return {"estimate_bytes": chosen["total"], "estimate_trainable": chosen["trainable"]}


def run_p9() -> list[dict]:
    from rich.progress import track

    rows = []
    for base, task, method, batch, seq in track(TRAIN_CASES, description="P9 training peaks"):
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.memory import train_peak; "
                f"print(json.dumps(train_peak({base!r}, {task!r}, {method!r}, {batch}, {seq})))")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
        case = {"base": base, "task": task, "method": method, "batch": batch, "seq": seq,
                **json.loads(out.stdout.strip().splitlines()[-1])}
        case.update(plan_total(case))
        case["ratio"] = round(case["estimate_bytes"] / case["measured_bytes"], 3)
        rows.append(case)
    return rows


# ---- P8: serving memory per adapter --------------------------------------------------------------
def adapter_memory(base_dir: str, artifacts: str) -> dict:
    """(In a fresh process) RSS of the serving registry with 0, 10 and 100 adapters loaded."""
    from service.engine.registry import ModelRegistry
    from service.engine.settings import ModelSettings

    names = sorted(p.name for p in Path(artifacts).iterdir())
    registry = ModelRegistry(ModelSettings(base_model=base_dir, artifacts_dir=str(Path(artifacts).parent / "empty"),
                                           max_adapters=len(names)))
    registry.start()
    import peft.tuners.lora  # noqa: F401 - the library's code is not adapter memory

    rss = {0: settled_rss()}
    loaded = 0
    for count in ADAPTER_COUNTS:
        for name in names[loaded:count]:
            registry.load_adapter(name, Path(artifacts) / name)
        loaded = count
        rss[count] = settled_rss()
    return {"rss": rss}


def run_p8(base: Path) -> dict:
    from rich.progress import track

    from tests.service_fixtures import make_adapter

    with tempfile.TemporaryDirectory(prefix="ts-memory-") as tmp:
        artifacts = Path(tmp) / "adapters"
        (Path(tmp) / "empty").mkdir()
        for i in track(range(max(ADAPTER_COUNTS)), description="P8 writing adapters"):
            make_adapter(base, artifacts / f"m{i:03d}", f"m{i:03d}", seed=i, r=16)
        size = sum(f.stat().st_size for f in artifacts.glob("*/adapter_model.safetensors")) / max(ADAPTER_COUNTS)
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.memory import adapter_memory; "
                f"print(json.dumps(adapter_memory({str(base)!r}, {str(artifacts)!r})))")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    rss = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1])["rss"].items()}
    low, top = ADAPTER_COUNTS
    per_adapter = (rss[top] - rss[low]) / (top - low)  # the first loads also build PEFT's layer wrappers once
    return {"adapter_safetensors_bytes": size, "rss_bytes": rss, "added_per_adapter_bytes": per_adapter,
            "ratio": round(per_adapter / size, 3), "ratio_from_zero": round((rss[top] - rss[0]) / top / size, 3),
            "one_time_bytes": rss[low] - rss[0] - low * per_adapter}


def main() -> None:
    from training.base.build import BaseBuildConfig, build_base

    base = build_base(BaseBuildConfig(steps=60), force=False, progress=False)
    p8 = run_p8(base)
    p9 = run_p9()
    write_report(p8, p9)


def write_report(p8: dict, p9: list[dict]) -> None:
    ratios = [r["ratio"] for r in p9]
    goals = [
        {"id": "P8", "measure": "RSS added per loaded adapter ÷ its safetensors size, from 10 to 100 adapters (tiny "
                                "base, LoRA r=16 on every projection; the first loads' one-time PEFT layer wrapping "
                                "is reported apart as one_time_bytes and ratio_from_zero)", "value": p8["ratio"], "goal": f"<= {P8_GOAL}",
         "met": p8["ratio"] <= P8_GOAL},
        {"id": "P9", "measure": "tuneserve plan's training-memory estimate ÷ measured peak (worst of full/lora/qlora on "
                                "the tiny base and MiniLM)", "value": [min(ratios), max(ratios)],
         "goal": f"each within {P9_BAND[0]}-{P9_BAND[1]}", "met": all(P9_BAND[0] <= r <= P9_BAND[1] for r in ratios)},
    ]
    report = {"benchmark": "memory", "goals": goals, "p8": p8, "p9": p9, "command": command(), "machine": machine(),
              "versions": versions("torch", "transformers", "peft", "bitsandbytes")}
    lines = ["# Memory: per adapter (P8) and the training planner (P9)", "", *provenance(report), "", *goals_table(goals)]
    lines += ["", "## P8: resident memory with adapters loaded", "",
              f"adapter safetensors: {p8['adapter_safetensors_bytes'] / MB:.2f} MiB each; added per adapter from 10 "
              f"to 100: {p8['added_per_adapter_bytes'] / MB:.3f} MiB (ratio {p8['ratio']}); one-time cost of the "
              f"first loads (PEFT's layer wrappers, the stacks): {p8['one_time_bytes'] / MB:.1f} MiB; "
              f"average from 0 to 100: ratio {p8['ratio_from_zero']}", "",
              "| adapters | RSS (MiB) |", "|---|---|"]
    lines += [f"| {n} | {v / MB:.1f} |" for n, v in sorted(p8["rss_bytes"].items())]
    lines += ["", "## P9: plan estimate vs measured training peak (CPU, fp32, 3 AdamW steps)", "",
              "| base | method | batch × seq | trainable | estimate (MiB) | measured (MiB) | ratio |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['base']} | {r['method']} | {r['batch']} × {r['seq']} | {r['trainable']:,} | "
              f"{r['estimate_bytes'] / MB:.1f} | {r['measured_bytes'] / MB:.1f} | {r['ratio']} |" for r in p9]
    write_results("memory", report, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
