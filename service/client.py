"""Python client for tuneserve's typed gRPC API (`proto/tuneserve/v1`).

    from service.client import TuneserveClient

    with TuneserveClient("127.0.0.1:9000", api_key="sk-...") as client:
        reply = client.generate("Once upon a time", model="tiny-llama", max_tokens=16)
        print(reply.choices[0].text, reply.usage.total_tokens)
        for chunk in client.generate_stream(messages=[{"role": "user", "content": "hi"}], model="my-adapter"):
            print(chunk.choices[0].text, end="")
        client.load_adapter("support-v2", path="/artifacts/support-v2", pin=True)
        client.rollout("set", "support-bot", stable="support-v2", candidate="support-v3", weight=0.1)

Every failed call raises the `TuneserveError` subclass the server raised (`NotFound`,
`InvalidRequest`, `Unauthenticated`, `RateLimited`, ...), rebuilt from the status code and the
error trailer (see `service.grpc.status`); the gRPC code is on `exc.code`. Results are the
generated protobuf messages (`service.grpc.gen.tuneserve.v1.inference_pb2`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc.gen.tuneserve.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc
from service.grpc.status import error_from_rpc
from training.artifact.errors import InvalidRequest

T = TypeVar("T")
Message = Mapping[str, str] | inference_pb2.ChatMessage
_SAMPLING = ("max_tokens", "temperature", "top_p", "seed", "n", "logprobs")


def build_generate_request(model: str, prompt: str | None = None, messages: Sequence[Message] | None = None,
                           stop: Sequence[str] | str | None = None, **sampling: Any) -> inference_pb2.GenerateRequest:
    """A `GenerateRequest` from keyword arguments; exactly one of prompt / messages."""
    if (prompt is None) == (messages is None):
        raise InvalidRequest("give exactly one of prompt or messages", "prompt='text' or messages=[{'role': ..., 'content': ...}]")
    unknown = set(sampling) - set(_SAMPLING)
    if unknown:
        raise InvalidRequest(f"unknown generation options: {', '.join(sorted(unknown))}", f"use {', '.join(_SAMPLING)}")
    request = inference_pb2.GenerateRequest(model=model, **{k: v for k, v in sampling.items() if v is not None})
    if prompt is not None:
        request.prompt = prompt
    else:
        turns = [m if isinstance(m, inference_pb2.ChatMessage) else inference_pb2.ChatMessage(**m) for m in messages]
        request.messages.CopyFrom(inference_pb2.ChatMessages(messages=turns))
    request.stop.extend([stop] if isinstance(stop, str) else list(stop or ()))
    return request


class TuneserveClient:
    """A blocking client over one channel; use as a context manager or call `close()`."""

    def __init__(self, target: str, api_key: str | None = None, *, tls: bool | grpc.ChannelCredentials = False,
                 timeout: float | None = 120.0, options: Sequence[tuple[str, Any]] = ()) -> None:
        if tls:
            creds = tls if isinstance(tls, grpc.ChannelCredentials) else grpc.ssl_channel_credentials()
            self.channel = grpc.secure_channel(target, creds, options=list(options))
        else:
            self.channel = grpc.insecure_channel(target, options=list(options))
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout
        self.inference = inference_pb2_grpc.InferenceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def generate(self, prompt: str | None = None, *, model: str, messages: Sequence[Message] | None = None,
                 stop: Sequence[str] | str | None = None, **sampling: Any) -> inference_pb2.GenerateResponse:
        """One completion (prompt) or chat reply (messages); sampling: max_tokens, temperature, top_p, seed, n, logprobs."""
        return self._call(self.inference.Generate, build_generate_request(model, prompt, messages, stop, **sampling))

    def generate_stream(self, prompt: str | None = None, *, model: str, messages: Sequence[Message] | None = None,
                        stop: Sequence[str] | str | None = None, **sampling: Any) -> Iterator[inference_pb2.GenerateChunk]:
        """Chunks as they are generated; the last carries `usage`. Stopping early cancels the generation."""
        request = build_generate_request(model, prompt, messages, stop, **sampling)
        call = self.inference.GenerateStream(request, metadata=self.metadata, timeout=self.timeout)
        try:
            yield from call
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        finally:
            call.cancel()

    def classify(self, inputs: Sequence[str] | str, *, model: str, top_k: int | None = None) -> inference_pb2.ClassifyResponse:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        request = inference_pb2.ClassifyRequest(model=model, inputs=texts)
        if top_k is not None:
            request.top_k = top_k
        return self._call(self.inference.Classify, request)

    def list_models(self) -> list[inference_pb2.ModelInfo]:
        return list(self._call(self.inference.ListModels, inference_pb2.ListModelsRequest()).models)

    def load_adapter(self, name: str, path: str | None = None, *, pin: bool = False) -> admin_pb2.AdapterInfo:
        request = admin_pb2.LoadAdapterRequest(name=name, pin=pin)
        if path is not None:
            request.path = str(path)
        return self._call(self.admin.LoadAdapter, request)

    def unload_adapter(self, name: str, *, force: bool = False) -> admin_pb2.UnloadAdapterResponse:
        return self._call(self.admin.UnloadAdapter, admin_pb2.UnloadAdapterRequest(name=name, force=force))

    def list_adapters(self) -> list[admin_pb2.AdapterInfo]:
        return list(self._call(self.admin.ListAdapters, admin_pb2.ListAdaptersRequest()).adapters)

    def rollout(self, action: str, alias: str = "", **fields: Any) -> admin_pb2.RolloutReply:
        """Aliases: rollout("set", "bot", stable="v3", candidate="v4", weight=0.1, shadow=0.2), ("status", "bot"),
        ("promote", "bot", force=False), ("rollback", "bot"), ("delete", "bot"), ("list")."""
        return self._call(self.admin.Rollout, admin_pb2.RolloutRequest(action=action, alias=alias, **fields))

    def health(self, service: str = "") -> str:
        """The standard grpc.health.v1 status name ("SERVING", "NOT_SERVING", ...); needs no key."""
        reply = self._call(self.health_stub.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "TuneserveClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
