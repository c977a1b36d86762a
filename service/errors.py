"""The one error table of the service: error class → HTTP status, OpenAI error type, gRPC code.

Transports never decide statuses themselves; they call `describe(exc)` and render:

    status, body = http_error(exc)          # FastAPI handler: JSONResponse(body, status)
    code_name = describe(exc).grpc_code     # gRPC: getattr(grpc.StatusCode, code_name)

Unknown exceptions become 500 `internal_error` with a generic message; the traceback goes to
the log only. `to_wire(exc)` / `from_wire(d)` carry a user error across a process boundary
(Ray handles lose the hint when pickling exceptions). `with_model(exc, model_id)` marks an error
raised after the request's model was resolved; `resolved_model(exc)` reads it back (metric labels
name only resolved ids).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from training.artifact.errors import (
    ArtifactInvalid,
    BaseModelMismatch,
    ConfigError,
    Conflict,
    DataError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    TrainingError,
    TuneserveError,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("tuneserve.service")


@dataclass(frozen=True)
class ErrorSpec:
    http_status: int
    openai_type: str
    grpc_code: str


# Most specific classes first: lookup walks the exception's MRO.
ERROR_TABLE: dict[type[BaseException], ErrorSpec] = {
    PayloadTooLarge: ErrorSpec(413, "invalid_request_error", "INVALID_ARGUMENT"),
    InvalidRequest: ErrorSpec(400, "invalid_request_error", "INVALID_ARGUMENT"),
    Unauthenticated: ErrorSpec(401, "authentication_error", "UNAUTHENTICATED"),
    PermissionDenied: ErrorSpec(403, "permission_error", "PERMISSION_DENIED"),
    NotFound: ErrorSpec(404, "not_found_error", "NOT_FOUND"),
    Conflict: ErrorSpec(409, "conflict_error", "FAILED_PRECONDITION"),
    RateLimited: ErrorSpec(429, "rate_limit_error", "RESOURCE_EXHAUSTED"),
    BaseModelMismatch: ErrorSpec(422, "invalid_request_error", "FAILED_PRECONDITION"),
    ArtifactInvalid: ErrorSpec(422, "invalid_request_error", "FAILED_PRECONDITION"),
    ConfigError: ErrorSpec(400, "invalid_request_error", "INVALID_ARGUMENT"),
    DataError: ErrorSpec(400, "invalid_request_error", "INVALID_ARGUMENT"),
    TrainingError: ErrorSpec(500, "internal_error", "INTERNAL"),
    Unavailable: ErrorSpec(503, "service_unavailable", "UNAVAILABLE"),
    Overloaded: ErrorSpec(503, "service_unavailable", "RESOURCE_EXHAUSTED"),  # after Unavailable: a bare 503 reads as UNAVAILABLE
}
INTERNAL = ErrorSpec(500, "internal_error", "INTERNAL")
CLIENT_CLOSED = 499  # the status recorded for a request the client cancelled (nginx's convention; gRPC CANCELLED)
INTERNAL_MESSAGE = "internal server error"
_BY_NAME = {cls.__name__: cls for cls in ERROR_TABLE}


def describe(exc: BaseException) -> ErrorSpec:
    for cls in type(exc).__mro__:
        spec = ERROR_TABLE.get(cls)
        if spec is not None:
            return spec
    return INTERNAL


def public_message(exc: BaseException) -> str:
    """What the client sees: message + hint for user errors, a generic text otherwise (logged)."""
    if isinstance(exc, TuneserveError):
        return str(exc)
    log.error("unhandled error", exc_info=(type(exc), exc, exc.__traceback__))
    return INTERNAL_MESSAGE


def openai_error_body(exc: BaseException, param: str | None = None) -> dict[str, Any]:
    spec = describe(exc)
    code = type(exc).__name__ if isinstance(exc, TuneserveError) else "internal_error"
    return {"error": {"message": public_message(exc), "type": spec.openai_type,
                      "param": param if param is not None else getattr(exc, "param", None), "code": code}}


def http_error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, OpenAI error body, extra headers) for any exception."""
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return describe(exc).http_status, openai_error_body(exc), headers


def with_param(exc: TuneserveError, param: str | None) -> TuneserveError:
    """Attach the offending request field (OpenAI `param`) to an error."""
    exc.param = param  # type: ignore[attr-defined]
    return exc


def with_model(exc: BaseException, model_id: str) -> BaseException:
    """Mark an error as raised after the request's model resolved to `model_id`."""
    exc.model_id = model_id  # type: ignore[attr-defined]
    return exc


def resolved_model(exc: BaseException | None) -> str | None:
    return getattr(exc, "model_id", None)


def to_wire(exc: BaseException) -> dict[str, Any]:
    if not isinstance(exc, TuneserveError):
        public_message(exc)
        return {"class": "InternalError", "message": INTERNAL_MESSAGE, "hint": None, "model": resolved_model(exc)}
    return {"class": type(exc).__name__, "message": exc.message, "hint": exc.hint,
            "param": getattr(exc, "param", None), "retry_after": getattr(exc, "retry_after", None),
            "model": resolved_model(exc)}


def from_wire(data: dict[str, Any]) -> BaseException:
    cls = _BY_NAME.get(data.get("class", ""))
    exc = cls(data["message"], data.get("hint")) if cls is not None else RuntimeError(data.get("message", INTERNAL_MESSAGE))
    if data.get("model") is not None:
        with_model(exc, data["model"])
    if cls is None:
        return exc
    if isinstance(exc, RateLimited) and data.get("retry_after") is not None:
        exc.retry_after = data["retry_after"]
    if data.get("param") is not None:
        with_param(exc, data["param"])
    return exc
