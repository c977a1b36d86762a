"""One tenant never hurts another (no Ray): hostile sampling values and text are refused or made
safe at the edge, a row whose sampling or forward pass fails fails alone (its neighbours decode
the same tokens as alone), a burst of valid and poison requests from many keys, leases of failed
and cancelled requests, and the bounded, rate-limited adapter loader."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from service.auth import Authenticator
from service.core import ServingCore
from service.engine import decode, sampling
from service.engine.types import SamplingParams
from service.http import create_app
from service.keys import add_key, create_key
from service.schemas import CompletionRequest
from service.settings import load_settings
from tests.service_fixtures import service_args
from training.artifact.errors import InvalidRequest

PROMPT = "To be, or not to be"
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


@pytest.fixture(scope="module")
def core(tiny_base_dir, service_artifacts, serve_keys):
    core = ServingCore(load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0],
                                                  cache={"enabled": False})))
    core.start()
    yield core
    core.stop()


def generate(core, specs):
    """Run (model, prompt, params) rows together (one batching window); each row's text, or its error."""
    async def main():
        tokenizer = core.registry.base.loaded.tokenizer
        streams = [core.engine.generate(core.registry.acquire(model), tokenizer(prompt)["input_ids"], params)
                   for model, prompt, params in specs]

        async def collect(stream):
            text = ""
            try:
                async for event in stream:
                    text += event.text
            except Exception as exc:  # noqa: BLE001 - the row's own error
                return exc
            return text

        return await asyncio.gather(*[collect(s) for s in streams])

    return asyncio.run(main())


def alone(core, specs):
    return [generate(core, [spec])[0] for spec in specs]


HEALTHY = [("base", PROMPT, GREEDY), ("a1", PROMPT, GREEDY), ("base", "Hello there", GREEDY),
           ("a1", "Once upon a time", GREEDY)]


# ---- sampling is numerically safe ------------------------------------------------------
@pytest.mark.parametrize("params", [SamplingParams(temperature=1e-300), SamplingParams(temperature=1.0, top_p=1e-300),
                                    SamplingParams(temperature=1e-30, top_p=1e-45)])
def test_tiny_temperature_and_top_p_never_make_nan(params):
    import torch

    logits = torch.tensor([3.0, 1.0, -2.0, 0.5])
    assert sampling.choose_token(logits, params, torch.Generator().manual_seed(0)) == 0


def test_unsamplable_logits_raise_for_that_row():
    import torch

    SamplingError = sampling.SamplingError

    with pytest.raises(SamplingError):
        sampling.choose_token(torch.tensor([float("nan"), 1.0]), SamplingParams(temperature=1.0), torch.Generator())


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63), -1, 0])
def test_every_int64_seed_samples_and_reproduces(core, seed):
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=seed)
    first, second = generate(core, [("base", PROMPT, params), ("base", PROMPT, params)])
    assert isinstance(first, str) and first == second


# ---- validation at the edge ------------------------------------------------------------
@pytest.mark.parametrize("fields,param", [
    ({"seed": 2**63}, "seed"), ({"seed": 2**64}, "seed"), ({"seed": -(2**63) - 1}, "seed"),
    ({"prompt": "\ud800"}, "prompt"), ({"prompt": ["fine", "x\udfff"]}, "prompt.1"),
    ({"stop": ["ok", "\ud83d"]}, "stop.1"), ({"user": "\udc00"}, "user"), ({"model": "a\ud800"}, "model"),
])
def test_out_of_range_seeds_and_lone_surrogates_are_refused(fields, param):
    with pytest.raises(Exception) as caught:
        CompletionRequest.model_validate({"model": "base", "prompt": PROMPT, **fields})
    error = caught.value
    message = getattr(error, "message", None) or str(error)
    assert param.split(".")[0] in message
    if isinstance(error, InvalidRequest):
        assert error.param == param and "surrogate" in error.message
        message.encode("utf-8")  # the message itself is valid text


def test_a_surrogate_in_a_field_name_is_refused_without_echoing_it():
    with pytest.raises(InvalidRequest) as caught:
        CompletionRequest.model_validate({"model": "base", "prompt": "x", "\ud800": 1})
    caught.value.message.encode("utf-8")


def test_tiny_temperature_is_greedy_and_long_stop_strings_are_refused(core):
    tiny = asyncio.run(core.complete(CompletionRequest(model="base", prompt=PROMPT, max_tokens=8,
                                                       temperature=1e-300), None))
    greedy = asyncio.run(core.complete(CompletionRequest(model="base", prompt=PROMPT, max_tokens=8,
                                                         temperature=0), None))
    assert tiny.choices[0].text == greedy.choices[0].text
    with pytest.raises(InvalidRequest, match="max_stop_chars"):
        asyncio.run(core.complete(CompletionRequest(model="base", prompt=PROMPT, stop=["x" * 257]), None))


# ---- a failing row fails alone -----------------------------------------------------------
POISON_SEED = 666


@pytest.mark.parametrize("fail_at_call", [1, 3])  # at admission (first token), at a later decode step
def test_a_row_whose_sampling_fails_fails_alone(core, monkeypatch, fail_at_call):
    expected = alone(core, HEALTHY)
    calls = {"n": 0}

    def poisoned(logits, params, generator):
        if params.seed == POISON_SEED:
            calls["n"] += 1
            if calls["n"] >= fail_at_call:
                raise RuntimeError("poisoned sampling")
        return sampling.choose_token(logits, params, generator)

    monkeypatch.setattr(decode, "choose_token", poisoned)
    poison = ("a1", PROMPT, SamplingParams(max_tokens=8, temperature=1.0, seed=POISON_SEED))
    results = generate(core, [*HEALTHY[:2], poison, *HEALTHY[2:]])
    assert isinstance(results[2], RuntimeError) and "poisoned" in str(results[2])
    assert [r for i, r in enumerate(results) if i != 2] == expected


@pytest.mark.parametrize("at_step", [False, True])  # in the prefill pass, in a later decode step
def test_a_row_whose_forward_pass_fails_fails_alone(core, monkeypatch, at_step):
    expected = alone(core, HEALTHY)
    target = core.registry.base
    slot = core.registry.acquire("a2")
    slot.release()
    original, steps = target.forward, {"n": 0}

    def forward(adapters, *args, **inputs):
        if slot.slot in adapters:
            decoding = inputs["input_ids"].shape[1] == 1
            steps["n"] += decoding
            if not at_step or (decoding and steps["n"] >= 2):
                raise RuntimeError("poisoned forward")
        return original(adapters, *args, **inputs)

    monkeypatch.setattr(target, "forward", forward)
    poison = ("a2", PROMPT, GREEDY)
    results = generate(core, [poison, *HEALTHY, poison])
    assert all(isinstance(r, RuntimeError) for r in (results[0], results[-1]))
    assert results[1:-1] == expected
    assert core.registry.adapters["a2"].in_use == 0 and core.registry.adapters["a1"].in_use == 0


def test_values_that_used_to_overflow_now_decode(core):
    rows = [("base", PROMPT, SamplingParams(max_tokens=8, temperature=1e-300)),
            ("base", PROMPT, SamplingParams(max_tokens=8, temperature=1.0, top_p=1e-300)),
            ("base", PROMPT, SamplingParams(max_tokens=8, temperature=1.0, seed=2**64 + 5))]
    results = generate(core, [*HEALTHY, *rows])
    assert results[:len(HEALTHY)] == alone(core, HEALTHY)
    assert all(isinstance(r, str) for r in results)


# ---- the noisy neighbour over HTTP ----------------------------------------------------
VALID = [{"prompt": f"{PROMPT} {i}", "max_tokens": 6, "temperature": 0} for i in range(16)]
NOW_SAFE = [{"prompt": PROMPT, "max_tokens": 6, "temperature": 1e-300},
            {"prompt": PROMPT, "max_tokens": 6, "temperature": 1.0, "top_p": 1e-300}]
POISON = [(b'{"model": "base", "prompt": "%s", "seed": 18446744073709551616}' % PROMPT.encode(), "seed"),
          (b'{"model": "base", "prompt": "\\ud800 hi"}', "prompt"),
          (b'{"model": "base", "messages": [{"role": "user", "content": "\\udfff"}]}', "messages.0.content"),
          (json.dumps({"model": "base", "prompt": PROMPT, "stop": ["y" * 300]}).encode(), "stop")]


def test_valid_requests_released_with_poison_ones_all_succeed(tiny_base_dir, service_artifacts, tmp_path):
    keys_file, keys = tmp_path / "keys.json", []
    for i in range(len(VALID) + len(NOW_SAFE) + len(POISON)):
        plain, record = create_key(f"tenant-{i}", ["infer"], ["*"])
        add_key(keys_file, record)
        keys.append({"Authorization": f"Bearer {plain}", "Content-Type": "application/json"})
    settings = load_settings(service_args(tiny_base_dir, service_artifacts, keys_file, cache={"enabled": False}))
    core = ServingCore(settings)
    core.start()
    app = create_app(core, Authenticator.from_settings(settings), settings)

    async def burst():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            bodies = [json.dumps({"model": "base", **b}).encode() for b in VALID + NOW_SAFE] + [b for b, _ in POISON]
            paths = ["/v1/completions"] * (len(VALID) + len(NOW_SAFE) + 2) + ["/v1/chat/completions", "/v1/completions"]
            return await asyncio.gather(*[client.post(path, content=body, headers=key)
                                          for path, body, key in zip(paths, bodies, keys)])

    try:
        alone_texts = [asyncio.run(core.complete(CompletionRequest(model="base", **b), None)).choices[0].text
                       for b in VALID[:3]]
        replies = asyncio.run(burst())
    finally:
        core.stop()
    valid, safe, poison = replies[:16], replies[16:18], replies[18:]
    assert [r.status_code for r in valid + safe] == [200] * 18, [r.text for r in valid + safe if r.status_code != 200]
    assert [r.json()["choices"][0]["text"] for r in valid[:3]] == alone_texts
    for reply, (_, param) in zip(poison, POISON):
        error = reply.json()["error"]
        assert reply.status_code == 400 and error["param"] == param and error["message"], reply.text


# ---- leases -----------------------------------------------------------------------------
def wait_until(check, timeout_s=20.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_prompt_that_cannot_start_leaks_no_lease(core, monkeypatch):
    original, calls = core.engine.generate, {"n": 0}

    def second_fails(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("engine refused the second prompt")
        return original(*args, **kwargs)

    monkeypatch.setattr(core.engine, "generate", second_fails)
    with pytest.raises(RuntimeError):
        asyncio.run(core.complete(CompletionRequest(model="a1", prompt=["one", "two", "three"], max_tokens=4), None))
    wait_until(lambda: core.registry.adapters["a1"].in_use == 0)


@pytest.fixture()
def lazy_core(tiny_base_dir, service_artifacts, serve_keys):
    """A core with one adapter slot: a2 and a3 are catalogued but load on demand."""
    core = ServingCore(load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0], max_adapters=1,
                                                  cache={"enabled": False})))
    core.start()
    yield core
    core.stop()


def gated_loads(core, monkeypatch):
    """Loads wait for the returned event; each records the thread it ran in."""
    import threading

    gate, threads, original = threading.Event(), [], core.registry.load_adapter

    def load(*args, **kwargs):
        threads.append(threading.current_thread().name)
        gate.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(core.registry, "load_adapter", load)
    return gate, threads


def test_a_cancelled_on_demand_load_leaves_no_lease(lazy_core, monkeypatch):
    gate, threads = gated_loads(lazy_core, monkeypatch)

    async def cancel_during_load():
        task = asyncio.create_task(lazy_core.lease("a2", None))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_during_load())
    gate.set()
    wait_until(lambda: "a2" in lazy_core.registry.adapters)
    assert lazy_core.registry.adapters["a2"].in_use == 0
    assert threads and all(t.startswith("tuneserve-load") for t in threads)  # the loader's own pool
    lease = asyncio.run(lazy_core.lease("a3", None))  # a2's slot can be freed: nothing holds it
    lease.release()


def test_on_demand_loads_are_rate_limited_per_key_and_in_all(lazy_core):
    from service.auth import Principal
    from service.loader import AdapterLoader
    from service.settings import AdapterLoadLimits
    from training.artifact.errors import RateLimited

    lazy_core.loader = AdapterLoader(lazy_core.registry, AdapterLoadLimits(per_min=2, per_key_per_min=1))
    first, second, third = Principal("k1", "one"), Principal("k2", "two"), Principal("k3", "three")

    def use(model, principal):
        return asyncio.run(lazy_core.complete(CompletionRequest(model=model, prompt="hi", max_tokens=2), principal))

    assert use("a2", first).model == "a2"
    with pytest.raises(RateLimited) as limited:
        use("a3", first)  # the key's one load per minute is spent
    assert "k1" in limited.value.message and limited.value.retry_after > 0 and limited.value.hint
    assert use("a2", first).model == "a2"  # resident adapters cost nothing
    assert use("a3", second).model == "a3"
    with pytest.raises(RateLimited, match="this replica"):
        use("a1", third)  # two loads per minute in all
    assert use("a3", third).model == "a3"


def test_loads_queue_to_a_bound_and_share_one_load_per_adapter(lazy_core, monkeypatch):
    from service.loader import AdapterLoader
    from service.settings import AdapterLoadLimits
    from training.artifact.errors import Unavailable

    gate, threads = gated_loads(lazy_core, monkeypatch)
    lazy_core.loader = AdapterLoader(lazy_core.registry, AdapterLoadLimits(max_pending=1, per_min=None,
                                                                           per_key_per_min=None))

    async def crowd():
        same = [asyncio.create_task(lazy_core.lease("a2", None)) for _ in range(5)]
        await asyncio.sleep(0.2)
        with pytest.raises(Unavailable, match="max_pending"):
            await lazy_core.lease("a3", None)
        gate.set()
        leases = await asyncio.gather(*same)
        for lease in leases:
            lease.release()
        return leases

    leases = asyncio.run(crowd())
    assert len(threads) == 1 and {lease.model_id for lease in leases} == {"a2"}
    assert lazy_core.registry.adapters["a2"].in_use == 0
