"""The request surface of issue 18 through the official `openai` client (its httpx client is the
TestClient over the REST app and a real ServingCore on the tiny base) and through gRPC stubs over
the same core: token-id prompts, echo (with prompt logprobs), ignore_eos / min_tokens,
stop_token_ids, include_stop_str_in_output, stream_options without stream, the int64 seed range,
/v1/models lineage fields and /v1/models/{id}, OpenAI's error shape. vLLM's entrypoint tests are
the reference for the behaviour.

    pytest tests/test_openai_surface.py
"""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from service.grpc import translate
from service.grpc.gen.tuneserve.v1 import inference_pb2 as pb
from service.schemas import CompletionRequest
from service.settings import load_settings
from tests.service_fixtures import (  # noqa: F401
    grpc_inference_stub, in_process_server, openai_client, service_args,
)
from training.artifact.errors import InvalidRequest

openai = pytest.importorskip("openai")

PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def served(tiny_base_dir, service_artifacts, serve_keys):
    with in_process_server(load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0])),
                           serve_keys[1]) as http:
        yield http


@pytest.fixture(scope="module")
def oc(served):
    return openai_client(served)


@pytest.fixture(scope="module")
def base(served):
    return served.core.registry.base_name


@pytest.fixture(scope="module")
def tokenizer(served):
    return served.core.registry.base.loaded.tokenizer


@pytest.fixture(scope="module")
def eos_prompt(oc, base):
    """A one-token prompt after which the greedy base ends the sequence at once (finish "stop" at max_tokens 1)."""
    candidates = [[t] for t in range(3, 35)]
    reply = oc.completions.create(model=base, prompt=candidates, max_tokens=1, temperature=0)
    stopped = [candidates[c.index] for c in reply.choices if c.finish_reason == "stop"]
    assert stopped, "no one-token prompt ends at once on the tiny base"
    return stopped[0]


def pieces(tokenizer) -> dict[str, list[int]]:
    """Each token's text (as logprobs name tokens) -> the ids that have it."""
    out: dict[str, list[int]] = {}
    for t in range(len(tokenizer)):
        out.setdefault(tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False), []).append(t)
    return out


def error_body(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def bad_request(call) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return error_body(caught.value)


# ---- prompts as token ids ----------------------------------------------------------------
def test_token_id_prompts_match_text_prompts(oc, base, tokenizer):
    ids = tokenizer(PROMPT)["input_ids"]
    text = oc.completions.create(model=base, prompt=PROMPT, max_tokens=6, temperature=0)
    one = oc.completions.create(model=base, prompt=ids, max_tokens=6, temperature=0)
    assert one.choices[0].text == text.choices[0].text and one.usage.prompt_tokens == len(ids)
    many = oc.completions.create(model=base, prompt=[ids, ids[:3]], max_tokens=6, temperature=0)
    assert [c.index for c in many.choices] == [0, 1] and many.choices[0].text == text.choices[0].text
    assert many.usage.prompt_tokens == len(ids) + 3


def test_token_ids_outside_the_vocabulary_or_empty_are_400(oc, base, tokenizer):
    vocab = len(tokenizer)
    for prompt in ([5, vocab], [[5], [-1]]):
        error = bad_request(lambda: oc.completions.create(model=base, prompt=prompt, max_tokens=2))
        assert error["param"] == "prompt" and str(prompt[-1] if isinstance(prompt[-1], int) else -1) in error["message"]
    assert bad_request(lambda: oc.completions.create(model=base, prompt=[[]], max_tokens=2))["param"].startswith("prompt")
    assert bad_request(lambda: oc.completions.create(model=base, prompt=[1, "a"], max_tokens=2))["param"].startswith("prompt")


# ---- echo -------------------------------------------------------------------------------
def test_echo_without_generation_gives_the_prompt_and_its_logprobs(oc, base, tokenizer):
    reply = oc.completions.create(model=base, prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    choice, ids = reply.choices[0], tokenizer(PROMPT)["input_ids"]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == 0
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v is not None and v <= 0 and math.isfinite(v) for v in lp.token_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[-1] < len(PROMPT)
    assert PROMPT[lp.text_offset[-1]:].strip() == tokenizer.decode([ids[-1]]).strip()  # offsets index the text


def test_echo_prompt_logprobs_agree_with_generated_ones(oc, base, tokenizer):
    """The logprob of prompt token k (from the prefill of the whole prompt) equals the logprob the
    decode path gives the same token generated greedily after tokens [0, k)."""
    ids = tokenizer(PROMPT)["input_ids"][:5]
    step = oc.completions.create(model=base, prompt=ids, max_tokens=1, temperature=0, logprobs=1)
    generated = step.choices[0].logprobs
    greedy = pieces(tokenizer)[generated.tokens[0]]
    echoed = oc.completions.create(model=base, prompt=ids + greedy[:1], max_tokens=0, echo=True, logprobs=1)
    last = echoed.choices[0].logprobs
    assert last.tokens[-1] == generated.tokens[0]
    assert abs(last.token_logprobs[-1] - generated.token_logprobs[0]) < 1e-4
    assert list(last.top_logprobs[-1]) == list(generated.top_logprobs[0])


def test_echo_with_generation_unary_and_stream(oc, base):
    plain = oc.completions.create(model=base, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0)
    echoed = oc.completions.create(model=base, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0, echo=True)
    choice = echoed.choices[0]
    assert choice.text == PROMPT + plain.choices[0].text
    assert len(choice.logprobs.tokens) == echoed.usage.prompt_tokens + echoed.usage.completion_tokens
    generated = plain.usage.completion_tokens  # 4, or fewer when EOS comes first
    assert choice.logprobs.tokens[-generated:] == plain.choices[0].logprobs.tokens
    streamed = oc.completions.create(model=base, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text
    no_logprobs = oc.completions.create(model=base, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert no_logprobs.choices[0].text == choice.text and no_logprobs.choices[0].logprobs is None


def test_max_tokens_zero_without_echo_is_400(oc, base):
    assert bad_request(lambda: oc.completions.create(model=base, prompt=PROMPT, max_tokens=0))["param"] == "max_tokens"


# ---- ignore_eos, min_tokens, stop_token_ids, include_stop_str_in_output ---------------------------
def test_ignore_eos_and_min_tokens_generate_exactly_max_tokens(oc, base, eos_prompt):
    plain = oc.completions.create(model=base, prompt=eos_prompt, max_tokens=8, temperature=0)
    assert plain.usage.completion_tokens == 1 and plain.choices[0].finish_reason == "stop"
    for extra in ({"ignore_eos": True, "min_tokens": 8}, {"ignore_eos": True}, {"min_tokens": 8}):
        reply = oc.completions.create(model=base, prompt=eos_prompt, max_tokens=8, temperature=0, extra_body=extra)
        assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length", extra
    sampled = oc.completions.create(model=base, prompt=eos_prompt, max_tokens=8, temperature=1.0, seed=3, n=4,
                                    extra_body={"ignore_eos": True, "min_tokens": 8})
    assert sampled.usage.completion_tokens == 4 * 8
    chat = oc.chat.completions.create(model=base, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                      temperature=0, extra_body={"ignore_eos": True, "min_tokens": 6})
    assert chat.usage.completion_tokens == 6


def test_token_budget_estimate_counts_token_id_prompts_as_tokens():
    from service.security.guard import estimated_tokens, prompt_texts

    request = CompletionRequest(model="m", prompt=[[1, 2, 3], [4]], max_tokens=5)
    assert estimated_tokens(request) == 3 + 1 + 2 * 5 and prompt_texts(request) == []
    assert prompt_texts(CompletionRequest(model="m", prompt=["a", "b"])) == ["a", "b"]


def test_min_tokens_above_max_tokens_is_400(oc, base):
    error = bad_request(lambda: oc.completions.create(model=base, prompt=PROMPT, max_tokens=4,
                                                      extra_body={"min_tokens": 5}))
    assert error["param"] == "min_tokens"


def test_stop_token_ids_end_generation_and_their_text_is_left_out(oc, served, base, tokenizer):
    ids = tokenizer(PROMPT)["input_ids"]
    greedy = oc.completions.create(model=base, prompt=ids, max_tokens=6, temperature=0, logprobs=0,
                                   extra_body={"ignore_eos": True})
    generated, by_piece = greedy.choices[0].logprobs.tokens, pieces(tokenizer)
    k = next(i for i, p in enumerate(generated) if i >= 1 and len(by_piece[p]) == 1 and p.strip() and generated.index(p) == i)
    stop_id = by_piece[generated[k]][0]
    cut = oc.completions.create(model=base, prompt=ids, max_tokens=6, temperature=0,
                                extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]})
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens == k + 1
    full_text = greedy.choices[0].text
    kept = oc.completions.create(model=base, prompt=ids, max_tokens=6, temperature=0,
                                 extra_body={"ignore_eos": True, "stop_token_ids": [stop_id],
                                             "include_stop_str_in_output": True})
    assert full_text.startswith(kept.choices[0].text) and kept.choices[0].text.startswith(cut.choices[0].text)
    assert len(kept.choices[0].text) > len(cut.choices[0].text)
    waited = oc.completions.create(model=base, prompt=ids, max_tokens=6, temperature=0,
                                   extra_body={"ignore_eos": True, "stop_token_ids": [stop_id], "min_tokens": 6})
    assert waited.usage.completion_tokens == 6  # the stop id is masked until min_tokens
    error = bad_request(lambda: oc.completions.create(model=base, prompt=ids, max_tokens=2,
                                                      extra_body={"stop_token_ids": [len(tokenizer)]}))
    assert error["param"] == "stop_token_ids"


def test_include_stop_str_in_output_keeps_the_stop_string(oc, base):
    full = oc.completions.create(model=base, prompt=PROMPT, max_tokens=16, temperature=0,
                                 extra_body={"ignore_eos": True}).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), full
    cut = full[:full.index(stop)]
    kwargs = dict(model=base, prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop])
    assert oc.completions.create(**kwargs, extra_body={"ignore_eos": True}).choices[0].text == cut
    kept = oc.completions.create(**kwargs, extra_body={"ignore_eos": True, "include_stop_str_in_output": True})
    assert kept.choices[0].text == cut + stop and kept.choices[0].finish_reason == "stop"


def test_options_apply_per_row_in_one_batch(served, base, eos_prompt):
    """Rows with different options decode side by side; each follows its own."""
    async def together():
        requests = [CompletionRequest(model=base, prompt=eos_prompt, max_tokens=6, temperature=0),
                    CompletionRequest(model=base, prompt=eos_prompt, max_tokens=6, temperature=0, ignore_eos=True),
                    CompletionRequest(model=base, prompt=eos_prompt, max_tokens=6, temperature=0, min_tokens=3),
                    CompletionRequest(model=base, prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)]
        return await asyncio.gather(*[served.core.complete(r, None) for r in requests])

    plain, ignoring, minimum, echo = asyncio.run(together())
    assert plain.usage.completion_tokens == 1 and ignoring.usage.completion_tokens == 6
    assert minimum.usage.completion_tokens >= 3 and echo.choices[0].text == PROMPT
    assert echo.usage.completion_tokens == 0


def test_response_cache_keys_include_the_new_options(served, base, eos_prompt):
    cache = served.core.engine.cache
    first = asyncio.run(served.core.complete(CompletionRequest(model=base, prompt=eos_prompt, max_tokens=5,
                                                               temperature=0), None))
    entries = cache.stats()["entries"]
    other = asyncio.run(served.core.complete(CompletionRequest(model=base, prompt=eos_prompt, max_tokens=5,
                                                               temperature=0, ignore_eos=True), None))
    assert cache.stats()["entries"] == entries + 1 and other.usage.completion_tokens != first.usage.completion_tokens


# ---- stream_options, seed ------------------------------------------------------------------
def test_stream_options_without_stream_is_400(oc, base):
    error = bad_request(lambda: oc.completions.create(model=base, prompt=PROMPT, max_tokens=2,
                                                      stream_options={"include_usage": True}))
    assert error["param"] == "stream_options" and error["type"] == "invalid_request_error"
    chat = bad_request(lambda: oc.chat.completions.create(model=base, messages=[{"role": "user", "content": "hi"}],
                                                          max_tokens=2, stream_options={"include_usage": True}))
    assert chat["param"] == "stream_options"


def test_seed_accepts_the_full_int64_range(oc, base):
    for seed in (-(2**63), 2**63 - 1):
        assert oc.completions.create(model=base, prompt=PROMPT, max_tokens=2, seed=seed).choices
    assert bad_request(lambda: oc.completions.create(model=base, prompt=PROMPT, max_tokens=2, seed=2**63))["param"] == "seed"


# ---- models --------------------------------------------------------------------------------
def test_models_carry_lineage_and_context_and_one_can_be_retrieved(oc, served, base):
    cards = {m.id: m for m in oc.models.list()}
    assert cards[base].parent is None and cards[base].root == base
    adapters = [m for m in cards.values() if m.kind == "adapter"]
    assert adapters and all(m.parent == base and m.root == base for m in adapters)
    assert {m.max_model_len for m in cards.values()} == {512}
    one = oc.models.retrieve(adapters[0].id)
    assert one.id == adapters[0].id and one.parent == base and one.max_model_len == 512
    with pytest.raises(openai.NotFoundError) as caught:
        oc.models.retrieve("no-such-model")
    assert error_body(caught.value)["param"] == "model"
    only_a1 = openai.OpenAI(base_url="http://testserver/v1", api_key=served.keys["only-a1"], http_client=served)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        only_a1.models.retrieve(base)
    assert error_body(denied.value)["type"] == "permission_error"


# ---- gRPC ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stub(served):
    with grpc_inference_stub(served.core, served.keys["infer"]) as made:
        yield made


def test_grpc_token_ids_echo_and_options(stub, base, tokenizer, eos_prompt):
    inference, md = stub
    ids = tokenizer(PROMPT)["input_ids"]
    echoed = inference.Generate(pb.GenerateRequest(model=base, prompt_token_ids=pb.TokenIds(ids=ids), max_tokens=0,
                                                   echo=True, logprobs=0), metadata=md)
    tokens = echoed.choices[0].logprobs.tokens
    assert echoed.choices[0].text == tokenizer.decode(ids, skip_special_tokens=True) and len(tokens) == len(ids)
    assert not tokens[0].HasField("logprob") and all(t.HasField("logprob") for t in tokens[1:])
    exact = inference.Generate(pb.GenerateRequest(model=base, prompt_token_ids=pb.TokenIds(ids=eos_prompt), max_tokens=7,
                                                  temperature=0, ignore_eos=True, min_tokens=7), metadata=md)
    assert exact.usage.completion_tokens == 7
    with pytest.raises(grpc.RpcError) as caught:
        inference.Generate(pb.GenerateRequest(model=base, prompt_token_ids=pb.TokenIds(ids=[len(tokenizer)])), metadata=md)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_get_model_and_lineage(stub, base):
    inference, md = stub
    listed = {m.id: m for m in inference.ListModels(pb.ListModelsRequest(), metadata=md).models}
    assert listed[base].parent == "" and listed[base].root == base and listed[base].max_model_len == 512
    adapter = next(m for m in listed.values() if m.kind == "adapter")
    assert adapter.parent == base
    assert inference.GetModel(pb.GetModelRequest(model=adapter.id), metadata=md) == adapter
    with pytest.raises(grpc.RpcError) as caught:
        inference.GetModel(pb.GetModelRequest(model="no-such-model"), metadata=md)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_translate_maps_the_new_fields():
    request = translate.generate_request(pb.GenerateRequest(
        model="m", prompt_token_ids=pb.TokenIds(ids=[1, 2]), echo=True, ignore_eos=True, min_tokens=2,
        stop_token_ids=[7, 8], include_stop_str_in_output=True, max_tokens=0))
    assert (request.prompt, request.echo, request.ignore_eos, request.min_tokens, request.stop_token_ids,
            request.include_stop_str_in_output, request.max_tokens) == ([1, 2], True, True, 2, [7, 8], True, 0)
    unset = translate.generate_request(pb.GenerateRequest(model="m", prompt="x"))
    assert (unset.echo, unset.ignore_eos, unset.min_tokens, unset.stop_token_ids) == (False, False, 0, None)
    with pytest.raises(InvalidRequest) as caught:
        translate.generate_request(pb.GenerateRequest(model="m", echo=True, messages=pb.ChatMessages(
            messages=[pb.ChatMessage(role="user", content="hi")])))
    assert caught.value.param == "echo"
