"""Benchmark: the engine in process (no Ray, no HTTP) on any device, at the model sizes users serve.

For each --shapes entry, a Llama built from config with random weights (compute does not care what the
weights are: every answer has a fixed length), SmolLM2's tokenizer and vocabulary, in --dtype on --device:
  135m  SmolLM2-135M's shape     1b  Llama-3.2-1B's shape     8b  Llama-3.1-8B's shape (vocab 49152 in all)
  tiny  a 2-layer toy, for a smoke run on the CPU
and one LoRA adapter (r 8, q/v projections, random non-zero weights), interleaved --reps times:
  raw     HF `generate` of the same model + adapter on a left-padded batch of 16 unique prompts,
          --max-tokens fixed-length answers (the ceiling the library gives)
  engine  the Engine (continuous batching, batched multi-LoRA, response cache off) under 16 closed-loop
          clients with unique prompts, ignore_eos, --max-tokens tokens each
Recorded per shape: tokens/s of both and engine/raw (P1 on this device), end-to-end and TTFT p50/p95 and
their ratios (P11a, P11b), and the roofline bound of a batch-16 decode step from this device's measured
matmul peak (in --dtype) and copy bandwidth (P14: engine tokens/s / bound). Medians of per-rep values.

    python benchmarks/engine_device.py --device cuda --dtype bfloat16 --shapes 135m,1b,8b --results-dir OUT
    python benchmarks/engine_device.py --device cpu --dtype float32 --shapes tiny --reps 1 --requests 1 \\
        --results-dir /tmp/smoke                                        # the CPU smoke run (tests)
Writes engine_device.{json,md} into --results-dir (default benchmarks/results) after every shape.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import arguments, command, goals_table, machine, versions, write_results  # noqa: E402
from benchmarks.latency import percentile  # noqa: E402
from benchmarks.roofline import Box, decode_bound  # noqa: E402

CLIENTS = 16
SHAPES = {  # hidden, layers, heads, key/value heads, MLP width, tied embeddings
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, tie_word_embeddings=True),
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, tie_word_embeddings=False),
}


def build(shape: str, tokenizer_dir: Path, root: Path, device: str, dtype):
    """(the model with its adapter attached, base dir, adapters dir): a random Llama of `shape` and a LoRA artifact."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.artifact import ArtifactWriter
    from training.artifact.checksums import fingerprint_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    base_dir = root / f"llama-{shape}"
    model.save_pretrained(str(base_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(base_dir))
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(model, lora)
    manifest = {"name": "bench", "kind": "adapter", "task": "causal-lm", "method": "lora", "version": "1",
                "base": {"id": base_dir.name, "sha256": fingerprint_model_dir(base_dir)}}
    adapters = root / "adapters"
    with ArtifactWriter(adapters / "bench", manifest, overwrite=True) as writer:
        model.save_pretrained(str(writer.path), safe_serialization=True)
        (writer.path / "README.md").unlink(missing_ok=True)
    return model, tokenizer, base_dir, adapters


def prompts(tokenizer, rng: random.Random, count: int) -> list[list[int]]:
    """`count` unique prompts of 16-32 random token ids (no shared prefix, no cache hit)."""
    return [[rng.randrange(10, len(tokenizer)) for _ in range(rng.randrange(16, 33))] for _ in range(count)]


def raw_tokens_per_s(model, tokenizer, batch: list[list[int]], max_tokens: int, device) -> float:
    import torch

    width = max(len(p) for p in batch)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in batch], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    _sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    _sync(device)
    return (out.shape[1] - width) * len(batch) / (time.perf_counter() - started)


def engine_run(engine, rng, tokenizer, requests: int, max_tokens: int) -> dict:
    """16 closed-loop clients, `requests` each: tokens/s, end-to-end and time-to-first-token lists (s)."""
    from service.engine.types import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    work = [prompts(tokenizer, rng, requests) for _ in range(CLIENTS)]
    e2e, ttft, tokens = [], [], [0]

    async def client(mine: list[list[int]]) -> None:
        for prompt in mine:
            started, first = time.perf_counter(), None
            async for event in engine.generate(engine.registry.acquire("bench"), prompt, params):
                if first is None and event.text:
                    first = time.perf_counter() - started
                if event.finish_reason:
                    tokens[0] += event.completion_tokens
            e2e.append(time.perf_counter() - started)
            ttft.append(first if first is not None else e2e[-1])

    async def all_clients() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(client(mine) for mine in work))
        return time.perf_counter() - started

    seconds = asyncio.run(all_clients())
    return {"tokens_per_s": tokens[0] / seconds, "e2e": e2e, "ttft": ttft}


def device_box(device, dtype, gemm_n: int, copy_mb: int, repeats: int = 5) -> Box:
    """This device's matmul peak in `dtype` and copy bandwidth (read + write bytes / time), measured now."""
    import torch

    a = torch.randn(gemm_n, gemm_n, device=device).to(dtype)
    b = torch.randn(gemm_n, gemm_n, device=device).to(dtype)
    src = torch.ones(copy_mb * 2 ** 20 // 4, device=device)
    dst = torch.empty_like(src)
    best_mm, best_copy = float("inf"), float("inf")
    for i in range(repeats + 1):
        _sync(device)
        started = time.perf_counter()
        a @ b
        _sync(device)
        middle = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        if i:  # the first round warms up
            best_mm, best_copy = min(best_mm, middle - started), min(best_copy, time.perf_counter() - middle)
    threads = torch.get_num_threads()
    return Box(peak_gflops=2.0 * gemm_n ** 3 / best_mm / 1e9, bandwidth_gbs=2.0 * src.numel() * 4 / best_copy / 1e9,
               threads=threads)


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure_shape(shape: str, args, root: Path) -> dict:
    import torch

    from benchmarks.roofline import model_size
    from service.engine.engine import Engine
    from service.engine.settings import EngineSettings

    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    model, tokenizer, base_dir, adapters = build(shape, args.tokenizer, root, args.device, dtype)
    params, weight_bytes = model_size(model.get_base_model())
    engine = Engine(EngineSettings(base_model=str(base_dir), dtype=args.dtype, device=args.device,
                                   artifacts_dir=adapters, num_threads=args.threads, cache={"enabled": False}))
    engine.start()
    setup_s = time.perf_counter() - started
    rng = random.Random(0)
    raw, served, e2e_p, ttft_p, boxes, bounds = [], [], [], [], [], []
    try:
        raw_tokens_per_s(model, tokenizer, prompts(tokenizer, rng, CLIENTS), 4, args.device)  # warm-ups
        engine_run(engine, rng, tokenizer, 1, 4)
        for _ in range(args.reps):
            boxes.append(device_box(args.device, dtype, args.gemm_n, args.copy_mb))
            bounds.append(decode_bound(params, weight_bytes, boxes[-1], batch=CLIENTS))
            raw.append(raw_tokens_per_s(model, tokenizer, prompts(tokenizer, rng, CLIENTS), args.max_tokens, args.device))
            run = engine_run(engine, rng, tokenizer, args.requests, args.max_tokens)
            served.append(run["tokens_per_s"])
            e2e_p.append((percentile(run["e2e"], 50), percentile(run["e2e"], 95)))
            ttft_p.append((percentile(run["ttft"], 50), percentile(run["ttft"], 95)))
    finally:
        engine.stop()
        del model, engine
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
        shutil.rmtree(root / f"llama-{shape}", ignore_errors=True)
        shutil.rmtree(root / "adapters", ignore_errors=True)
    median = statistics.median
    bound = sorted(bounds, key=lambda b: b.tokens_per_s)[len(bounds) // 2]
    return {
        "shape": shape, "params": params, "weight_bytes": weight_bytes, "setup_s": round(setup_s, 1),
        "raw_tokens_per_s": [round(x, 1) for x in raw], "engine_tokens_per_s": [round(x, 1) for x in served],
        "engine_over_raw": round(median([s / r for s, r in zip(served, raw)]), 3),
        "e2e_p50_s": round(median(p[0] for p in e2e_p), 4), "e2e_p95_s": round(median(p[1] for p in e2e_p), 4),
        "e2e_p95_over_p50": round(median(p[1] / p[0] for p in e2e_p), 3),
        "ttft_p50_s": round(median(p[0] for p in ttft_p), 4), "ttft_p95_s": round(median(p[1] for p in ttft_p), 4),
        "ttft_p95_over_p50": round(median(p[1] / p[0] for p in ttft_p), 3),
        "bound": asdict(bound), "box": {"peak_gflops": round(median(b.peak_gflops for b in boxes), 1),
                                        "bandwidth_gbs": round(median(b.bandwidth_gbs for b in boxes), 1)},
        "engine_over_bound": round(median(s / b.tokens_per_s for s, b in zip(served, bounds)), 4),
    }


def goals(rows: list[dict], device: str) -> list[dict]:
    out = []
    for row in rows:
        shape = row["shape"]
        out += [
            {"id": "P1", "measure": f"{shape} on {device}: engine tok/s (16 clients) / raw batched HF generate tok/s",
             "value": row["engine_over_raw"], "goal": ">= 0.85", "met": row["engine_over_raw"] >= 0.85},
            {"id": "P11a", "measure": f"{shape} on {device}: end-to-end p95 / p50, 16 closed-loop clients",
             "value": row["e2e_p95_over_p50"], "goal": "<= 2.0", "met": row["e2e_p95_over_p50"] <= 2.0},
            {"id": "P11b", "measure": f"{shape} on {device}: TTFT p95 / p50, same load",
             "value": row["ttft_p95_over_p50"], "goal": "<= 3.0", "met": row["ttft_p95_over_p50"] <= 3.0},
            {"id": "P14", "measure": f"{shape} on {device}: engine tok/s / roofline bound of a batch-16 decode step",
             "value": row["engine_over_bound"], "goal": "reported", "met": None},
        ]
    return out


def markdown(report: dict) -> str:
    lines = ["# The engine on a device, in process, at serving sizes", "", f"Command: `{report['command']}`  ",
             f"Machine: {report['machine']}  ", f"Versions: {report['versions']}", ""]
    lines += goals_table(report["goals"])
    lines += ["", "| shape | params | raw tok/s | engine tok/s | e2e p50 / p95 s | TTFT p50 / p95 s | bound tok/s "
              "| limit | setup s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["shapes"]:
        lines.append(f"| {r['shape']} | {r['params'] / 1e6:.0f}M | {statistics.median(r['raw_tokens_per_s']):.0f} | "
                     f"{statistics.median(r['engine_tokens_per_s']):.0f} | {r['e2e_p50_s']} / {r['e2e_p95_s']} | "
                     f"{r['ttft_p50_s']} / {r['ttft_p95_s']} | {r['bound']['tokens_per_s']:.0f} | "
                     f"{r['bound']['limit']} | {r['setup_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = arguments(__doc__, base=False, threads=True)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, float16")
    parser.add_argument("--shapes", default="135m", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer dir (default: the smollm2-135m base's)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4, help="sequential requests per client per rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gemm-n", type=int, default=None, help="matmul size for the peak (default by device)")
    parser.add_argument("--copy-mb", type=int, default=None, help="copy size for the bandwidth (default by device)")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {sorted(SHAPES)}")
    gpu = args.device.startswith("cuda")
    args.gemm_n = args.gemm_n or (8192 if gpu else 1024)
    args.copy_mb = args.copy_mb or (2048 if gpu else 128)
    if args.tokenizer is None:
        from training.artifact import resolve_base_dir

        args.tokenizer = resolve_base_dir("smollm2-135m")
    report = {"benchmark": "engine on a device, in process", "device": args.device, "dtype": args.dtype,
              "clients": CLIENTS, "max_tokens": args.max_tokens, "requests_per_client": args.requests,
              "reps": args.reps, "shapes": [], "goals": []}
    host = machine(device=_device_name(args.device))
    with tempfile.TemporaryDirectory(prefix="engine-device-") as tmp:
        for shape in shapes:
            report["shapes"].append(measure_shape(shape, args, Path(tmp)))
            report["goals"] = goals(report["shapes"], args.device)
            report.update(machine=host, versions=versions("torch", "transformers", "peft"), command=command())
            write_results("engine_device", report, markdown(report), args.results_dir)
            print(markdown(report), flush=True)


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


if __name__ == "__main__":
    main()
