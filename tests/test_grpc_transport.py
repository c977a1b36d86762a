"""The gRPC transport against a real grpc.aio server in-process over a ServingCore on the tiny base.

Covers every RPC, streaming and client cancellation, auth from metadata, status codes from the
error table, grpc.health.v1 and reflection, through the real `service.client.TuneserveClient`.

    pytest tests/test_grpc_transport.py
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.auth import Authenticator
from service.client import TuneserveClient
from service.core import ServingCore
from service.grpc.server import GrpcServer
from service.schemas import ChatCompletionRequest, CompletionRequest
from service.settings import load_settings
from tests.grpc_support import LoopThread
from tests.service_fixtures import make_adapter, service_args
from training.artifact.errors import Conflict, InvalidRequest, NotFound, PermissionDenied, Unauthenticated

PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def served(tiny_base_dir, service_artifacts, serve_keys):
    core = ServingCore(load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0])))
    core.start()
    loop = LoopThread()

    async def start() -> GrpcServer:
        server = GrpcServer(core, Authenticator.from_settings(core.settings), "127.0.0.1", 0, health_interval_s=0.2)
        await server.start()
        return server

    server = loop.run(start())
    target = f"127.0.0.1:{server.port}"
    clients = {name: TuneserveClient(target, key) for name, key in serve_keys[1].items()}
    yield SimpleNamespace(core=core, loop=loop, target=target, keys=serve_keys[1], base=core.registry.base_name, **clients)
    for client in clients.values():
        client.close()
    loop.run(server.stop(0))
    loop.close()
    core.stop()


def direct(served, request):
    run = served.core.chat if isinstance(request, ChatCompletionRequest) else served.core.complete
    return served.loop.run(run(request, None))


def test_generate_prompt_matches_the_core(served):
    reply = served.infer.generate(PROMPT, model="a1", max_tokens=10, temperature=0)
    expected = direct(served, CompletionRequest(model="a1", prompt=PROMPT, max_tokens=10, temperature=0))
    assert reply.model == "a1" and reply.id.startswith("cmpl-") and reply.created > 0
    assert [c.text for c in reply.choices] == [c.text for c in expected.choices]
    assert reply.choices[0].finish_reason == expected.choices[0].finish_reason
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        expected.usage.prompt_tokens, expected.usage.completion_tokens)


def test_generate_chat_n_stop_and_logprobs(served):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who goes there?"}]
    reply = served.infer.generate(messages=messages, model=served.base, max_tokens=5, temperature=0.9, seed=3,
                                  n=2, stop=["\n\n"], logprobs=2)
    expected = direct(served, ChatCompletionRequest(model=served.base, messages=messages, max_tokens=5, temperature=0.9,
                                                    seed=3, n=2, stop=["\n\n"], logprobs=True, top_logprobs=2))
    assert reply.id.startswith("chatcmpl-") and len(reply.choices) == 2
    assert [c.text for c in reply.choices] == [c.message.content for c in expected.choices]
    for choice, want in zip(reply.choices, expected.choices):
        tokens = choice.logprobs.tokens
        assert [t.token for t in tokens] == [t.token for t in want.logprobs.content]
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in tokens)
    assert reply.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in reply.choices)


def test_stream_concatenates_to_the_unary_reply_and_ends_with_usage(served):
    unary = served.infer.generate(PROMPT, model="a2", max_tokens=12, temperature=0)
    chunks = list(served.infer.generate_stream(PROMPT, model="a2", max_tokens=12, temperature=0))
    text = "".join(c.text for chunk in chunks for c in chunk.choices)
    assert text == unary.choices[0].text and len(chunks) > 2
    finishing = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert finishing == [unary.choices[0].finish_reason]
    assert chunks[-1].HasField("usage") and not any(c.HasField("usage") for c in chunks[:-1])
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens


def test_client_cancelling_a_stream_cancels_generation(served, monkeypatch):
    engine, streams = served.core.engine, []
    real_generate = engine.generate

    def capture(*args, **kwargs):
        streams.append(real_generate(*args, **kwargs))
        return streams[-1]

    monkeypatch.setattr(engine, "generate", capture)
    max_tokens = 200
    for _ in served.infer.generate_stream(PROMPT, model="a1", max_tokens=max_tokens, temperature=1.0, seed=7):
        break  # leaving the iterator cancels the call
    deadline = time.time() + 5
    while not (streams and streams[0].cancelled.is_set() and engine.scheduler.active_rows == 0) and time.time() < deadline:
        time.sleep(0.02)
    assert streams and streams[0].cancelled.is_set(), "the engine stream was not cancelled"
    assert streams[0].remaining == 1, "the choice had finished: generation was not cut short"
    assert engine.scheduler.active_rows == 0


def test_classify_list_models_and_adapters(served):
    reply = served.infer.classify(["a fine day", "dreadful"], model="clf", top_k=1)
    assert [r.index for r in reply.results] == [0, 1] and reply.usage.prompt_tokens > 0
    full = served.infer.classify("a fine day", model="clf")
    scores = full.results[0].scores
    assert {s.label for s in scores} == {"neg", "pos"} and abs(sum(s.score for s in scores) - 1) < 1e-4
    assert reply.results[0].label == full.results[0].label == scores[0].label and len(reply.results[0].scores) == 1
    kinds = {m.id: m.kind for m in served.infer.list_models()}
    assert kinds[served.base] == "base" and kinds["clf"] == "model"
    assert {m.id for m in served.__dict__["only-a1"].list_models()} == {"a1"}


def test_load_generate_unload_adapter(served, tiny_base_dir, tmp_path):
    path = make_adapter(tiny_base_dir, tmp_path / "g1", "g1", seed=11)
    info = served.admin.load_adapter("g1", str(path), pin=True)
    assert (info.name, info.pinned, info.method, info.version) == ("g1", True, "lora", "1")
    assert "g1" in {a.name for a in served.admin.list_adapters()}
    assert served.infer.generate(PROMPT, model="g1", max_tokens=4, temperature=0).choices[0].text
    with pytest.raises(Conflict) as pinned:
        served.admin.unload_adapter("g1")
    assert pinned.value.code == grpc.StatusCode.FAILED_PRECONDITION and pinned.value.hint
    assert served.admin.unload_adapter("g1", force=True).unloaded
    assert "g1" not in {a.name for a in served.admin.list_adapters()}
    with pytest.raises(NotFound):
        served.admin.unload_adapter("g1")


@pytest.mark.parametrize("call, error, code", [
    (lambda s: TuneserveClient(s.target).generate(PROMPT, model="a1"), Unauthenticated, "UNAUTHENTICATED"),
    (lambda s: TuneserveClient(s.target, "sk-wrong").list_models(), Unauthenticated, "UNAUTHENTICATED"),
    (lambda s: s.infer.load_adapter("x", "/nowhere"), PermissionDenied, "PERMISSION_DENIED"),
    (lambda s: s.__dict__["only-a1"].generate(PROMPT, model="a2"), PermissionDenied, "PERMISSION_DENIED"),
    (lambda s: s.infer.generate(PROMPT, model="no-such-model"), NotFound, "NOT_FOUND"),
    (lambda s: s.infer.generate(PROMPT, model="a1", temperature=5.0), InvalidRequest, "INVALID_ARGUMENT"),
    (lambda s: s.infer.generate(PROMPT, model="a1", max_tokens=100000), InvalidRequest, "INVALID_ARGUMENT"),
    (lambda s: s.infer.generate(PROMPT, model=""), InvalidRequest, "INVALID_ARGUMENT"),
    (lambda s: s.infer.generate(PROMPT, model="clf"), InvalidRequest, "INVALID_ARGUMENT"),
    (lambda s: list(s.infer.generate_stream(PROMPT, model="nope")), NotFound, "NOT_FOUND"),
])
def test_errors_map_to_status_codes_with_message_and_hint(served, call, error, code):
    with pytest.raises(error) as caught:
        call(served)
    assert caught.value.code.name == code
    assert caught.value.message and caught.value.hint, "the client should see what was wrong and what to do"


def test_empty_classify_is_invalid_argument(served):
    with pytest.raises(InvalidRequest) as caught:  # the core gives this error no hint yet (reported to serve)
        served.infer.classify([], model="clf")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "got 0" in caught.value.message


def test_raw_status_details_and_x_api_key(served):
    with grpc.insecure_channel(served.target) as channel:
        from service.grpc.gen.tuneserve.v1 import inference_pb2, inference_pb2_grpc

        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(inference_pb2.GenerateRequest(model="ghost", prompt="hi"), metadata=(("x-api-key", served.keys["infer"]),))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "ghost" in caught.value.details()
        reply = stub.ListModels(inference_pb2.ListModelsRequest(), metadata=(("x-api-key", served.keys["infer"]),))
        assert reply.models


def test_health_serving_and_reflection_lists_services(served):
    assert served.infer.health() == "SERVING"
    assert served.infer.health("tuneserve.v1.Inference") == "SERVING"
    with grpc.insecure_channel(served.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        key = (("x-api-key", served.keys["metrics"]),)  # reflection needs any valid key, like /openapi.json
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=key)
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert {"tuneserve.v1.Inference", "tuneserve.v1.Admin", "grpc.health.v1.Health"} <= names
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="tuneserve.v1.Admin")]), metadata=key)
        assert any(r.file_descriptor_response.file_descriptor_proto for r in replies)
