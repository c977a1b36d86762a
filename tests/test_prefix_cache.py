"""The cross-request prefix cache (service/engine/prefix_cache.py): greedy outputs identical with and
without it (base, adapters, mixed batches with echo rows), adapters never reuse each other's
entries, the byte bound holds under eviction, and the hit/miss counters move; plus the engine's
per-request prefill/decode timing histograms (they use the same in-process engines).

    pytest tests/test_prefix_cache.py
"""

import asyncio

import pytest
import torch
from prometheus_client import REGISTRY

from service.engine.engine import Engine
from service.engine.prefix_cache import PrefixCache
from service.engine.settings import EngineSettings
from service.engine.types import SamplingParams
from tests.service_fixtures import make_adapter

SHARED = [(37 * i + 11) % 900 + 20 for i in range(80)]  # a shared "system prompt" of 80 token ids (5 blocks)
TURNS = [[101, 202, 303], [404, 505, 606, 707, 808], [909, 111]]
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=0)


@pytest.fixture(scope="module")
def engines(tiny_base_dir, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("prefix-artifacts")
    for seed, name in enumerate(("pa", "pb")):
        make_adapter(tiny_base_dir, artifacts / name, name, seed=seed + 3)
    built = {}
    for cached in (True, False):
        settings = EngineSettings(base_model=str(tiny_base_dir), artifacts_dir=artifacts, max_adapters=2,
                                  prefix_cache={"enabled": cached, "block_tokens": 16})
        built[cached] = Engine(settings)
        built[cached].start()
    yield built
    for engine in built.values():
        engine.stop()


def run(engine, requests, together=False, scope=None):
    """[(model, prompt_ids, params)] -> per request its [(token piece, logprob)], prompt logprobs first."""
    async def one(model, prompt, params):
        stream = engine.generate(engine.registry.acquire(model), prompt, params, scope=scope)
        return [(lp.token, lp.logprob) async for event in stream for lp in event.logprobs]

    async def main():
        if together:
            return await asyncio.gather(*(one(*r) for r in requests))
        return [await one(*r) for r in requests]

    return asyncio.run(main())


def same(a, b):
    assert [[t for t, _ in row] for row in a] == [[t for t, _ in row] for row in b]
    for row_a, row_b in zip(a, b):
        for (_, la), (_, lb) in zip(row_a, row_b):
            assert (la is None and lb is None) or abs(la - lb) < 1e-3


def test_greedy_outputs_identical_with_and_without_on_base_and_adapters(engines):
    cache = engines[True].prefix_cache
    cache.clear()
    hits = cache.hits
    for model in ("base", "pa", "pb"):
        requests = [(model, SHARED + turn, GREEDY) for turn in TURNS] + [(model, SHARED + TURNS[0], GREEDY)]
        same(run(engines[True], requests), run(engines[False], requests))
    assert cache.hits - hits >= 9  # every request after the first of each model reused the shared blocks
    assert cache.bytes <= cache.max_bytes and cache.stats()["entries"] >= 3


def test_mixed_batch_of_hits_misses_and_echo_rows_matches_uncached(engines):
    engines[True].prefix_cache.clear()
    run(engines[True], [(m, SHARED + [5], GREEDY) for m in ("base", "pa")])  # warm: both scopes hold SHARED
    echo = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True, logprobs=1, echo=True)
    requests = [("pa", SHARED + TURNS[1], GREEDY), ("pb", SHARED + TURNS[2], GREEDY),
                ("base", SHARED[:40] + TURNS[0], GREEDY), ("base", [7, 8, 9, 10], GREEDY),
                ("pa", SHARED + TURNS[0], echo), ("base", SHARED + SHARED[:20] + TURNS[2], GREEDY)]
    hits = engines[True].prefix_cache.hits
    same(run(engines[True], requests, together=True), run(engines[False], requests, together=True))
    assert engines[True].prefix_cache.hits - hits >= 3


def test_adapters_never_reuse_each_others_entries(engines):
    """Plant a difference in pa's entries: pb and the base still match the uncached engine, pa does not
    (so the planted entry is really what a hit uses)."""
    cache = engines[True].prefix_cache
    cache.clear()
    run(engines[True], [("pa", SHARED + [5], GREEDY)])
    assert cache.stats()["entries"] == 1
    for entry in cache.entries.values():
        entry.layers = [(k + 3.0 * torch.randn_like(k), v + 3.0 * torch.randn_like(v)) for k, v in entry.layers]
    for model in ("pb", "base"):
        request = [(model, SHARED + TURNS[1], GREEDY)]
        same(run(engines[True], request), run(engines[False], request))
    request = [("pa", SHARED + TURNS[1], GREEDY)]
    cached, plain = run(engines[True], request), run(engines[False], request)
    assert cached != plain
    cache.clear()


def test_hit_and_miss_counters_move_per_adapter(engines):
    def value(result):
        return REGISTRY.get_sample_value("tuneserve_prefix_cache_lookups_total", {"adapter": "pb", "result": result}) or 0

    engines[True].prefix_cache.clear()
    hits, misses = value("hit"), value("miss")
    run(engines[True], [("pb", SHARED + turn, GREEDY) for turn in TURNS])
    assert (value("hit") - hits, value("miss") - misses) == (2, 1)
    assert REGISTRY.get_sample_value("tuneserve_prefix_cache_reused_tokens_total", {"adapter": "pb"}) >= 160


def test_entries_are_per_api_key(engines):
    """Like the response cache: no tenant learns from its time to first token what another one sent."""
    cache = engines[True].prefix_cache
    cache.clear()
    run(engines[True], [("pa", SHARED + TURNS[0], GREEDY)], scope="key-1")
    hits = cache.hits
    run(engines[True], [("pa", SHARED + TURNS[1], GREEDY)], scope="key-2")
    assert cache.hits == hits
    run(engines[True], [("pa", SHARED + TURNS[2], GREEDY)], scope="key-1")
    assert cache.hits == hits + 1


def kv(tokens: int, layers: int = 2):
    return [(torch.full((2, tokens, 4), float(i)), torch.full((2, tokens, 4), float(i))) for i in range(layers)]


def test_eviction_keeps_the_byte_bound_and_drops_least_recently_used():
    per_entry = 2 * 2 * 2 * 16 * 4 * 4  # layers * (k, v) * heads * tokens * dim * fp32 bytes
    cache = PrefixCache(max_bytes=3 * per_entry, block_tokens=16)
    prompts = [[p] * 17 for p in range(5)]
    for prompt in prompts[:3]:
        assert cache.store(("t", None), prompt, kv(17))
    assert cache.lookup(("t", None), prompts[0] + [1])[0] == 16  # prompt 0 becomes the most recently used
    for prompt in prompts[3:]:
        cache.store(("t", None), prompt, kv(17))
        assert cache.bytes <= cache.max_bytes
    assert cache.stats()["entries"] == 3
    assert cache.lookup(("t", None), prompts[0] + [1]) is not None
    assert cache.lookup(("t", None), prompts[1] + [1]) is None and cache.lookup(("t", None), prompts[2] + [1]) is None
    assert not cache.store(("t", None), [9] * 200, kv(200))  # larger than the whole budget: not kept
    assert cache.lookup(("t", None), prompts[4] + [1]) is not None
    assert len(cache.index) == 3  # evicted entries left no index keys behind


def test_longest_block_aligned_match_within_scope_and_never_the_whole_prompt():
    cache = PrefixCache(max_bytes=1 << 20, block_tokens=4)
    prompt = list(range(10))
    cache.store(("t", "a1"), prompt, kv(10))
    assert cache.lookup(("t", "a1"), prompt[:8] + [99])[0] == 8
    assert cache.lookup(("t", "a1"), prompt[:6] + [99])[0] == 4
    assert cache.lookup(("t", "a1"), prompt[:8])[0] == 4  # the last token always runs (its logits pick the next)
    assert cache.lookup(("t", "a2"), prompt) is None and cache.lookup(("t", None), prompt) is None
    assert cache.lookup(("other", "a1"), prompt) is None
    assert cache.lookup(("t", "a1"), [50] + prompt[1:]) is None


def test_each_request_records_its_prefill_and_decode_time(engines):
    """Not the prefix cache itself: the engine's per-request timing histograms (queue wait, prefill, decode)
    that show where a request's latency goes, recorded once per finished row."""
    def sample(name, suffix):
        return REGISTRY.get_sample_value(f"tuneserve_{name}_seconds_{suffix}", {"adapter": "pa"}) or 0

    before = {(n, s): sample(n, s) for n in ("prefill", "decode", "queue_wait") for s in ("count", "sum")}
    run(engines[False], [("pa", turn, GREEDY) for turn in TURNS], together=True)
    for name in ("prefill", "decode", "queue_wait"):
        assert sample(name, "count") - before[(name, "count")] == len(TURNS)
    assert sample("prefill", "sum") > before[("prefill", "sum")]
    assert sample("decode", "sum") > before[("decode", "sum")]  # 7 decode steps after the first token
