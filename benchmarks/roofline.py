"""Roofline of this box for a decode step: measured fp32 GEMM peak and memory bandwidth, and the bound they put
on a base's tokens/s at batch 16 (P14 in benchmarks/serving.py is served tokens/s / this bound).

A decode step of a batch of B rows runs every weight once: 2 * params * B FLOPs, and reads every weight
once: weight_bytes. Neither can go faster than this box's peak, so

    step_s >= max(2 * params * B / peak_flops, weight_bytes / bandwidth)
    bound tokens/s = B / step_s

(the KV cache and activations add bytes and FLOPs, so the bound is optimistic: a ratio to it is a floor).
The peak is the best of several large square fp32 products (MKL and oneDNN) at the engine's thread count; the
bandwidth the best of several large tensor copies (read + write bytes / time), both measured now, in
the same process, since this shared host's speed drifts.

    python benchmarks/roofline.py [--base tiny-llama] [--threads 2] [--batch 16]
    from benchmarks.roofline import measure_box, decode_bound
    box = measure_box(threads=2); bound = decode_bound(params, weight_bytes, box, batch=16)

The CLI prints JSON (peak, bandwidth, the base's bound); it writes no results file (serving.py records it).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import arguments  # noqa: E402

BATCH = 16


@dataclass(frozen=True)
class Box:
    """What this box can do: fp32 GEMM GFLOP/s and memory GB/s, at `threads` torch threads."""

    peak_gflops: float
    bandwidth_gbs: float
    threads: int


@dataclass(frozen=True)
class Bound:
    """The roofline bound of one decode step of a base at `batch` rows."""

    params: int
    weight_bytes: int
    batch: int
    compute_s: float  # 2 * params * batch / peak
    memory_s: float  # weight bytes / bandwidth
    step_s: float  # the larger of the two
    limit: str  # "compute" or "memory": which one binds
    tokens_per_s: float  # batch / step_s


def decode_bound(params: int, weight_bytes: int, box: Box, batch: int = BATCH) -> Bound:
    """The roofline bound of a decode step: max(2*params*batch / peak FLOP/s, weight_bytes / bandwidth)."""
    if params <= 0 or weight_bytes <= 0 or batch <= 0:
        raise ValueError(f"params, weight_bytes and batch must be positive, got {params}, {weight_bytes}, {batch}")
    if box.peak_gflops <= 0 or box.bandwidth_gbs <= 0:
        raise ValueError(f"the box's peak and bandwidth must be positive, got {box}")
    compute_s = 2.0 * params * batch / (box.peak_gflops * 1e9)
    memory_s = weight_bytes / (box.bandwidth_gbs * 1e9)
    step_s = max(compute_s, memory_s)
    return Bound(params=params, weight_bytes=weight_bytes, batch=batch, compute_s=compute_s, memory_s=memory_s,
                 step_s=step_s, limit="compute" if compute_s >= memory_s else "memory", tokens_per_s=batch / step_s)


def gemm_gflops(n: int = 2048, repeats: int = 5, threads: int = 2) -> float:
    """Best fp32 GFLOP/s of an n x n @ n x n product (2 n^3 FLOPs) over `repeats` timed runs after a warm-up,
    through both of torch's CPU GEMMs: MKL (`torch.matmul`) and oneDNN on a packed weight (what the engine
    serves with, service/engine/prepack.py); the faster one is the peak, so packing cannot flatter the bound."""
    import torch

    from service.engine.prepack import prepack_linears

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    products = [lambda: torch.matmul(a, b, out=out)]
    layer = torch.nn.Linear(n, n, bias=False).requires_grad_(False)
    layer.weight.copy_(b)
    if prepack_linears(layer):  # the engine's own packed layer (a @ b.T: the same 2 n^3 FLOPs)
        products.append(lambda: layer(a))
    best = float("inf")
    for product in products:
        product()  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - started)
    return 2.0 * n ** 3 / best / 1e9


def bandwidth_gbs(megabytes: int = 256, repeats: int = 5, threads: int = 2) -> float:
    """Best memory GB/s of copying a `megabytes` fp32 tensor into another (bytes read + written / time)."""
    import torch

    torch.set_num_threads(threads)
    count = megabytes * 2 ** 20 // 4
    src, dst = torch.ones(count), torch.empty(count)
    dst.copy_(src)  # warm-up: pages touched
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2.0 * src.numel() * src.element_size() / best / 1e9


def measure_box(threads: int = 2, gemm_n: int = 2048, copy_mb: int = 256, repeats: int = 5) -> Box:
    """This box's fp32 GEMM peak and memory bandwidth, measured now at `threads` torch threads."""
    return Box(peak_gflops=gemm_gflops(gemm_n, repeats, threads), bandwidth_gbs=bandwidth_gbs(copy_mb, repeats, threads),
               threads=threads)


def model_size(model) -> tuple[int, int]:
    """(parameters, bytes of their storage) of a torch module; tied weights count once."""
    seen, params, nbytes = set(), 0, 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        params += p.numel()
        nbytes += p.numel() * p.element_size()
    return params, nbytes


def base_size(base: str) -> tuple[int, int]:
    """(parameters, weight bytes) of a base model id or directory, as the engine loads it."""
    from training.artifact.loading import load_base

    return model_size(load_base(base).model)


def forward_rate(base: str, threads: int = 2, batch: int = BATCH, prompt_tokens: int = 16, steps: int = 32) -> float:
    """Tokens/s of the base's bare decode forward passes at `batch` rows, at `threads` torch threads: the engine's
    oneDNN-packed weights and in-place KV cache (of a `prompt_tokens` prompt), the greedy next token fed back; no
    generate loop, no adapter, no server. The most this box's kernels give a decode step (P14's ceiling in practice):
    served / this is what serving costs, this / the bound what the kernels reach."""
    import torch

    from service.engine.prepack import prepack_linears
    from training.artifact.loading import load_base

    model = load_base(base).model
    prepack_linears(model)
    ids = torch.randint(10, model.config.vocab_size, (batch, prompt_tokens), generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _decode_steps(model, ids, batch, steps)
    finally:
        torch.set_num_threads(before)


def _decode_steps(model, ids, batch: int, steps: int) -> float:
    import torch

    from service.engine.kv import growable

    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, token = growable(out.past_key_values), out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(4):  # warm-up steps
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        started = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        return batch * steps / (time.perf_counter() - started)


def report(bound: Bound, box: Box, served_tokens_per_s: float | None = None) -> dict:
    """A JSON-ready record of the box, the bound and (given served tokens/s) their ratio, P14's value."""
    out = {"box": asdict(box), "bound": asdict(bound)}
    if served_tokens_per_s is not None:
        out["served_tokens_per_s"] = served_tokens_per_s
        out["fraction_of_bound"] = served_tokens_per_s / bound.tokens_per_s
    return out


def main() -> None:
    parser = arguments(__doc__, threads=True)
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per decode step")
    parser.add_argument("--gemm-n", type=int, default=2048, help="side of the square matrices")
    parser.add_argument("--copy-mb", type=int, default=256, help="size of the copied tensor")
    args = parser.parse_args()
    params, weight_bytes = base_size(args.base)
    box = measure_box(args.threads, args.gemm_n, args.copy_mb)
    print(json.dumps({"base": args.base, **report(decode_bound(params, weight_bytes, box, args.batch), box)}, indent=2))


if __name__ == "__main__":
    main()
