"""The REST transport's side of security: the auth dependency, the request middleware (body
size incl. chunked bodies, JSON depth, audit line, token charge) and the stream tally.

    guard = SecurityGuard.from_settings(settings, auth)
    Depends(auth_dependency(guard, "infer"))                        # per route
    response = await secure_request(guard, max_body, request, call_next)   # in the http middleware
    chunks = tally_stream(guard, request, chunks)                   # around SSE chunks
    Depends(optional_auth_dependency(guard))                         # None without a key (GET /ready)

Every request gets exactly one audit line: written by the middleware, or, for a streamed reply,
when the stream ends (tokens are known then). Keyless failures past the audit budget are counted
into a summary line instead (service.security.audit).
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import Header, Request
from starlette.responses import Response

from service.errors import CLIENT_CLOSED, describe
from service.http.errors import body_too_large
from service.security.guard import StreamUsage, count_forbidden, is_usage_chunk
from service.security.limits import check_json_depth

ADMIN_PREFIX = "/v1/admin"


def auth_dependency(guard, scope: str) -> Callable[..., Awaitable[Any]]:
    from service.auth import bearer_token

    async def dependency(request: Request, authorization: str | None = Header(None),
                         x_api_key: str | None = Header(None)):
        principal = await guard.admit(bearer_token(authorization, x_api_key), client_of(guard, request), "http", scope)
        request.state.principal = principal
        return principal

    return dependency


def optional_auth_dependency(guard) -> Callable[..., Awaitable[Any]]:
    """None without a key (e.g. readiness probes); with one, the principal of any valid key (else 401)."""
    from service.auth import bearer_token

    async def dependency(request: Request, authorization: str | None = Header(None),
                         x_api_key: str | None = Header(None)):
        token = bearer_token(authorization, x_api_key)
        if token is None:
            return None
        principal = request.state.principal = await guard.admit(token, client_of(guard, request), "http", None)
        return principal

    return dependency


def client_of(guard, request: Request) -> str:
    """The client address (X-Forwarded-For only from `security.trusted_proxies`), once per request."""
    client = getattr(request.state, "client", None)
    if client is None:
        peer = request.client.host if request.client else None
        client = request.state.client = guard.client(peer, ",".join(request.headers.getlist("x-forwarded-for")))
    return client


async def read_limited(request: Request, max_body: int) -> bytes:
    """The body, refused with 413 as soon as it passes `max_body` (chunked bodies included)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_body:
        raise body_too_large(max_body, int(length))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise body_too_large(max_body, size)
        chunks.append(chunk)
    raw = b"".join(chunks)
    request._body = raw  # downstream (FastAPI's body parsing) reads the cached body
    return raw


async def secure_request(guard, max_body: int, request: Request,
                         call_next: Callable[[Request], Awaitable[Response]],
                         render_error: Callable[[BaseException], Response]) -> Response:
    request.state.started = time.perf_counter()
    try:
        if request.method in ("POST", "PUT", "PATCH"):
            check_json_depth(await read_limited(request, max_body), guard.security.max_json_depth)
        response = await call_next(request)
    except Exception as exc:  # noqa: BLE001 - rendered by the error table, like the app's handlers
        request.state.error = exc
        response = render_error(exc)
    error = getattr(request.state, "error", None)
    count_forbidden(error, "http")
    if not getattr(request.state, "streaming", False):
        await finish(guard, request, response.status_code)
    return response


async def finish(guard, request: Request, status: int) -> None:
    """Charge the tokens used and write the request's one audit line."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    await guard.finish_call("http", path, request.method, getattr(request.state, "principal", None),
                            getattr(request.state, "usage", None), getattr(request.state, "model", None), status,
                            request.state.started, client_of(guard, request), path.startswith(ADMIN_PREFIX),
                            getattr(request.state, "error", None), getattr(request.state, "reserved", 0),
                            getattr(request.state, "audit_detail", None))


async def tally_stream(guard, request: Request, chunks: AsyncIterator[dict],
                       forward_usage: bool = True) -> AsyncIterator[dict]:
    """Pass chunks through (the usage chunk only when `forward_usage`: the client asked for it);
    count the tokens from the usage chunk; at the end, settle the tokens and audit the request."""
    request.state.streaming = True
    usage = request.state.usage = StreamUsage()
    status = 200
    try:
        async for chunk in chunks:
            usage.add(chunk)
            if forward_usage or not is_usage_chunk(chunk):
                yield chunk
    except Exception as exc:
        request.state.error = exc
        status = describe(exc).http_status
        raise
    except BaseException:  # cancelled, or the client went away (GeneratorExit)
        status = CLIENT_CLOSED
        raise
    finally:
        await finish(guard, request, status)
