"""The OpenAI-compatible REST app: auth dependencies, routes, SSE streaming; no serving logic.

    app = create_app(backend, Authenticator.from_settings(settings), settings)
    # backend: a `ServingBackend` (service/backend.py): the ServingCore, or the Ray handle proxy

A request's metric and audit line name the model the backend resolved (the reply's `model`,
e.g. `"base"` → the base model's id, or the id a failed request's error carries). Until it resolves
the audit line names the model the request named, while metrics label only resolved ids (else
`adapter=""`) and name unmatched paths `route="unmatched"`: junk traffic adds no series.

Routes: GET /health (liveness), GET /ready (readiness), GET /v1/models, GET /v1/models/{id}, POST /v1/completions,
POST /v1/chat/completions, POST /v1/classify, POST /v1/embeddings, POST /v1/feedback (on a served reply's `id`), and admin GET/POST /v1/admin/adapters,
DELETE /v1/admin/adapters/{name}, POST /v1/admin/adapters/{name}/pin (200 once every Engine replica
applied the change, 202 listing those that had not; see service/fleet.py), and the rollout routes
GET /v1/admin/rollouts[/{alias}], PUT|DELETE /v1/admin/rollouts/{alias}, POST .../{alias}/promote|rollback
(service/rollout.py; a request's `X-Tuneserve-Sticky` header is its `user` when the body has none). Keys go in
`Authorization: Bearer <key>` (or `x-api-key`). Errors use OpenAI's error body.
"""

from __future__ import annotations

import json
import time
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from training.artifact.version import tuneserve_version

from service import metrics
from service.auth import Authenticator, Principal
from service.backend import ServingBackend, get_model
from service.embedding_schemas import EmbeddingRequest, EmbeddingResponse
from service.errors import openai_error_body, resolved_model
from service.feedback_schemas import FeedbackRequest, FeedbackResponse
from service.http.errors import error_response, install_error_handlers
from service.security import SecurityGuard
from service.security.guard import prompt_texts
from service.security.http import auth_dependency, optional_auth_dependency, secure_request, tally_stream
from service.rollout_schemas import AliasFields, RolloutReply, RolloutRequest, refusal
from service.schemas import (
    AdapterInfo, AdapterList, ChatCompletionRequest, ChatCompletionResponse, ClassifyRequest, ClassifyResponse,
    CompletionRequest, CompletionResponse, FleetStatus, LoadAdapterRequest, ModelCard, ModelList, PinRequest,
    StreamOptions,
)


def create_app(backend: ServingBackend, auth: Authenticator, settings, guard: SecurityGuard | None = None) -> FastAPI:
    public_docs = settings.security.public_docs
    app = FastAPI(title="tuneserve", version=tuneserve_version(),
                  description="OpenAI-compatible completions, chat and classification over a base model and LoRA adapters.",
                  **({} if public_docs else {"openapi_url": None, "docs_url": None, "redoc_url": None}))
    install_error_handlers(app)
    max_body = settings.limits.max_body_bytes
    guard = app.state.guard = guard or SecurityGuard.from_settings(settings, auth)

    def require(scope: str):
        return auth_dependency(guard, scope)  # blocking, authentication, scope, rate limits (service.security)

    if not public_docs:  # every route but liveness/readiness needs a key; the schema needs any valid one
        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require(None))])
        async def openapi_schema() -> JSONResponse:
            return JSONResponse(app.openapi())

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        started = time.perf_counter()
        response = await secure_request(guard, max_body, request, call_next, error_response)
        model = getattr(request.state, "resolved", None) or resolved_model(getattr(request.state, "error", None))
        route = getattr(request.scope.get("route"), "path", metrics.UNMATCHED_ROUTE)
        metrics.request_finished(route, model, "http", response.status_code, time.perf_counter() - started)
        if getattr(request.state, "injection", None):
            metrics.prompt_injection_suspected(model)
        return response

    @app.get("/health", tags=["ops"], summary="Liveness: the process answers")
    async def health() -> dict:
        return {"status": "ok"}

    metrics_access = [] if settings.security.public_metrics else [Depends(require("metrics"))]

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics of every serving process on this node",
             response_class=PlainTextResponse, dependencies=metrics_access)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/ready", tags=["ops"], summary="Readiness: models loaded and the engine running "
                                             "(without a key only the status; queue and cache details need any key)")
    async def ready(principal: Principal | None = Depends(optional_auth_dependency(guard))):
        state = await backend.health()
        body = state.model_dump() if principal is not None else {"status": state.status}
        return JSONResponse(body, status_code=200 if state.status == "ok" else 503)

    @app.get("/v1/models", response_model=ModelList, tags=["inference"])
    async def models(principal: Principal = Depends(require("infer"))):
        return await backend.list_models(principal)

    @app.get("/v1/models/{model_id}", response_model=ModelCard, tags=["inference"])
    async def model(model_id: str, principal: Principal = Depends(require("infer"))):
        return await get_model(backend, principal, model_id)

    async def generation(body, request: Request, principal: Principal, unary, streamed):
        sticky = request.headers.get(STICKY_HEADER)
        if sticky and not body.user:  # keeps the caller on one version of an alias (service/rollout.py)
            body = body.model_copy(update={"user": sticky[:256]})
        request.state.model = body.model
        request.state.injection = guard.inspect_prompts(prompt_texts(body))
        request.state.reserved = await guard.reserve(principal, body)  # settled to the tokens used at the end
        if body.stream:  # the backend always reports usage (charged); the client sees it only if it asked
            asked = body.stream_options is not None and body.stream_options.include_usage
            counted = body.model_copy(update={"stream_options": StreamOptions(include_usage=True)})
            return await sse(tally_stream(guard, request, resolving(request, streamed(counted, principal)),
                                          forward_usage=asked))
        reply = await unary(body, principal)
        resolved_as(request, reply.model, reply.usage)
        return reply

    @app.post("/v1/completions", response_model=CompletionResponse, tags=["inference"])
    async def completions(body: CompletionRequest, request: Request, principal: Principal = Depends(require("infer"))):
        return await generation(body, request, principal, backend.complete, backend.stream_complete)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, tags=["inference"])
    async def chat(body: ChatCompletionRequest, request: Request, principal: Principal = Depends(require("infer"))):
        return await generation(body, request, principal, backend.chat, backend.stream_chat)

    async def unary(body, request: Request, principal: Principal, call):
        """A request answered in one reply (classify, embeddings): tokens reserved, reply's model resolved."""
        request.state.model = body.model
        request.state.reserved = await guard.reserve(principal, body)
        reply = await call(body, principal)
        resolved_as(request, reply.model, reply.usage)
        return reply

    @app.post("/v1/classify", response_model=ClassifyResponse, tags=["inference"])
    async def classify(body: ClassifyRequest, request: Request, principal: Principal = Depends(require("infer"))):
        return await unary(body, request, principal, backend.classify)

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["inference"])
    async def embeddings(body: EmbeddingRequest, request: Request, principal: Principal = Depends(require("infer"))):
        return await unary(body, request, principal, backend.embed)

    @app.post("/v1/feedback", response_model=FeedbackResponse, tags=["inference"],
              summary="Feedback on a served reply: the right label, the right answer, or a rating 1..5")
    async def feedback(body: FeedbackRequest, request: Request, principal: Principal = Depends(require("infer"))):
        reply = await backend.feedback(body, principal)  # 404 for ids unknown, expired or served to another tenant
        resolved_as(request, reply.model)
        return reply

    @app.get("/v1/admin/adapters", response_model=AdapterList, tags=["admin"])
    async def list_adapters(principal: Principal = Depends(require("admin"))):
        return await backend.list_adapters(principal)

    # Admin changes reach every Engine replica: 200 once all live ones applied it, 202 (with `fleet.pending`
    # / `fleet.failed`) when some had not within fleet.ack_timeout_s; they converge to the saved state.
    @app.post("/v1/admin/adapters", response_model=AdapterInfo, tags=["admin"], responses={202: FLEET_PARTIAL},
              summary="Load an adapter, or replace a loaded one in place with a new version, on every replica")
    async def load_adapter(body: LoadAdapterRequest, response: Response, principal: Principal = Depends(require("admin"))):
        return fleet_answer(response, await backend.load_adapter(body, principal))

    @app.delete("/v1/admin/adapters/{name}", tags=["admin"], responses={202: FLEET_PARTIAL})
    async def unload_adapter(name: str, response: Response, force: bool = False,
                             principal: Principal = Depends(require("admin"))):
        return fleet_answer(response, await backend.unload_adapter(name, force, principal))

    @app.post("/v1/admin/adapters/{name}/pin", response_model=AdapterInfo, tags=["admin"], responses={202: FLEET_PARTIAL})
    async def pin_adapter(name: str, body: PinRequest, response: Response, principal: Principal = Depends(require("admin"))):
        return fleet_answer(response, await backend.pin_adapter(name, body.pinned, principal))

    @app.get("/v1/admin/rollouts", response_model=RolloutReply, tags=["admin"], summary="Every alias and its numbers")
    async def list_rollouts(principal: Principal = Depends(require("admin"))):
        return await backend.rollout(RolloutRequest(action="list"), principal)

    @app.get("/v1/admin/rollouts/{alias}", response_model=RolloutReply, tags=["admin"],
             summary="An alias: its versions, weights, and per-version error rate, latency, agreement, quality")
    async def rollout_status(alias: str, principal: Principal = Depends(require("admin"))):
        return await backend.rollout(RolloutRequest(action="status", alias=alias), principal)

    @app.put("/v1/admin/rollouts/{alias}", response_model=RolloutReply, tags=["admin"], responses={202: FLEET_PARTIAL},
             summary="Create or change an alias (stable, candidate, canary weight, shadow fraction, stickiness)")
    async def set_rollout(alias: str, body: AliasFields, response: Response,
                          principal: Principal = Depends(require("admin"))):
        request = RolloutRequest(action="set", alias=alias, **body.model_dump())
        return fleet_answer(response, await backend.rollout(request, principal))

    @app.delete("/v1/admin/rollouts/{alias}", response_model=RolloutReply, tags=["admin"],
                responses={202: FLEET_PARTIAL})
    async def delete_rollout(alias: str, response: Response, principal: Principal = Depends(require("admin"))):
        return fleet_answer(response, await backend.rollout(RolloutRequest(action="delete", alias=alias), principal))

    @app.post("/v1/admin/rollouts/{alias}/promote", response_model=RolloutReply, tags=["admin"],
              responses={202: FLEET_PARTIAL, 409: {"description": "the gate refused: the reasons with their numbers"}},
              summary="Make the candidate the stable version, if it passes the gate (or with force, audited)")
    async def promote_rollout(alias: str, request: Request, response: Response, force: bool = False,
                              principal: Principal = Depends(require("admin"))):
        reply = await backend.rollout(RolloutRequest(action="promote", alias=alias, force=force), principal)
        reply = reply if isinstance(reply, RolloutReply) else RolloutReply.model_validate(reply)
        if reply.decision is not None:
            request.state.audit_detail = reply.decision.model_dump()  # the audit line keeps the numbers
            if not reply.decision.allowed:
                raise refusal(reply.decision)
        return fleet_answer(response, reply)

    @app.post("/v1/admin/rollouts/{alias}/rollback", response_model=RolloutReply, tags=["admin"],
              responses={202: FLEET_PARTIAL}, summary="Drop the candidate, or return to the version the last promote replaced")
    async def rollback_rollout(alias: str, response: Response, principal: Principal = Depends(require("admin"))):
        return fleet_answer(response, await backend.rollout(RolloutRequest(action="rollback", alias=alias), principal))

    return app


STICKY_HEADER = "x-tuneserve-sticky"


def resolved_as(request: Request, model: str, usage=None) -> None:
    """The backend resolved the request's model to `model`: its audit line and metrics name that id."""
    request.state.model = request.state.resolved = model
    if usage is not None:
        request.state.usage = usage


FLEET_PARTIAL = {"description": "saved, but some live Engine replicas had not applied it yet (fleet.pending) "
                                 "or failed to (fleet.failed); they keep retrying"}


def fleet_answer(response: Response, reply):
    """An admin reply; 202 when its `fleet` status says not every live replica applied the change."""
    fleet = reply.get("fleet") if isinstance(reply, dict) else reply.fleet
    if fleet is not None and not FleetStatus.model_validate(fleet).complete:
        response.status_code = 202
    return reply


async def resolving(request: Request, chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """Pass chunks through; each names the model the backend resolved, which labels the request."""
    try:
        async for chunk in chunks:
            if "model" in chunk:
                resolved_as(request, chunk["model"])
            yield chunk
    finally:
        await chunks.aclose()


async def sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    """Server-sent events; the first chunk is awaited here so request errors keep their HTTP status."""
    iterator = chunks.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None

    async def events():
        try:
            if first is not None:
                yield f"data: {json.dumps(first)}\n\n"
            async for chunk in iterator:
                yield f"data: {json.dumps(chunk)}\n\n"
        except Exception as exc:  # noqa: BLE001 - after the status line, errors travel in the stream
            yield f"data: {json.dumps(openai_error_body(exc))}\n\n"
        finally:
            await iterator.aclose()
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
