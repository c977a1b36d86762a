"""Benchmark: what adapter-affinity routing could save (issue 17, optional item), measured before building it.

Every Engine replica loads an adapter on demand and keeps at most `max_adapters` (LRU). Routing the
requests for an adapter to the replicas that already hold it can only save the misses: a request whose
adapter must be loaded first. This measures, on one engine in this process (no Ray), the latency of a
completion whose adapter is resident (hit) against one that evicts another adapter and loads its own
(miss: `max_adapters` 2, four adapters requested round-robin), with the on-demand load rate limits
off (by default a replica loads at most 20 adapters a minute, 4 per API key: more get 429).

    PYTHONPATH=$PWD python benchmarks/adapter_miss.py [--base tiny-llama] [--rounds 12]
Writes benchmarks/results/adapter_miss.{json,md}.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python benchmarks/NAME.py`
from benchmarks.common import (  # noqa: E402
    arguments, command, load_average, machine, provenance, versions, write_results)

ADAPTERS = ["m0", "m1", "m2", "m3"]


def timed_completions(core, order: list[str], max_tokens: int) -> list[float]:
    from service.schemas import CompletionRequest

    seconds = []
    for model in order:
        started = time.perf_counter()
        asyncio.run(core.complete(CompletionRequest(model=model, prompt="Tell me about", max_tokens=max_tokens,
                                                    temperature=0), None))
        seconds.append(time.perf_counter() - started)
    return seconds


def summary(seconds: list[float]) -> dict:
    return {"n": len(seconds), "median_ms": round(1000 * statistics.median(seconds), 1),
            "mean_ms": round(1000 * statistics.mean(seconds), 1)}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    from service.core import ServingCore
    from service.keys import add_key, create_key
    from service.settings import load_settings
    from tests.service_fixtures import make_adapter
    from training.artifact import resolve_base_dir

    base_dir = resolve_base_dir(args.base)
    work = Path(tempfile.mkdtemp(prefix="ts-adapter-miss-"))
    for i, name in enumerate(ADAPTERS):
        make_adapter(base_dir, work / "artifacts" / name, name, seed=i)
    add_key(work / "keys.json", create_key("bench", ["infer"])[1])
    core = ServingCore(load_settings({"base_model": str(base_dir), "artifacts_dir": str(work / "artifacts"),
                                      "keys_file": str(work / "keys.json"), "api_keys_env": None, "max_adapters": 2,
                                      "num_threads": 1, "cache": {"enabled": False},
                                      # unthrottled, to time the load itself (defaults: 20/min, 4/min per key)
                                      "limits": {"adapter_loads": {"per_min": None, "per_key_per_min": None}}}))
    core.start()
    try:
        timed_completions(core, ADAPTERS, args.max_tokens)  # warm-up: first loads, compiled paths
        hits = timed_completions(core, ["m0"] * (args.rounds * len(ADAPTERS)), args.max_tokens)
        misses = timed_completions(core, ADAPTERS * args.rounds, args.max_tokens)  # LRU of 2: every one a miss
    finally:
        core.stop()
    hit, miss = summary(hits), summary(misses)
    results = {"command": command(), "base": args.base, "max_tokens": args.max_tokens, "machine": machine(),
               "versions": versions("torch", "transformers", "peft"), "load_average": load_average(),
               "hit": hit, "miss": miss, "miss_cost_ms": round(miss["median_ms"] - hit["median_ms"], 1)}
    write_results("adapter_miss", results, "\n".join([
        "# Adapter hit vs miss on one engine", "", *provenance(results),
        f"Load average at the end: {results['load_average']}", "",
        f"Completion of {args.max_tokens} tokens, adapter resident (hit): median {hit['median_ms']} ms (n={hit['n']}); "
        f"adapter loaded first, evicting another (miss, max_adapters 2, 4 adapters round-robin): median "
        f"{miss['median_ms']} ms (n={miss['n']}). A miss costs {results['miss_cost_ms']} ms."]))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
