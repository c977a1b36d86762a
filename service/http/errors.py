"""FastAPI exception handlers and body-size guard rendering every failure as an OpenAI error body."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from training.artifact.errors import InvalidRequest, NotFound, PayloadTooLarge, TuneserveError

from service.errors import http_error, with_param


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = http_error(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidRequest(f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                              "send a JSON object with Content-Type: application/json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if not loc and first.get("type") in ("model_attributes_type", "dict_type"):
        return InvalidRequest("the request body must be a JSON object",
                              "send a JSON object with Content-Type: application/json")
    field = ".".join(loc) or "body"
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        message = "field required"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return with_param(InvalidRequest(f"invalid request: {field}: {message}{more}",
                                     "see /openapi.json for the request schema"), field)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TuneserveError)
    async def _user_error(request: Request, exc: TuneserveError):
        request.state.error = exc  # read by the security middleware (audit reason, forbidden count)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error_response(NotFound(f"no route {request.method} {request.url.path}", "see /openapi.json"))
        if exc.status_code == 405:
            return JSONResponse({"error": {"message": f"method {request.method} not allowed on {request.url.path}",
                                           "type": "invalid_request_error", "param": None, "code": "method_not_allowed"}},
                                status_code=405)
        return error_response(InvalidRequest(str(exc.detail)))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return error_response(exc)


def body_too_large(limit: int, size: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {limit} bytes",
                           "send a smaller request (fewer or shorter prompts)")
