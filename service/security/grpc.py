"""The gRPC transport's side of security: admission from call metadata and the audit line.

    principal = await admit_call(guard, context, "infer")           # in Gateway.principal
    record_call(guard, context, route, model, code, started, principal, usage)   # in `recorded`
    port = bind(server, "0.0.0.0:9000", settings.security)         # TLS when cert/key are set
    enable_reflection(server, service_names, guard)                 # needs a key unless public_docs

The client address is the peer of the call (`ipv4:10.0.0.7:53211` → `10.0.0.7`), or, when that
peer is in `security.trusted_proxies`, the client named by its `x-forwarded-for` metadata.
"""

from __future__ import annotations

from typing import Any

from service.security.tls import grpc_server_credentials


def peer_address(peer: str | None) -> str:
    """`ipv4:1.2.3.4:5678` → `1.2.3.4`; `ipv6:[::1]:5678` → `::1`; anything else unchanged."""
    if not peer:
        return "unknown"
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]").replace("%5B", "").replace("%5D", "")
    return peer


def call_client(guard, context) -> str:
    forwarded = ",".join(value for key, value in context.invocation_metadata() or () if key == "x-forwarded-for")
    return guard.client(peer_address(context.peer()), forwarded)


async def admit_call(guard, context, scope: str | None) -> Any:
    from service.grpc.status import api_key_from_metadata

    token = api_key_from_metadata(context.invocation_metadata())
    return await guard.admit(token, call_client(guard, context), "grpc", scope)


async def record_call(guard, context, route: str, model: str, code: int, started: float,
                      principal: Any = None, usage: Any = None, error: BaseException | None = None,
                      reserved: int = 0, detail: Any = None) -> None:
    await guard.finish_call("grpc", route, "RPC", principal, usage, model, code, started,
                            call_client(guard, context), "/tuneserve.v1.Admin/" in route, error, reserved, detail)


def enable_reflection(server, service_names, guard) -> None:
    """Server reflection serves the API schema, so it is guarded like `/openapi.json`: any valid
    key (with blocking and rate limits), or none when `security.public_docs` is set."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

    from service.grpc.status import abort

    class GuardedReflection(reflection.aio.ReflectionServicer):
        async def ServerReflectionInfo(self, request_iterator, context):
            if not guard.security.public_docs:
                try:
                    await admit_call(guard, context, None)
                except Exception as exc:  # noqa: BLE001 - the error table's status
                    await abort(context, exc)
            async for reply in super().ServerReflectionInfo(request_iterator, context):
                yield reply

    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        GuardedReflection((*service_names, reflection.SERVICE_NAME)), server)


def bind(server, address: str, security) -> int:
    """Listen on `address`, with TLS when security.tls_certfile/tls_keyfile are set."""
    credentials = grpc_server_credentials(security) if security is not None else None
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


class CallRecord:
    """What a gRPC handler learns during a call, for its audit line: who called, the tokens reserved
    and used, and the model id the backend resolved the request's model to."""

    def __init__(self) -> None:
        self.principal: Any = None
        self.usage: Any = None
        self.model: str | None = None
        self.reserved = 0  # tokens reserved at admission (SecurityGuard.reserve), settled at the end
        self.injection: list[str] = []  # prompt-injection markers found in the request
        self.detail: Any = None  # extra audit detail (a rollout promotion's gate decision)
