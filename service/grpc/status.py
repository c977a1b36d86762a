"""gRPC status codes for tuneserve errors, both ways, from the one table in `service/errors.py`.

Server side: `status_of(exc)` gives the code, the details string (message + hint, what any
client shows) and trailing metadata: `tuneserve-error-bin` (JSON of the error class, message,
hint, param) so a Python client can rebuild the exact error, and `retry-after` when limited:

    code, details, trailers = status_of(exc)
    context.set_trailing_metadata(trailers); await context.abort(code, details)

Client side: `error_from_rpc(rpc_error)` turns a `grpc.RpcError` back into the
`TuneserveError` subclass (from the trailers, else the most general class with that code).
`api_key_from_metadata(md)` reads `authorization: Bearer <key>` or `x-api-key: <key>`.
"""

from __future__ import annotations

import json
from typing import Iterable

import grpc

from service.errors import ERROR_TABLE, INTERNAL, describe, from_wire, public_message, to_wire
from training.artifact.errors import RateLimited, TuneserveError, Unauthenticated, Unavailable

ERROR_KEY = "tuneserve-error-bin"  # JSON of service.errors.to_wire(exc), UTF-8
RETRY_KEY = "retry-after"  # seconds, for RESOURCE_EXHAUSTED


def _most_general_by_code() -> dict[str, type[TuneserveError]]:
    """Code name → the first table class none of whose table bases share its code."""
    out: dict[str, type[TuneserveError]] = {}
    for cls, spec in ERROR_TABLE.items():
        if spec.grpc_code == INTERNAL.grpc_code:
            continue
        if any(ERROR_TABLE[base].grpc_code == spec.grpc_code for base in cls.__mro__[1:] if base in ERROR_TABLE):
            continue
        out.setdefault(spec.grpc_code, cls)
    return out


FALLBACK_BY_CODE = {**_most_general_by_code(), "DEADLINE_EXCEEDED": Unavailable}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]:
    code = getattr(grpc.StatusCode, describe(exc).grpc_code)
    details = public_message(exc)
    if not isinstance(exc, TuneserveError):
        return code, details, ()
    trailers: list[tuple[str, str | bytes]] = [(ERROR_KEY, json.dumps(to_wire(exc)).encode("utf-8"))]
    if isinstance(exc, RateLimited):
        trailers.append((RETRY_KEY, str(max(1, round(exc.retry_after)))))
    return code, details, tuple(trailers)


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status the error table gives `exc` (raises grpc's AbortError)."""
    code, details, trailers = status_of(exc)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(code, details)


def _metadata_dict(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    out = {}
    for key, value in metadata or ():
        out[key.lower()] = value.decode("latin-1") if isinstance(value, bytes) else value
    return out


def api_key_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    md = _metadata_dict(metadata)
    auth = md.get("authorization", "").strip()
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata is not 'Bearer <key>'",
                                  "send metadata ('authorization', 'Bearer <key>') or ('x-api-key', '<key>')")
        return token.strip()
    return md.get("x-api-key", "").strip() or None


def error_from_rpc(err: grpc.RpcError) -> TuneserveError:
    """The `TuneserveError` a failed call stands for; `.code` holds the gRPC status code."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (err.details() if callable(getattr(err, "details", None)) else None) or code.name
    trailers = dict(err.trailing_metadata() or ()) if callable(getattr(err, "trailing_metadata", None)) else {}
    exc: BaseException | None = None
    if ERROR_KEY in trailers:
        exc = from_wire(json.loads(trailers[ERROR_KEY]))
    if not isinstance(exc, TuneserveError):
        cls = FALLBACK_BY_CODE.get(code.name, TuneserveError)
        exc = cls(details, None if cls is TuneserveError else "the server sent no error class; see its log")
    exc.code = code  # type: ignore[attr-defined]
    return exc
