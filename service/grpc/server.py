"""The gRPC transport: a grpc.aio server that translates each RPC into one serving-core call.

    server = GrpcServer(backend, Authenticator.from_settings(settings), host="127.0.0.1", port=9000)
    port = await server.start()        # inside a running event loop; port 0 picks a free port
    ...
    await server.stop()
    # or from settings (host, grpc_port, limits.max_body_bytes / grpc_concurrent_rpcs / grpc_health_watches):
    server = await start_grpc_server(backend, auth, settings)

`backend` is a `ServingBackend` (service/backend.py): the `ServingCore`, or the Ray handle proxy
the REST app uses. Services: `tuneserve.v1.Inference`, `tuneserve.v1.Admin`, standard
`grpc.health.v1.Health` (SERVING when the backend reports "ok", polled) and server reflection
(any valid key, like `/openapi.json`, unless `security.public_docs`).
The API key comes from metadata `authorization: Bearer <key>` or `x-api-key: <key>`; errors
become the status code of `service/errors.py`'s table with the message + hint as details.
Cancelling a call (client gone, `GenerateStream` left early) closes the backend stream, which
stops the generation. Overload is refused, not queued: at most `limits.grpc_concurrent_rpcs` calls
run at once and `limits.grpc_health_watches` Health.Watch streams stay open; more get RESOURCE_EXHAUSTED.
Each call records `metrics.request_finished(route, model, "grpc", code, s)`
with `code` the HTTP-equivalent status from the same table (200 ok, 499 cancelled), so
dashboards compare transports on one label; `model` (there and in the audit line) is the id the
backend resolved the request's model to, once the reply (or a failed call's error) names it; a call
that never resolved one is labelled `adapter=""` (its audit line keeps the name it asked for).

Why a grpc.aio server inside the app rather than Ray Serve's gRPC proxy: Ray's proxy needs the
servicer registration functions fixed cluster-wide at `serve.start(grpc_options=...)`, routes by
an `application` metadata key clients must send, and hosts neither `grpc.health.v1` nor server
reflection; every call also takes an extra hop (proxy actor → ingress replica) before reaching
the serving core. Hosting the server in the ingress replica (started with the replica, on
`settings.grpc_port`) keeps one hop from client to core, which is what P7 (gRPC p50 ≤ HTTP p50)
measures, and lets the standard health and reflection services run beside the API. Several
ingress replicas on one node share the port (gRPC sets SO_REUSEPORT; the kernel balances).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import metrics
from service.backend import ServingBackend, get_model
from service.errors import CLIENT_CLOSED, describe, resolved_model
from service.grpc import translate
from service.grpc.gen.tuneserve.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc
from service.grpc.status import abort
from service.rollout_schemas import RolloutReply, refusal
from service.security.grpc import CallRecord, admit_call, bind, enable_reflection, record_call
from service.security.guard import StreamUsage, count_forbidden, prompt_texts
from training.artifact.errors import Unavailable

log = logging.getLogger("tuneserve.grpc")
SERVICE_NAMES = (inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
                 admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name)


class Gateway:
    """What every handler shares: the backend and the security guard (metadata key → principal)."""

    def __init__(self, backend: ServingBackend, guard: Any) -> None:
        self.backend = backend
        self.guard = guard

    async def principal(self, context: grpc.aio.ServicerContext, scope: str, call: CallRecord) -> Any:
        """Blocking, authentication, scope and rate limits (the same guard as HTTP)."""
        call.principal = await admit_call(self.guard, context, scope)
        return call.principal


@asynccontextmanager
async def recorded(gateway: Gateway, context: grpc.aio.ServicerContext, route: str,
                   model: str) -> AsyncIterator[CallRecord]:
    """Around one call: any failure becomes its table status; the request metric and the call's
    audit line are recorded, and its tokens charged to the key."""
    started, code, error, call = time.perf_counter(), 200, None, CallRecord()
    try:
        yield call
    except asyncio.CancelledError:
        code = CLIENT_CLOSED
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        error, code = exc, describe(exc).http_status
        count_forbidden(exc, "grpc")
        await abort(context, exc)
    finally:
        resolved = call.model or resolved_model(error)  # only resolved ids label metrics
        metrics.request_finished(route, resolved, "grpc", code, time.perf_counter() - started)
        if call.injection:
            metrics.prompt_injection_suspected(resolved)
        await record_call(gateway.guard, context, route, resolved or model, code, started, call.principal, call.usage,
                          error, call.reserved, call.detail)


def unary(service: str, scope: str) -> Callable:
    """Wrap `async def Rpc(self, request, principal, call)` with admission and `recorded`."""

    def decorate(method: Callable[..., Awaitable[Any]]) -> Callable:
        route = f"/{service}/{method.__name__}"

        @functools.wraps(method)
        async def handler(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with recorded(self.gateway, context, route, getattr(request, "model", "")) as call:
                principal = await self.gateway.principal(context, scope, call)
                translate.check_decoded(request)
                return await method(self, request, principal, call)

        return handler

    return decorate


@asynccontextmanager
async def closing(iterator: AsyncIterator) -> AsyncIterator[AsyncIterator]:
    """Close an async iterator however the consumer leaves (error, cancellation): stops generation."""
    try:
        yield iterator
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


class GatewayService:
    """Base of the servicers: handlers reach the backend and auth through `self.gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway


class InferenceService(GatewayService, inference_pb2_grpc.InferenceServicer):
    NAME = SERVICE_NAMES[0]

    @unary(NAME, "infer")
    async def Generate(self, request, principal, call):
        body = translate.generate_request(request)
        call.injection = self.gateway.guard.inspect_prompts(prompt_texts(body))
        call.reserved = await self.gateway.guard.reserve(principal, body)
        run = self.gateway.backend.chat if request.WhichOneof("input") == "messages" else self.gateway.backend.complete
        reply = await run(body, principal)
        call.model, call.usage = reply.model, reply.usage
        return translate.generate_response(reply)

    async def GenerateStream(self, request, context):
        async with recorded(self.gateway, context, f"/{self.NAME}/GenerateStream", request.model) as call:
            principal = await self.gateway.principal(context, "infer", call)
            translate.check_decoded(request)
            body = translate.generate_request(request, stream=True)  # always with the usage chunk (charged)
            call.injection = self.gateway.guard.inspect_prompts(prompt_texts(body))
            call.reserved = await self.gateway.guard.reserve(principal, body)
            backend = self.gateway.backend
            stream = backend.stream_chat if request.WhichOneof("input") == "messages" else backend.stream_complete
            call.usage = StreamUsage()
            async with closing(stream(body, principal)) as chunks:
                async for chunk in chunks:
                    call.model = chunk.get("model", call.model)
                    call.usage.add(chunk)
                    message = translate.generate_chunk(chunk)
                    if message is not None:
                        yield message

    async def _answer(self, body, principal, call, run):
        """A one-reply call (Classify, Embed): tokens reserved, the reply's model and usage recorded."""
        call.reserved = await self.gateway.guard.reserve(principal, body)
        reply = await run(body, principal)
        call.model, call.usage = reply.model, reply.usage
        return reply

    @unary(NAME, "infer")
    async def Classify(self, request, principal, call):
        body = translate.classify_request(request)
        return translate.classify_response(await self._answer(body, principal, call, self.gateway.backend.classify))

    @unary(NAME, "infer")
    async def Embed(self, request, principal, call):
        body = translate.embed_request(request)
        return translate.embed_response(await self._answer(body, principal, call, self.gateway.backend.embed))

    @unary(NAME, "infer")
    async def Feedback(self, request, principal, call):
        reply = await self.gateway.backend.feedback(translate.feedback_request(request), principal)
        call.model = reply.model
        return translate.feedback_response(reply)

    @unary(NAME, "infer")
    async def ListModels(self, request, principal, call):
        return translate.list_models_response(await self.gateway.backend.list_models(principal))

    @unary(NAME, "infer")
    async def GetModel(self, request, principal, call):
        return translate.model_info(await get_model(self.gateway.backend, principal, request.model))


class AdminService(GatewayService, admin_pb2_grpc.AdminServicer):
    NAME = SERVICE_NAMES[1]

    @unary(NAME, "admin")
    async def LoadAdapter(self, request, principal, call):
        info = await self.gateway.backend.load_adapter(translate.load_adapter_request(request), principal)
        return translate.adapter_info(info)

    @unary(NAME, "admin")
    async def UnloadAdapter(self, request, principal, call):
        reply = await self.gateway.backend.unload_adapter(request.name, request.force, principal)
        return translate.unload_adapter_response(reply)

    @unary(NAME, "admin")
    async def ListAdapters(self, request, principal, call):
        return translate.list_adapters_response(await self.gateway.backend.list_adapters(principal))

    @unary(NAME, "admin")
    async def Rollout(self, request, principal, call):
        reply = await self.gateway.backend.rollout(translate.rollout_request(request), principal)
        reply = reply if isinstance(reply, RolloutReply) else RolloutReply.model_validate(reply)
        if reply.decision is not None:
            call.detail = reply.decision.model_dump()  # the audit line keeps the gate's numbers
            if not reply.decision.allowed:
                raise refusal(reply.decision)
        return translate.rollout_reply(reply)


class BoundedHealth(health.aio.HealthServicer):
    """grpc.health.v1 whose Watch streams (they need no key and stay open) are capped per server."""

    def __init__(self, max_watches: int) -> None:
        super().__init__()
        self.max_watches, self.watching = max_watches, 0

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802 - gRPC API
        if self.watching >= self.max_watches:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"this server already has {self.max_watches} health watches open; "
                                "use Health.Check, or retry later")
        self.watching += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watching -= 1


class TolerantRegistration:
    """What the generated `add_*Servicer_to_server` functions register with: their method handlers,
    with request deserializers that never raise (`translate.tolerant`), so a request that does not
    parse reaches its handler and is answered INVALID_ARGUMENT, audited like any other call."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Ignored: the same handlers arrive through `add_registered_method_handlers`."""

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        handlers = {name: h._replace(request_deserializer=translate.tolerant(h.request_deserializer))
                    for name, h in handlers.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self.server.add_registered_method_handlers(service, handlers)


class GrpcServer:
    """The grpc.aio server with the API, health and reflection; start/stop inside an event loop."""

    def __init__(self, backend: ServingBackend, auth: Any, host: str = "127.0.0.1", port: int = 9000,
                 max_message_bytes: int = 4 * 1024 * 1024, health_interval_s: float = 5.0,
                 guard: Any = None, security: Any = None, max_concurrent_rpcs: int | None = 256,
                 max_health_watches: int = 32) -> None:
        from service.security import SecurityGuard

        self.backend, self.host, self.requested_port = backend, host, port
        self.health_interval_s = health_interval_s
        self.security = security if security is not None else getattr(guard, "security", None)
        self.health = BoundedHealth(max_health_watches)
        gateway = Gateway(backend, guard if guard is not None else SecurityGuard(auth, self.security))
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                               ("grpc.so_reuseport", 1)], maximum_concurrent_rpcs=max_concurrent_rpcs)
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(gateway), TolerantRegistration(self.server))
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(gateway), TolerantRegistration(self.server))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(self.server, (*SERVICE_NAMES, health.SERVICE_NAME), gateway.guard)  # a key, like /openapi.json
        self.port: int | None = None
        self._watch: asyncio.Task | None = None

    async def start(self) -> int:
        address = f"{self.host}:{self.requested_port}"
        try:
            self.port = bind(self.server, address, self.security)  # TLS when cert and key are configured
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen for gRPC on {address}: {exc}",
                              "choose a free port with grpc_port=..., or grpc_port=0 for any") from None
        await self.server.start()
        await self.refresh_health()
        self._watch = asyncio.create_task(self._watch_health())
        log.info("gRPC listening on %s:%s", self.host, self.port)
        return self.port

    async def refresh_health(self) -> str:
        """Set every service's health from the backend; returns the status name."""
        try:
            state = (await self.backend.health()).status
        except Exception:  # noqa: BLE001 - an unreachable backend is simply not serving
            log.warning("backend health check failed", exc_info=True)
            state = "unavailable"
        status = health_pb2.HealthCheckResponse.SERVING if state == "ok" else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(status)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.refresh_health()

    async def stop(self, grace: float | None = 5.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(backend: ServingBackend, auth: Any, settings: Any, guard: Any = None) -> GrpcServer | None:
    """Start the server on `settings.host:settings.grpc_port`; None when grpc_port is null (off).
    `guard` (shared with the HTTP app of the same replica) defaults to one from `settings.security`."""
    if settings.grpc_port is None:
        return None
    limits = settings.limits
    server = GrpcServer(backend, auth, settings.host, settings.grpc_port, max_message_bytes=limits.max_body_bytes,
                        guard=guard, security=settings.security, max_concurrent_rpcs=limits.grpc_concurrent_rpcs,
                        max_health_watches=limits.grpc_health_watches)
    await server.start()
    return server
