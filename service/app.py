"""The Ray Serve application: an Engine deployment holding the `ServingCore` (model, adapters,
batching thread, cache) and a CPU-free Ingress deployment serving the FastAPI app, which calls
the engine through a DeploymentHandle.

    serve run service/configs/serve.yaml            # or: tuneserve serve service/configs/serve.yaml
    import path: service.app:app_builder            # args = ServiceSettings fields

Replies cross the handle as envelopes (`{"ok": value}` / `{"error": to_wire(exc)}`) so user
errors keep their class, message and hint; the Ingress re-raises them for the error table.

Only the Ingress may call the Engine: `app_builder` binds one secret into both deployments
(`ingress_secret()`), every engine call carries it, and a call without it (say, from a Ray job
that fetched the Engine handle and passes `principal=None`, which skips authorization) is
refused with PermissionDenied before the core sees it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from service.auth import Authenticator, Principal
from service.backend import STREAM_CALLS, UNARY_CALLS
from service.embedding_schemas import EmbeddingRequest, EmbeddingResponse
from service.errors import from_wire, to_wire
from service.feedback_schemas import FeedbackRequest, FeedbackResponse
from service.rollout_schemas import RolloutReply, RolloutRequest
from service.schemas import (
    AdapterInfo, AdapterList, ChatCompletionRequest, ChatCompletionResponse, ClassifyRequest, ClassifyResponse,
    CompletionRequest, CompletionResponse, Health, LoadAdapterRequest, ModelList,
)
from service.settings import ENGINE_QUEUE_CAPACITY, ServiceSettings, load_settings
from training.artifact.errors import Overloaded, PermissionDenied, Unavailable

log = logging.getLogger("tuneserve.service.app")


@serve.deployment(name="Engine", max_ongoing_requests=ENGINE_QUEUE_CAPACITY, ray_actor_options={"num_cpus": 2})
class EngineDeployment:
    """Holds the ServingCore; every public coroutine of the core is reachable through `call`/`stream`."""

    def __init__(self, settings: dict[str, Any], ingress_secret: str) -> None:
        from service.core import ServingCore
        from service.fleet import ray_coordinator

        if not ingress_secret:
            raise ValueError("the Engine needs the Ingress' secret (bind it as app_builder does)")
        self.ingress_secret = ingress_secret
        config = ServiceSettings.model_validate(settings)
        replica = serve_replica_id()
        # every Engine replica follows one admin-set adapter state through the cluster's coordinator actor
        # (outside a Serve replica, e.g. a unit test of this class, the core keeps its in-process one)
        coordinator = ray_coordinator(config.fleet, config.artifacts_dir) if replica else None
        self.core = ServingCore(config, coordinator=coordinator, replica_id=replica)
        self.core.start()

    def _refused(self, secret: str) -> dict[str, Any] | None:
        """The error envelope for a caller that is not this application's Ingress, else None."""
        if isinstance(secret, str) and hmac.compare_digest(secret.encode(), self.ingress_secret.encode()):
            return None
        return {"error": to_wire(PermissionDenied(
            "the Engine deployment answers only its own Ingress",
            "call the service through its HTTP or gRPC API with an API key"))}

    async def call(self, secret: str, method: str, *args: Any) -> dict[str, Any]:
        if refused := self._refused(secret):
            return refused
        if method not in UNARY_CALLS:
            return {"error": {"class": "InvalidRequest", "message": f"unknown engine call {method!r}", "hint": None}}
        try:
            return {"ok": await getattr(self.core, method)(*args)}
        except Exception as exc:  # noqa: BLE001 - every error crosses the handle as data
            return {"error": to_wire(exc)}

    async def stream(self, secret: str, method: str, *args: Any) -> AsyncIterator[dict[str, Any]]:
        if refused := self._refused(secret):
            yield refused
            return
        if method not in STREAM_CALLS:
            yield {"error": {"class": "InvalidRequest", "message": f"unknown engine stream {method!r}", "hint": None}}
            return
        try:
            async for chunk in getattr(self.core, method)(*args):
                yield {"ok": chunk}
        except Exception as exc:  # noqa: BLE001
            yield {"error": to_wire(exc)}

    def check_health(self) -> None:
        if not self.core.engine.scheduler.alive:
            raise RuntimeError("engine thread is not running")
        if self.core.engine.encoder is not None and not self.core.engine.encoder.alive:
            raise RuntimeError("embedding thread is not running")

    def __del__(self) -> None:
        try:
            self.core.stop()
        except Exception:  # noqa: BLE001
            pass


def serve_replica_id() -> str | None:
    """This Serve replica's id, or None when the caller is not inside a Serve replica."""
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        return None


@contextmanager
def engine_queue() -> Iterator[None]:
    """The Engine's full queue (its max_queued_requests) is this request's 503 / RESOURCE_EXHAUSTED; an
    Engine replica that died while serving it (killed, node lost) is a 503 / UNAVAILABLE to retry."""
    try:
        yield
    except BackPressureError as exc:
        raise Overloaded(f"the engine is busy: {exc.message}", "retry in a moment, or add Engine replicas") from None
    except RayActorError:
        raise Unavailable("the engine replica serving this request stopped",
                          "retry: Serve routes it to a live replica and replaces the lost one") from None


DEAD_REPLICA_RETRIES = 2
ADMIN_WRITES = frozenset({"load_adapter", "unload_adapter", "pin_adapter", "rollout"})


class RemoteCore:
    """The `ServingBackend` over a DeploymentHandle (what the transports call in Ray); every call
    carries `ingress_secret`, without which the Engine refuses it."""

    def __init__(self, handle: DeploymentHandle, ingress_secret: str = "") -> None:
        self.handle = handle
        self.ingress_secret = ingress_secret

    @staticmethod
    def _attempts(method: str) -> int:
        # a replica that died before answering lost nothing the client saw, and Serve's router drops it at
        # once, so a retry reaches a live one. Admin writes are not retried (the dead replica may have applied one).
        return 1 if method in ADMIN_WRITES else 1 + DEAD_REPLICA_RETRIES

    async def _call(self, method: str, *args: Any) -> Any:
        attempts = self._attempts(method)
        with engine_queue():
            for attempt in range(attempts):
                try:
                    reply = await self.handle.call.remote(self.ingress_secret, method, *args)
                    break
                except RayActorError:
                    if attempt == attempts - 1:
                        raise
        if "error" in reply:
            raise from_wire(reply["error"])
        return reply["ok"]

    async def _stream(self, method: str, *args: Any) -> AsyncIterator[dict]:
        attempts = self._attempts(method)
        with engine_queue():
            for attempt in range(attempts):
                sent = False
                gen = self.handle.options(stream=True).stream.remote(self.ingress_secret, method, *args)
                try:
                    async for reply in gen:
                        if "error" in reply:
                            raise from_wire(reply["error"])
                        sent = True
                        yield reply["ok"]
                    return
                except RayActorError:
                    if sent or attempt == attempts - 1:  # half a stream cannot be replayed
                        raise
                finally:
                    gen.cancel()  # client gone or done: stop the generation on the engine

    async def complete(self, request: CompletionRequest, principal: Principal | None) -> CompletionResponse:
        return await self._call("complete", request, principal)

    async def chat(self, request: ChatCompletionRequest, principal: Principal | None) -> ChatCompletionResponse:
        return await self._call("chat", request, principal)

    def stream_complete(self, request: CompletionRequest, principal: Principal | None) -> AsyncIterator[dict]:
        return self._stream("stream_complete", request, principal)

    def stream_chat(self, request: ChatCompletionRequest, principal: Principal | None) -> AsyncIterator[dict]:
        return self._stream("stream_chat", request, principal)

    async def classify(self, request: ClassifyRequest, principal: Principal | None) -> ClassifyResponse:
        return await self._call("classify", request, principal)

    async def list_models(self, principal: Principal | None) -> ModelList:
        return await self._call("list_models", principal)

    async def embed(self, request: EmbeddingRequest, principal: Principal | None) -> EmbeddingResponse:
        return await self._call("embed", request, principal)

    async def load_adapter(self, request: LoadAdapterRequest, principal: Principal | None = None) -> AdapterInfo:
        return await self._call("load_adapter", request, principal)

    async def unload_adapter(self, name: str, force: bool = False, principal: Principal | None = None) -> dict[str, Any]:
        return await self._call("unload_adapter", name, force, principal)

    async def pin_adapter(self, name: str, pinned: bool, principal: Principal | None = None) -> AdapterInfo:
        return await self._call("pin_adapter", name, pinned, principal)

    async def list_adapters(self, principal: Principal | None = None) -> AdapterList:
        return await self._call("list_adapters", principal)

    async def feedback(self, request: FeedbackRequest, principal: Principal | None) -> FeedbackResponse:
        return await self._call("feedback", request, principal)  # any replica: served records are in the shared store
    async def rollout(self, request: RolloutRequest, principal: Principal | None = None) -> RolloutReply:
        return await self._call("rollout", request, principal)

    async def health(self) -> Health:
        return await self._call("health")


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    async def __init__(self, engine: DeploymentHandle, settings: dict[str, Any], ingress_secret: str) -> None:
        from service.direct_ingress import allow_port_rebind
        from service.grpc.server import start_grpc_server
        from service.security import SecurityGuard

        allow_port_rebind()  # before Serve binds the public port, which it does after this constructor
        self.settings = ServiceSettings.model_validate(settings)
        self.backend = RemoteCore(engine, ingress_secret)
        self.auth = Authenticator.from_settings(self.settings)
        # one guard per replica: both transports share its blocking state, audit log and rate-limit store
        self.guard = SecurityGuard.from_settings(self.settings, self.auth)
        # gRPC is hosted here, beside the HTTP app, over the same serving backend (see service/grpc/server.py).
        self.grpc = await start_grpc_server(self.backend, self.auth, self.settings, guard=self.guard)

    def __serve_build_asgi_app__(self):
        from service.http.app import create_app
        from service.ports import InstanceHeader

        app = create_app(self.backend, self.auth, self.settings, guard=self.guard)
        app.add_middleware(InstanceHeader)  # /ready names this server, so its launcher knows it owns the port
        return app


def ingress_secret() -> str:
    """The secret the Ingress shows the Engine: derived from the Ray cluster's auth token
    (RAY_AUTH_TOKEN, else the file at RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), so every build of
    the application in one cluster agrees (a rolling Serve update mixes old Ingress replicas with
    new Engine ones); random per build where Ray runs without a token. Never in the serve config."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token and path.is_file():
        token = path.read_text().strip()
    if not token:
        return secrets.token_urlsafe(32)
    return hmac.new(token.encode(), b"tuneserve: engine calls from the ingress", hashlib.sha256).hexdigest()


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Ray Serve import-path target: validate the args into ServiceSettings and bind the graph."""
    settings = load_settings(args).model_dump(mode="json")
    secret = ingress_secret()
    engine = EngineDeployment
    if engine_wants_gpu(settings["device"]):  # Ray hides GPUs from an actor that asked for none
        engine = engine.options(ray_actor_options={**(engine.ray_actor_options or {}), "num_gpus": 1})
    return Ingress.bind(engine.bind(settings, secret), settings, secret)


def engine_wants_gpu(device: str) -> bool:
    """Whether an Engine replica asks Ray for a GPU: cuda always, auto when the cluster has one."""
    if device.startswith("cuda"):
        return True
    return device == "auto" and ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
