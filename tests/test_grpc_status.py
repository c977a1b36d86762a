"""Error table → gRPC status and back, and the transport's handling of unexpected backend failures.

Pure translation tests: a fake backend behind a real grpc.aio server, no model.

    pytest tests/test_grpc_status.py
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from service.client import TuneserveClient
from service.errors import ERROR_TABLE
from service.grpc.gen.tuneserve.v1 import inference_pb2
from service.grpc.server import GrpcServer
from service.grpc.status import RETRY_KEY, api_key_from_metadata, error_from_rpc, status_of
from service.grpc.translate import generate_chunk, generate_request
from service.schemas import ChatCompletionRequest, CompletionRequest, Health
from training.artifact.errors import InvalidRequest, RateLimited, TuneserveError, Unauthenticated


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


@pytest.mark.parametrize("cls", list(ERROR_TABLE))
def test_every_table_class_round_trips_with_its_code(cls):
    exc = cls("thing went wrong: é", "do this instead")
    code, details, trailers = status_of(exc)
    assert code.name == ERROR_TABLE[cls].grpc_code and details == "thing went wrong: é (do this instead)"
    back = error_from_rpc(FakeRpcError(code, details, trailers))
    assert type(back) is cls and (back.message, back.hint, back.code) == (exc.message, exc.hint, code)


def test_without_trailer_the_code_gives_the_most_general_class():
    back = error_from_rpc(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    assert type(back) is InvalidRequest and back.message == "bad"
    assert type(error_from_rpc(FakeRpcError(grpc.StatusCode.INTERNAL, "boom"))) is TuneserveError


def test_rate_limited_carries_retry_after():
    code, _, trailers = status_of(RateLimited("slow down", "wait", retry_after=2.6))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and dict(trailers)[RETRY_KEY] == "3"
    assert error_from_rpc(FakeRpcError(code, "x", trailers)).retry_after == 2.6


def test_unexpected_errors_are_internal_without_leaking_details():
    code, details, trailers = status_of(KeyError("secret internal state"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in details and trailers == ()


@pytest.mark.parametrize("metadata, key", [
    ((("authorization", "Bearer sk-1"),), "sk-1"), ((("Authorization", "bearer  sk-2 "),), "sk-2"),
    ((("x-api-key", "sk-3"),), "sk-3"), ((), None), ((("other", "v"),), None),
])
def test_api_key_from_metadata(metadata, key):
    assert api_key_from_metadata(metadata) == key


def test_malformed_authorization_is_unauthenticated():
    with pytest.raises(Unauthenticated, match="Bearer"):
        api_key_from_metadata((("authorization", "Basic dXNlcg=="),))


def test_request_translation_prompt_vs_messages_and_presence():
    prompt = generate_request(inference_pb2.GenerateRequest(model="m", prompt="hi", temperature=0.0, logprobs=0))
    assert isinstance(prompt, CompletionRequest) and prompt.temperature == 0.0 and prompt.logprobs == 0
    assert prompt.max_tokens is None and prompt.top_p is None and prompt.n == 1
    chat = generate_request(inference_pb2.GenerateRequest(model="m", messages=inference_pb2.ChatMessages(
        messages=[inference_pb2.ChatMessage(role="user", content="yo")]), logprobs=3), stream=True)
    assert isinstance(chat, ChatCompletionRequest) and chat.logprobs and chat.top_logprobs == 3
    assert chat.stream and chat.stream_options.include_usage
    with pytest.raises(InvalidRequest) as caught:
        generate_request(inference_pb2.GenerateRequest(model="m", messages=inference_pb2.ChatMessages(
            messages=[inference_pb2.ChatMessage(role="robot", content="x")])))
    assert caught.value.param.startswith("messages")


def test_chat_role_opener_chunk_is_dropped_and_usage_chunk_kept():
    head = {"id": "c", "model": "m", "created": 1}
    assert generate_chunk({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}) is None
    last = generate_chunk({**head, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}})
    assert last.usage.total_tokens == 5 and not last.choices


class BrokenBackend:
    """Raises an unexpected error from generation and counts stream closes."""

    closed = 0

    async def complete(self, request, principal):
        raise RuntimeError("database password is hunter2")

    async def stream_complete(self, request, principal):
        try:
            yield {"id": "x", "model": request.model, "created": 1,
                   "choices": [{"index": 0, "text": "a", "finish_reason": None}]}
            raise RuntimeError("mid-stream failure")
        finally:
            BrokenBackend.closed += 1

    async def health(self):
        return Health(status="starting")


class OpenAuth:
    @staticmethod
    def authenticate(token):
        if token != "k":
            raise Unauthenticated("invalid API key", "use k")
        return SimpleNamespace(key_id="k1")

    @staticmethod
    def authorize(principal, scope, adapter=None):
        return None


def test_server_maps_unexpected_failures_and_reports_not_serving():
    async def scenario():
        server = GrpcServer(BrokenBackend(), OpenAuth(), "127.0.0.1", 0)
        port = await server.start()
        try:
            def calls():
                with TuneserveClient(f"127.0.0.1:{port}", "k") as client:
                    with pytest.raises(TuneserveError) as unary:
                        client.generate("hi", model="m")
                    got = []
                    with pytest.raises(TuneserveError) as streamed:
                        for chunk in client.generate_stream("hi", model="m"):
                            got.append(chunk.choices[0].text)
                    return unary.value, streamed.value, got, client.health()

            return await asyncio.to_thread(calls)
        finally:
            await server.stop(0)

    unary, streamed, got, health = asyncio.run(scenario())
    assert unary.code == grpc.StatusCode.INTERNAL and "hunter2" not in str(unary)
    assert streamed.code == grpc.StatusCode.INTERNAL and got == ["a"] and BrokenBackend.closed == 1
    assert health == "NOT_SERVING"
