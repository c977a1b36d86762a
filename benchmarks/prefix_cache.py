"""Benchmark P12: the cross-request prefix cache on a long shared system prompt.

A 512-token shared system prompt followed by short, distinct user turns (8-20 tokens), one request
at a time (the latency a user feels), greedy with fixed-length answers (ignore_eos), in-process
engines on the same base: one with the prefix cache, one without. The tiny base's config allows
512 positions, too few for 512 + turn + answer, so by default the benchmark builds (once, cached)
the same tiny base with max_position_embeddings 1024 (`--context`; it was pretrained on 128-token
windows either way, so positions past 128 are equally untrained in both).
  P12   TTFT with the prefix cache (a hit on the system prompt) / TTFT without     <= 0.4
  P12b  greedy outputs token-for-token identical with and without (%)              == 100
Also recorded: the miss cost (TTFT of a prompt nobody shared before, with the cache on / off), which
decides whether the cache is on by default. Requests alternate between the engines (interleaved),
each value is the median of the per-repetition medians.

    python benchmarks/prefix_cache.py [--base tiny-llama] [--reps 7] [--turns 8]
Writes benchmarks/results/prefix_cache.{json,md}.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import arguments, command, goals_table, machine, versions, write_results  # noqa: E402


def base_dir(name: str, context: int) -> Path:
    from training.artifact import resolve_base_dir
    from training.base.build import BaseBuildConfig, build_base

    if name != "tiny-llama" or context <= 512:
        return resolve_base_dir(name)
    cfg = BaseBuildConfig(name=f"tiny-llama-ctx{context}", max_position_embeddings=context, steps=60)
    return build_base(cfg, progress=False)


def timed(engine, model: str, prompt: list[int], max_tokens: int) -> tuple[float, list[str]]:
    """(seconds to the first token, the generated token pieces) of one greedy request."""
    from service.engine.types import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=0)

    async def one():
        started, first, pieces = time.perf_counter(), None, []
        async for event in engine.generate(engine.registry.acquire(model), prompt, params):
            if first is None and event.logprobs:
                first = time.perf_counter() - started
            pieces += [lp.token for lp in event.logprobs]
        return first, pieces

    return asyncio.run(one())


def main() -> None:
    parser = arguments(__doc__, threads=True, note="2-core dev box shared with other jobs (load average recorded)")
    parser.add_argument("--context", type=int, default=1024, help="max positions of the built tiny base")
    parser.add_argument("--system-tokens", type=int, default=512)
    parser.add_argument("--turns", type=int, default=8, help="user turns per repetition")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    from service.engine.engine import Engine
    from service.engine.settings import EngineSettings

    path = base_dir(args.base, args.context)
    engines = {on: Engine(EngineSettings(base_model=str(path), num_threads=args.threads, prefix_cache={"enabled": on}))
               for on in (True, False)}
    for engine in engines.values():
        engine.start()
    vocab = engines[True].registry.base.loaded.tokenizer.vocab_size
    rng = random.Random(0)
    system = [rng.randrange(10, vocab) for _ in range(args.system_tokens)]

    def turn() -> list[int]:
        return [rng.randrange(10, vocab) for _ in range(rng.randrange(8, 21))]

    host = machine(torch_threads=args.threads, note=args.note)
    hit_ratios, miss_ratios, runs, identical, total = [], [], {"hit_on": [], "off": [], "miss_on": [], "miss_off": []}, 0, 0
    try:
        for engine in engines.values():  # warm-up; the cached engine stores the system prompt
            timed(engine, "base", system + turn(), args.max_tokens)
        for rep in range(args.reps):
            times = {key: [] for key in runs}
            for i in range(args.turns):
                prompt, unique = system + turn(), [rng.randrange(10, vocab) for _ in range(args.system_tokens)] + turn()
                order = (True, False) if (rep + i) % 2 == 0 else (False, True)
                outputs = {}
                for on in order:
                    seconds, outputs[on] = timed(engines[on], "base", prompt, args.max_tokens)
                    times["hit_on" if on else "off"].append(seconds)
                    times["miss_on" if on else "miss_off"].append(timed(engines[on], "base", unique, args.max_tokens)[0])
                total += 1
                identical += outputs[True] == outputs[False]
            medians = {key: statistics.median(values) for key, values in times.items()}
            for key in runs:
                runs[key].append(round(medians[key] * 1000, 2))
            hit_ratios.append(medians["hit_on"] / medians["off"])
            miss_ratios.append(medians["miss_on"] / medians["miss_off"])
        stats = engines[True].prefix_cache.stats()
    finally:
        for engine in engines.values():
            engine.stop()
    p12, same = statistics.median(hit_ratios), 100.0 * identical / total
    result = {
        "benchmark": "cross-request prefix cache (P12)",
        "goals": [
            {"id": "P12", "measure": f"TTFT with the prefix cache / without, {args.system_tokens}-token shared system "
             "prompt + 8-20 token user turns, one request at a time (median of interleaved reps)",
             "value": round(p12, 3), "goal": "<= 0.4", "met": p12 <= 0.4},
            {"id": "P12b", "measure": "greedy outputs token-for-token identical with and without (%)",
             "value": round(same, 1), "goal": "== 100", "met": same == 100.0},
        ],
        "results": {"base": str(path.name), "system_tokens": args.system_tokens, "turns_per_rep": args.turns,
                    "reps": args.reps, "max_tokens": args.max_tokens, "ttft_ms_median_per_rep": runs,
                    "hit_ratio_per_rep": [round(r, 3) for r in hit_ratios],
                    "miss_cost_ratio": round(statistics.median(miss_ratios), 3),
                    "miss_cost_ratio_per_rep": [round(r, 3) for r in miss_ratios], "cache_stats": stats},
        "machine": host,
        "versions": versions("torch", "transformers"),
        "command": command(),
    }
    write_results("prefix_cache", result, markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"# {result['benchmark']}", "", f"`{result['command']}`", "", *goals_table(result["goals"])]
    r, m = result["results"], result["machine"]
    lines += ["", f"Base {r['base']}, {r['reps']} reps x {r['turns_per_rep']} turns, {r['max_tokens']} tokens per answer. "
              f"TTFT medians per rep (ms): hit with cache {r['ttft_ms_median_per_rep']['hit_on']}, without "
              f"{r['ttft_ms_median_per_rep']['off']}; ratios {r['hit_ratio_per_rep']}.", "",
              f"Miss cost (a {r['system_tokens']}-token prompt nobody sent before, cache on / off, TTFT): median "
              f"{r['miss_cost_ratio']}, per rep {r['miss_cost_ratio_per_rep']}; the cache stores each miss's blocks. "
              f"Cache at the end: {r['cache_stats']}.", "",
              f"Machine: {m['platform']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, load average "
              f"at start {m['load_average_at_start']} ({m['note']}). Versions: {result['versions']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
