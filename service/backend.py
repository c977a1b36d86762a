"""`ServingBackend`: the interface the transports call, satisfied by `ServingCore` (in process,
service/core.py) and `RemoteCore` (over the Engine deployment's handle, service/app.py).

    def create_app(backend: ServingBackend, ...): ...     # service/http/app.py, service/grpc/server.py
    isinstance(core, ServingBackend)                      # runtime check of the method names

Replies are the `service.schemas` models; the streams yield OpenAI chunk dicts. `principal=None`
skips authorization. `UNARY_CALLS` and `STREAM_CALLS` name the methods (what crosses the handle).
Importing this module loads no engine, torch or Ray.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Protocol, runtime_checkable

from training.artifact.errors import NotFound

from service.auth import Authenticator, Principal
from service.embedding_schemas import EmbeddingRequest, EmbeddingResponse
from service.errors import with_param
from service.feedback_schemas import FeedbackRequest, FeedbackResponse
from service.rollout_schemas import RolloutReply, RolloutRequest
from service.schemas import (
    AdapterInfo, AdapterList, ChatCompletionRequest, ChatCompletionResponse, ClassifyRequest, ClassifyResponse,
    CompletionRequest, CompletionResponse, Health, LoadAdapterRequest, ModelCard, ModelList,
)


@runtime_checkable
class ServingBackend(Protocol):
    async def complete(self, request: CompletionRequest, principal: Principal | None) -> CompletionResponse: ...

    async def chat(self, request: ChatCompletionRequest, principal: Principal | None) -> ChatCompletionResponse: ...

    def stream_complete(self, request: CompletionRequest, principal: Principal | None) -> AsyncIterator[dict]: ...

    def stream_chat(self, request: ChatCompletionRequest, principal: Principal | None) -> AsyncIterator[dict]: ...

    async def classify(self, request: ClassifyRequest, principal: Principal | None) -> ClassifyResponse: ...

    async def list_models(self, principal: Principal | None) -> ModelList: ...

    async def embed(self, request: EmbeddingRequest, principal: Principal | None) -> EmbeddingResponse: ...

    async def load_adapter(self, request: LoadAdapterRequest, principal: Principal | None = None) -> AdapterInfo: ...

    async def unload_adapter(self, name: str, force: bool = False,
                             principal: Principal | None = None) -> dict[str, Any]: ...

    async def pin_adapter(self, name: str, pinned: bool, principal: Principal | None = None) -> AdapterInfo: ...

    async def list_adapters(self, principal: Principal | None = None) -> AdapterList: ...

    async def feedback(self, request: FeedbackRequest, principal: Principal | None) -> FeedbackResponse: ...
    async def rollout(self, request: RolloutRequest, principal: Principal | None = None) -> RolloutReply: ...

    async def health(self) -> Health: ...


STREAM_CALLS = frozenset({"stream_complete", "stream_chat"})
UNARY_CALLS = frozenset(name for name in dir(ServingBackend)
                        if not name.startswith("_") and callable(getattr(ServingBackend, name))) - STREAM_CALLS


async def get_model(backend: ServingBackend, principal: Principal | None, model_id: str) -> ModelCard:
    """One listed model (GET /v1/models/{id}, GetModel): 403 for a model the key may not use, as for
    inference; 404 naming `model` when it is not listed."""
    if principal is not None:
        Authenticator.authorize(principal, "infer", model_id)
    listed = await backend.list_models(principal)
    listed = listed if isinstance(listed, ModelList) else ModelList.model_validate(listed)
    for card in listed.data:
        if card.id == model_id:
            return card
    raise with_param(NotFound(f"model {model_id[:128]!r} does not exist",
                              "GET /v1/models (HTTP) or ListModels (gRPC) lists the models this key can use"), "model")
