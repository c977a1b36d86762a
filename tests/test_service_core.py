"""ServingCore + engine on the tiny base with real LoRA adapters (no Ray): batching, mixed adapters,
streaming, sampling, stop strings, logprobs, limits, cache, adapter registry (LRU, pin, hot swap)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from service.core import ServingCore
from service.schemas import ChatCompletionRequest, ClassifyRequest, CompletionRequest, LoadAdapterRequest
from service.settings import load_settings
from tests.service_fixtures import make_adapter, service_args
from training.artifact.errors import ArtifactInvalid, Conflict, InvalidRequest, NotFound

PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def core(tiny_base_dir, service_artifacts, serve_keys):
    core = ServingCore(load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0])))
    core.start()
    yield core
    core.stop()


def run(coro):
    return asyncio.run(coro)


def complete(core, model, prompt=PROMPT, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 12)
    return run(core.complete(CompletionRequest(model=model, prompt=prompt, **kw), None))


def test_models_lists_base_adapters_and_classifier(core):
    ids = {m.id: m.kind for m in run(core.list_models(None)).data}
    assert ids[core.registry.base_name] == "base"
    assert {ids["a1"], ids["a2"], ids["a3"], ids["clf"]} == {"adapter", "model"}


def test_adapters_change_greedy_output_and_usage_counts(core):
    base = complete(core, core.registry.base_name)
    a1 = complete(core, "a1")
    assert base.choices[0].text != a1.choices[0].text
    usage = a1.usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert a1.choices[0].finish_reason in ("stop", "length")


def test_mixed_adapter_batch_equals_single_requests(core):
    core.engine.cache.clear()
    names = [core.registry.base_name, "a1", "a2", "a3"]
    single = {n: complete(core, n, max_tokens=10).choices[0].text for n in names}
    core.engine.cache.clear()

    async def together():
        reqs = [CompletionRequest(model=n, prompt=PROMPT, temperature=0, max_tokens=10) for n in names * 2]
        return await asyncio.gather(*[core.complete(r, None) for r in reqs])

    results = run(together())
    assert [r.choices[0].text for r in results] == [single[n] for n in names * 2]


def test_stream_concatenates_to_the_same_text(core):
    expected = complete(core, "a2", max_tokens=10).choices[0].text

    async def collect():
        req = CompletionRequest(model="a2", prompt=PROMPT, temperature=0, max_tokens=10, stream=True,
                                stream_options={"include_usage": True})
        return [c async for c in core.stream_complete(req, None)]

    chunks = run(collect())
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == expected
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_stop_string_truncates_and_reports_stop(core):
    full = complete(core, "a1", max_tokens=24).choices[0].text
    stop = full[5:8]
    cut = complete(core, "a1", max_tokens=24, stop=[stop]).choices[0]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"


def test_max_tokens_reports_length(core):
    # ignore_eos: an EOS drawn as the last allowed token would end the choice with "stop" (as in OpenAI)
    choice = complete(core, core.registry.base_name, max_tokens=3, ignore_eos=True)
    assert choice.usage.completion_tokens == 3 and choice.choices[0].finish_reason == "length"


def test_seeded_sampling_reproducible_and_n_choices(core):
    a = complete(core, "a1", temperature=0.9, seed=7, n=3, max_tokens=6)
    core.engine.cache.clear()
    b = complete(core, "a1", temperature=0.9, seed=7, n=3, max_tokens=6)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len({c.text for c in a.choices}) > 1


def test_logprobs_top_k(core):
    resp = complete(core, "a1", max_tokens=5, logprobs=3)
    lp = resp.choices[0].logprobs
    assert len(lp.token_logprobs) == resp.usage.completion_tokens
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(t) == 3 for t in lp.top_logprobs)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):  # greedy: the chosen token is the best
        assert abs(chosen - max(top.values())) < 1e-5


def test_chat_uses_a_template(core):
    resp = run(core.chat(ChatCompletionRequest(model="a1", messages=[{"role": "user", "content": "hi"}],
                                               temperature=0, max_tokens=6), None))
    assert resp.choices[0].message.role == "assistant" and resp.usage.prompt_tokens > 3


def test_classify_returns_probabilities(core):
    resp = run(core.classify(ClassifyRequest(model="clf", input=["good", "bad day"]), None))
    assert [d.index for d in resp.data] == [0, 1]
    for item in resp.data:
        assert {s.label for s in item.scores} == {"neg", "pos"}
        assert abs(sum(s.score for s in item.scores) - 1) < 1e-5 and item.label == item.scores[0].label


@pytest.mark.parametrize("fields,param", [({"max_tokens": 10_000}, "max_tokens"), ({"n": 99}, "n"),
                                          ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"logprobs": 50}, "logprobs"),
                                          ({"min_tokens": 13}, "min_tokens"), ({"max_tokens": 0}, "max_tokens"),
                                          ({"stop_token_ids": [10**9]}, "stop_token_ids"),
                                          ({"prompt": [5, 10**9]}, "prompt"), ({"prompt": [[5], [-1]]}, "prompt")])
def test_limits_are_enforced_with_the_field_named(core, fields, param):
    with pytest.raises(InvalidRequest) as info:
        complete(core, "a1", **fields)
    assert info.value.param == param


def test_unknown_model_and_wrong_task(core):
    with pytest.raises(NotFound):
        complete(core, "nope")
    with pytest.raises(InvalidRequest, match="classification"):
        complete(core, "clf")


def test_cache_hits_only_deterministic_requests(core):
    core.engine.cache.clear()
    before = dict(core.engine.cache.stats())
    first = complete(core, "a3", prompt="cache me")
    second = complete(core, "a3", prompt="cache me")
    stats = core.engine.cache.stats()
    assert first.choices[0].text == second.choices[0].text and stats["hits"] == before["hits"] + 1
    complete(core, "a3", prompt="cache me", temperature=0.8)
    assert core.engine.cache.stats()["hits"] == stats["hits"]


def test_cancelled_stream_leaves_the_batch(core):
    async def start_and_leave():
        req = CompletionRequest(model="a1", prompt=PROMPT, temperature=0.7, max_tokens=200, stream=True)
        agen = core.stream_complete(req, None)
        async for _ in agen:
            break
        await agen.aclose()

    run(start_and_leave())
    deadline = time.time() + 5
    while core.engine.scheduler.active_rows and time.time() < deadline:
        time.sleep(0.02)
    assert core.engine.scheduler.active_rows == 0


def test_adapter_lru_pin_hot_swap_and_corrupt_refusal(core, tiny_base_dir, tmp_path):
    reg = core.registry
    run(core.pin_adapter("a1", True))
    for name in ("a2", "a3", "a1"):
        complete(core, name, max_tokens=2)  # use order: a2 is least recently used
    extra = make_adapter(tiny_base_dir, tmp_path / "a4", "a4", seed=9)
    run(core.load_adapter(LoadAdapterRequest(name="a4", path=str(extra))))
    assert set(reg.adapters) == {"a1", "a3", "a4"}  # a2 evicted, pinned a1 kept
    with pytest.raises(Conflict):
        run(core.unload_adapter("a1"))
    complete(core, "a2", max_tokens=2)  # known in the catalog: loads on demand, evicting an unpinned one
    assert "a2" in reg.adapters and "a1" in reg.adapters

    before = complete(core, "a3", max_tokens=12).choices[0].text
    broken = tmp_path / "a3-broken"
    shutil.copytree(reg.adapters["a3"].path, broken)
    with open(broken / "adapter_model.safetensors", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00" * 8)
    with pytest.raises(ArtifactInvalid, match="checksum"):
        run(core.load_adapter(LoadAdapterRequest(name="a3", path=str(broken))))
    core.engine.cache.clear()
    assert complete(core, "a3", max_tokens=12).choices[0].text == before

    v2 = make_adapter(tiny_base_dir, tmp_path / "a3-v2", "a3", seed=42, version="2")
    info = run(core.load_adapter(LoadAdapterRequest(name="a3", path=str(v2))))
    assert info.version == "2"
    assert complete(core, "a3", max_tokens=12).choices[0].text != before  # cache keyed by version
    run(core.pin_adapter("a1", False))
    run(core.unload_adapter("a3"))
    assert "a3" not in reg.adapters and len(reg.adapters) <= 3


def test_evicting_the_only_loaded_adapter_keeps_serving(tiny_base_dir, service_artifacts, serve_keys):
    """With one slot, every switch evicts the last adapter PEFT holds; base and adapters keep answering."""
    one = ServingCore(load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0], max_adapters=1),
                                    ["cache.enabled=false"]))
    one.start()
    try:
        first = {name: complete(one, name, max_tokens=6).choices[0].text for name in ("a1", "a2")}
        assert list(one.registry.adapters) == ["a2"]
        base = complete(one, one.registry.base_name, max_tokens=6).choices[0].text
        assert complete(one, "a1", max_tokens=6).choices[0].text == first["a1"]
        run(one.unload_adapter("a1"))
        assert complete(one, one.registry.base_name, max_tokens=6).choices[0].text == base
        assert complete(one, "a2", max_tokens=6).choices[0].text == first["a2"]
    finally:
        one.stop()


def _peft_reference(base_dir, artifacts: dict):
    """The base with `artifacts` ({name: path}) attached the plain PEFT way (no stacking)."""
    from training.artifact import load_artifact
    from training.artifact.loading import attach_adapter, load_base

    model = load_base(str(base_dir)).model
    for name, path in artifacts.items():
        model = attach_adapter(model, load_artifact(path), name)
    return model.eval()


def test_batched_multi_lora_matches_peft_mixed_batch(core, tiny_base_dir, service_artifacts):
    import torch

    target = core.registry.base
    assert target.multilora is not None
    reference = _peft_reference(tiny_base_dir, {n: service_artifacts / n for n in ("a1", "a2")})
    slots = [core.registry.acquire(n) for n in ("a1", "a2")]
    try:
        names = [slots[0].slot, None, slots[1].slot, slots[0].slot]
        assert all(s in target.multilora.slots for s in names if s)
        ids = torch.randint(3, 200, (4, 7))
        with core.registry.model_lock, torch.inference_mode():
            ours = target.forward(names, batched_lora=True, input_ids=ids).logits
            bare = target.forward([None] * 4, batched_lora=True, input_ids=ids).logits
    finally:
        for lease in slots:
            lease.release()
    with torch.inference_mode():
        peft = reference(input_ids=ids, adapter_names=["a1", "__base__", "a2", "a1"]).logits
    assert torch.allclose(ours, peft, atol=1e-4)
    assert not torch.allclose(ours[0], bare[0], atol=1e-3) and torch.allclose(ours[1], bare[1], atol=1e-5)


def test_stacked_adapters_leave_peft_small_and_mix_with_peft_only_adapters(tiny_base_dir, service_artifacts,
                                                                          serve_keys, tmp_path):
    """LoRA and DoRA weights live in the stacks only (PEFT keeps an anchor, so loading does not walk
    every loaded adapter's modules); an adapter with a trained head (PEFT's own path) mixes with
    them in one batch; every row equals the plain PEFT model's output."""
    import torch

    many = ServingCore(load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0], max_adapters=12),
                                     ["cache.enabled=false"]))
    many.start()
    try:
        extra = {"d1": make_adapter(tiny_base_dir, tmp_path / "d1", "d1", seed=7, method="dora"),
                 "h1": make_adapter(tiny_base_dir, tmp_path / "h1", "h1", seed=8, method="lora-head")}
        extra.update({f"c{i}": make_adapter(tiny_base_dir, tmp_path / f"c{i}", f"c{i}", seed=20 + i) for i in range(5)})
        for name, path in extra.items():
            run(many.load_adapter(LoadAdapterRequest(name=name, path=str(path)), None))
        base, reg = many.registry.base, many.registry
        stacked = {reg.adapters[n].slot for n in ("d1", "c0", "c4", "a1")}
        assert stacked <= set(base.multilora.slots) and reg.adapters["h1"].slot not in base.multilora.slots
        assert len(base.model.peft_config) <= 3, set(base.model.peft_config)  # anchor + h1 (+ one in flight)
        names = ["c0", "d1", reg.base_name, "h1", "c4", "d1", "a2"]
        single = {n: complete(many, n, max_tokens=8).choices[0].text for n in set(names)}

        async def together():
            return await asyncio.gather(*[many.complete(CompletionRequest(model=n, prompt=PROMPT, temperature=0,
                                                                          max_tokens=8), None) for n in names])

        assert [r.choices[0].text for r in run(together())] == [single[n] for n in names]
        rows = ["c0", "d1", "h1", None]
        reference = _peft_reference(tiny_base_dir, {n: extra[n] for n in rows if n})
        leases = [reg.acquire(n) for n in rows if n]
        try:
            ids = torch.randint(3, 200, (len(rows), 6))
            with reg.model_lock, torch.inference_mode():
                ours = base.forward([lease.slot for lease in leases] + [None], input_ids=ids).logits
        finally:
            for lease in leases:
                lease.release()
        with torch.inference_mode():  # PEFT mixes no DoRA rows: the reference runs one adapter at a time
            expected = []
            for i, name in enumerate(rows):
                with (reference.disable_adapter() if name is None else _active(reference, name)):
                    expected.append(reference(input_ids=ids[i:i + 1]).logits)
        assert torch.allclose(ours, torch.cat(expected), atol=1e-4), (ours - torch.cat(expected)).abs().max()
        for name in list(reg.adapters):  # unload everything: back to the bare base
            run(many.unload_adapter(name, True))
        assert not hasattr(reg.base.model, "peft_config")
        assert complete(many, reg.base_name, max_tokens=8).choices[0].text == single[reg.base_name]
    finally:
        many.stop()


def test_plain_lora_stacks_from_its_file_and_other_adapters_take_peft(tiny_base_dir, service_artifacts, serve_keys,
                                                                       tmp_path, monkeypatch):
    """A plain LoRA adapter whose layers are already hooked is stacked straight from its file (PEFT's module walk,
    most of a hot-load on a 135M base, is skipped): rsLoRA's scaling, another rank and a subset of the layers
    stack exactly. An adapter on layers not hooked yet, or DoRA, goes through PEFT. Each row equals PEFT's own
    output for that adapter."""
    import torch

    from service.engine import registry as registry_module

    fresh = ServingCore(load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0], max_adapters=12),
                                      ["cache.enabled=false"]))
    fresh.start()
    try:
        specs = {"p-rs": {"seed": 31, "r": 4, "lora": {"use_rslora": True}},
                 "p-sub": {"seed": 32, "lora": {"target_modules": ["q_proj"]}},
                 "p-wide": {"seed": 33, "lora": {"target_modules": ["q_proj", "v_proj", "o_proj"]}},
                 "p-dora": {"seed": 34, "method": "dora"}}
        paths = {n: make_adapter(tiny_base_dir, tmp_path / n, n, **kw) for n, kw in specs.items()}
        reg, real, attached = fresh.registry, registry_module.attach_adapter, []
        run(fresh.load_adapter(LoadAdapterRequest(name="a1"), None))  # the anchor PEFT keeps

        def spy(model, artifact, slot, **kwargs):
            attached.append(slot)
            return real(model, artifact, slot, **kwargs)

        import safetensors.torch

        read, load_file = [], safetensors.torch.load_file

        def counted(path, *args, **kwargs):
            read.append(Path(path).parent.name)
            return load_file(path, *args, **kwargs)

        monkeypatch.setattr(registry_module, "attach_adapter", spy)
        monkeypatch.setattr(safetensors.torch, "load_file", counted)
        for name, path in paths.items():
            run(fresh.load_adapter(LoadAdapterRequest(name=name, path=str(path)), None))
        slots = {n: reg.adapters[n].slot for n in paths}
        assert attached == [slots["p-wide"], slots["p-dora"]]
        assert sorted(read) == sorted(paths)  # each adapter's weights read once, whichever path attached it
        assert set(slots.values()) <= set(reg.base.multilora.slots)
        reference = _peft_reference(tiny_base_dir, paths)
        ids = torch.randint(3, 200, (len(paths), 6))
        leases = [reg.acquire(n) for n in paths]
        try:
            with reg.model_lock, torch.inference_mode():
                ours = reg.base.forward([lease.slot for lease in leases], input_ids=ids).logits
        finally:
            for lease in leases:
                lease.release()
        with torch.inference_mode():
            for i, name in enumerate(paths):
                with _active(reference, name):
                    expected = reference(input_ids=ids[i:i + 1]).logits
                assert torch.allclose(ours[i:i + 1], expected, atol=1e-4), (name, (ours[i:i + 1] - expected).abs().max())
    finally:
        fresh.stop()


def _active(model, name):
    from contextlib import contextmanager

    @contextmanager
    def scope():
        model.set_adapter(name)
        yield

    return scope()


def test_layer_stack_reuses_rows_and_grows():
    import torch

    from service.engine.multilora import _LayerStack

    stack = _LayerStack()
    pairs = {f"s{i}": (torch.randn(2 if i < 5 else 4, 3), torch.randn(5, 2 if i < 5 else 4)) for i in range(7)}
    for slot, (a, b) in pairs.items():
        stack.put(slot, a, b)
    assert stack.a.shape[0] >= 8 and stack.a.shape[1] == 4 and 0 not in stack.index.values()
    for slot, (a, b) in pairs.items():  # smaller ranks are zero-padded
        row, rank = stack.index[slot], a.shape[0]
        assert torch.equal(stack.a[row, :rank], a) and torch.equal(stack.b[row, :, :rank], b)
        assert not stack.a[row, rank:].any() and not stack.b[row, :, rank:].any()
    row = stack.index["s1"]
    stack.drop("s1")
    assert not stack.a[row].any() and "s1" not in stack.index
    stack.put("s9", *pairs["s0"])
    assert stack.index["s9"] == row and not stack.a[0].any() and not stack.b[0].any()  # row 0: the bare base


def test_mixed_rows_use_only_their_own_adapter_and_a_reused_stack_row_is_not_served_stale():
    """A mixed batch multiplies every row by the concatenation of the batch's adapters and masks the other
    adapters' rank columns: each row must equal its own adapter's W x + s B A x (a bare row: W x), and the
    concatenation kept across decode steps must follow a row reused by another adapter."""
    import torch

    from service.engine.multilora import MultiLora, _LayerStack

    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5, bias=False)
    ml, stack = MultiLora(layer), _LayerStack()
    ml.layers[id(layer)] = (layer, stack)  # what add() does for each of a PEFT model's LoRA layers
    layer.register_forward_hook(ml._hook)
    pairs = {s: (torch.randn(2, 6), torch.randn(5, 2)) for s in ("p", "q", "r")}
    for slot in ("p", "q"):
        stack.put(slot, *pairs[slot])

    def expected(slot, x):
        return layer.weight @ x if slot is None else layer.weight @ x + pairs[slot][1] @ (pairs[slot][0] @ x)

    x = torch.randn(4, 3, 6)  # rows x tokens x features: a prefill; decode steps are the 1-token case
    for rows in (["p", None, "q", "p"], ["q", "q", "q", "q"], [None, "p", None, None]):
        with ml.rows(rows):
            out = layer(x)
        for i, slot in enumerate(rows):
            assert torch.allclose(out[i], torch.stack([expected(slot, t) for t in x[i]]), atol=1e-5)
    with ml.rows(["p", "q"]):
        layer(x[:2])  # keeps the concatenation of p and q
    row = stack.index["q"]
    stack.drop("q")
    stack.put("r", *pairs["r"])
    assert stack.index["r"] == row  # same stack row, same positions as the kept concatenation
    with ml.rows(["p", "r"]):
        out = layer(x[:2])
    assert torch.allclose(out[1], torch.stack([expected("r", t) for t in x[1]]), atol=1e-5)


def test_an_adapter_of_another_peft_type_is_refused_clearly(core, tiny_base_dir, tmp_path):
    import torch
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.artifact import ArtifactWriter, fingerprint_model_dir

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)),
                           IA3Config(target_modules=["q_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]))
    manifest = {"name": "ia", "kind": "adapter", "task": "causal-lm", "method": "ia3", "version": "1",
                "base": {"id": "tiny-llama", "sha256": fingerprint_model_dir(tiny_base_dir)}}
    with ArtifactWriter(tmp_path / "ia", manifest) as writer:
        model.save_pretrained(str(writer.path), safe_serialization=True)
        (writer.path / "README.md").unlink(missing_ok=True)
    before = set(core.registry.adapters)
    with pytest.raises(ArtifactInvalid, match="IA3 adapter.*LORA"):
        run(core.load_adapter(LoadAdapterRequest(name="ia", path=str(tmp_path / "ia"))))
    assert set(core.registry.adapters) == before and complete(core, "a1", max_tokens=2).choices


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_engine_mask_matches_transformers_own(tiny_base_dir, attention):
    """The engine builds the 4D causal + padding mask itself (transformers' builder cost a third of a
    step); logits must equal those from transformers' own mask, prefill and cached decode, left-padded."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from service.engine.decode import full_attention_mask

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir), attn_implementation=attention).eval()
    ids = torch.tensor([[0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26], [0, 31, 32, 33, 34, 35]])
    attn = (torch.arange(6)[None, :] >= torch.tensor([[3], [0], [1]])).long()
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    outputs = []
    for mask_of in (lambda a, q: a, lambda a, q: full_attention_mask(a, q, model)):
        cache = DynamicCache()
        with torch.inference_mode():
            first = model(input_ids=ids, attention_mask=mask_of(attn, 6), position_ids=positions,
                          past_key_values=cache, use_cache=True).logits
            step_attn = torch.cat([attn, torch.ones(3, 1, dtype=torch.long)], dim=1)
            second = model(input_ids=torch.tensor([[7], [8], [9]]), attention_mask=mask_of(step_attn, 1),
                           position_ids=positions[:, -1:] + 1, past_key_values=cache, use_cache=True).logits
        outputs.append((first, second))
    (ref_first, ref_second), (first, second) = outputs
    real = attn.bool()
    assert torch.allclose(ref_first[real], first[real], atol=1e-5)
    assert torch.allclose(ref_second, second, atol=1e-5)
    assert full_attention_mask(attn, 1, object()) is attn  # non-torch models (ONNX Runtime) keep the 2D mask


def test_errors_after_resolution_name_the_resolved_model(core):
    """Transports label metrics only with resolved ids; an error raised after resolution carries it."""
    with pytest.raises(InvalidRequest) as wrong_task:
        complete(core, "clf")
    assert wrong_task.value.model_id == "clf"
    with pytest.raises(InvalidRequest) as too_long:
        complete(core, "base", prompt="word " * 2000)
    assert too_long.value.model_id == core.registry.base_name
    with pytest.raises(NotFound) as unknown:
        complete(core, "ghost-model")
    assert getattr(unknown.value, "model_id", None) is None


def test_not_found_hints_name_only_models_the_key_may_use(core):
    from service.auth import Principal

    key = Principal("k-hint", "tenant", ("infer",), ("a1", "ghost*"))
    with pytest.raises(NotFound) as info:
        run(core.complete(CompletionRequest(model="ghost-1", prompt="x", max_tokens=1), key))
    assert "a1" in info.value.hint
    assert not any(name in info.value.hint for name in ("a2", "a3", "clf", core.registry.base_name))


def test_the_response_cache_is_scoped_per_key(core):
    from service.auth import Principal

    core.engine.cache.clear()
    request = CompletionRequest(model="a1", prompt="scoped cache", max_tokens=4, temperature=0)
    first, second = Principal("k-one", "one"), Principal("k-two", "two")
    hits = core.engine.cache.stats()["hits"]
    run(core.complete(request, first))
    run(core.complete(request, first))
    assert core.engine.cache.stats()["hits"] == hits + 1
    run(core.complete(request, second))  # another key's identical prompt is not answered from the cache
    assert core.engine.cache.stats()["hits"] == hits + 1 and core.engine.cache.stats()["entries"] == 2


def test_failed_loads_show_no_server_paths(core, tmp_path):
    from service.auth import Principal

    broken = tmp_path / "a2-broken"
    shutil.copytree(core.registry.catalog.adapters["a2"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"tampered")
    core.registry.catalog.adapters["broken"] = broken  # a catalog adapter whose artifact went bad
    try:
        with pytest.raises(ArtifactInvalid) as inference:
            run(core.complete(CompletionRequest(model="broken", prompt="x", max_tokens=1), Principal("k-inf", "inf")))
        assert "/" not in str(inference.value) and "broken" in inference.value.message
        with pytest.raises(ArtifactInvalid, match="checksum") as admin:
            run(core.load_adapter(LoadAdapterRequest(name="a2", path=str(broken))))
        assert str(tmp_path) not in str(admin.value) and "a2-broken" in str(admin.value)
    finally:
        core.registry.catalog.adapters.pop("broken", None)


def test_the_configured_adapter_name_pattern_is_enforced(core, monkeypatch):
    monkeypatch.setattr(core.settings.security, "adapter_name_pattern", r"^team-[a-z0-9-]+$")
    with pytest.raises(InvalidRequest, match="pattern") as info:
        run(core.load_adapter(LoadAdapterRequest(name="a1")))
    assert info.value.param == "name"


@pytest.mark.parametrize("method", ["lora", "dora"])  # stacked from its file / through PEFT's attach
def test_a_failure_while_stacking_changes_nothing(core, tiny_base_dir, tmp_path, monkeypatch, method):
    from service.engine import multilora

    reg = core.registry
    before = complete(core, "a1", max_tokens=8).choices[0].text
    peft_slots = set(reg.base.model.peft_config)
    stacked = {id(stack): set(stack.index) for _, stack in reg.base.multilora.layers.values()}
    real_put, calls = multilora._LayerStack.put, []

    def failing_put(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory while stacking")
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(multilora._LayerStack, "put", failing_put)
    extra = make_adapter(tiny_base_dir, tmp_path / "a5", "a5", seed=5, method=method)
    with pytest.raises(RuntimeError, match="stacking"):
        run(core.load_adapter(LoadAdapterRequest(name="a5", path=str(extra))))
    assert "a5" not in reg.adapters and set(reg.base.model.peft_config) == peft_slots
    assert {id(stack): set(stack.index) for _, stack in reg.base.multilora.layers.values()} == stacked
    core.engine.cache.clear()
    assert complete(core, "a1", max_tokens=8).choices[0].text == before
    monkeypatch.setattr(multilora._LayerStack, "put", real_put)
    run(core.load_adapter(LoadAdapterRequest(name="a5", path=str(extra))))
    assert complete(core, "a5", max_tokens=8).choices[0].text != before
    run(core.unload_adapter("a5"))
