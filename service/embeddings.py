"""Embeddings (`POST /v1/embeddings`, gRPC `Embed`): `EmbeddingService`, the serving core's part that
validates, resolves and encodes a request (its models: service/embedding_schemas.py).

    service = EmbeddingService(settings, engine.encoder, engine.registry, drift, buckets)
    reply = await service.embed(EmbeddingRequest(model="all-minilm-l6-v2", input=["a", "b"]), principal)
    service.serves("all-minilm-l6-v2")      # True: the other endpoints refuse it, naming this one

`input` is a text, texts, token ids of the encoder's tokenizer (used as given, special tokens
included: `tokenizer(text)["input_ids"]` embeds exactly like `text`) or several of those; empty
texts are refused as OpenAI does. Each input is checked against `limits.max_prompt_tokens` and the
encoder's context, and at most `limits.max_embedding_inputs` go in one request (400 naming `input`).
`dimensions` keeps the first d components and renormalises (as OpenAI's text-embedding-3 models);
above the model's size it is a 400. `encoding_format` "base64" sends each vector as base64 of its
little-endian float32 bytes, as OpenAI does. A model that is not an embedding model is a 400 naming
the endpoint that serves it; usage counts every input token (special tokens included).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from training.artifact.errors import NotFound

from service import metrics
from service.auth import Authenticator, Principal
from service.embedding_schemas import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from service.engine.registry import BASE_ALIAS, ModelRegistry
from service.errors import with_model, with_param
from service.jobs import check_ids, context_of, invalid, naming, vocabulary
from service.loader import AdapterLoader

ENDPOINTS = {"causal-lm": "/v1/completions or /v1/chat/completions (gRPC Generate)",
             "classification": "/v1/classify (gRPC Classify)", "embedding": "/v1/embeddings (gRPC Embed)"}


def encoded(vectors: np.ndarray, encoding_format: str) -> list[list[float] | str]:
    if encoding_format == "base64":
        return [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    return vectors.tolist()


def truncated(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components of each (unit) vector, renormalised to unit length."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    return (cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class EmbeddingService:
    def __init__(self, settings: Any, encoder: Any, models: ModelRegistry, drift: Any, buckets: Any = None) -> None:
        """`encoder`: the engine's EncoderEngine (None: no embedding model); `models`: the causal-LM
        registry (its models are refused here, naming their endpoint); `buckets`: the on-demand load
        rate limits shared with the other loader, so one key's budget covers both."""
        self.settings = settings
        self.encoder = encoder
        self.models = models
        self.drift = drift
        self.loader = AdapterLoader(encoder.registry, settings.limits.adapter_loads, buckets) if encoder else None

    @property
    def registry(self) -> ModelRegistry | None:
        return self.encoder.registry if self.encoder is not None else None

    def serves(self, model: str) -> bool:
        registry = self.registry
        return registry is not None and model != BASE_ALIAS and (
            model in registry.model_ids() or model in registry.catalog.adapters)

    def model_rows(self) -> list[dict[str, Any]]:
        """The encoder and its loaded adapters as /v1/models rows (task: what they serve here)."""
        return [{**row, "task": "embedding"} for row in self.registry.list_models()] if self.registry else []

    def artifact_dir(self, name: str):
        entry = self.registry.adapters.get(name) if self.registry else None
        return entry.path if entry is not None else None

    def stop(self) -> None:
        if self.loader is not None:
            self.loader.stop()

    async def embed(self, request: EmbeddingRequest, principal: Principal | None) -> EmbeddingResponse:
        if principal is not None:
            Authenticator.authorize(principal, "infer", request.model)
        if not self.serves(request.model):
            raise self._not_served(request.model, principal)
        lease = await self.loader.acquire(request.model, getattr(principal, "key_id", None),
                                          principal.may_use if principal is not None else None)
        try:
            loaded = lease.target.loaded
            inputs = self._token_ids(request.inputs(), loaded, context_of(lease.target))
            size = lease.target.model.config.hidden_size
            if request.dimensions is not None and request.dimensions > size:
                raise invalid(f"dimensions {request.dimensions} exceeds the model's {size}", "dimensions",
                              f"ask for 1 to {size} dimensions, or leave the field out for all {size}")
            texts = [i if isinstance(i, str) else loaded.tokenizer.decode(ids, skip_special_tokens=True)
                     for i, ids in zip(request.inputs(), inputs)]
            self.drift.observe_prompts(lease.model_id, texts, inputs, loaded.tokenizer)
        except BaseException as exc:
            lease.release()
            raise with_model(exc, lease.model_id)
        with naming(lease.model_id):
            vectors = await self.encoder.embed(lease, inputs)  # the engine releases the lease
        tokens = sum(len(ids) for ids in inputs)
        metrics.embedded(lease.model_id, len(inputs), tokens)
        data = [Embedding(index=i, embedding=e)
                for i, e in enumerate(encoded(truncated(vectors, request.dimensions), request.encoding_format))]
        return EmbeddingResponse(data=data, model=lease.model_id,
                                 usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

    def _token_ids(self, given: list[str | list[int]], loaded: Any, context: int | None) -> list[list[int]]:
        limits = self.settings.limits
        most = limits.max_embedding_inputs
        if not given or len(given) > most:
            raise invalid(f"input must hold 1 to {most} inputs, got {len(given)}", "input",
                          f"send between 1 and {most} inputs per request; split larger jobs")
        if any(isinstance(g, str) and not g for g in given):
            raise invalid("input holds an empty string", "input", "send non-empty texts")
        vocab = vocabulary(loaded)
        texts = [g for g in given if isinstance(g, str)]
        encoded_texts = iter(loaded.tokenizer(texts)["input_ids"] if texts else [])
        out = [list(next(encoded_texts)) if isinstance(g, str) else check_ids(g, vocab, "input") for g in given]
        limit = min(limits.max_prompt_tokens, context or limits.max_prompt_tokens)
        for i, ids in enumerate(out):
            if len(ids) > limit:
                raise invalid(f"input {i} has {len(ids)} tokens; the limit is {limit}", "input",
                              "shorten the input or split it into several")
        return out

    def _not_served(self, model: str, principal: Principal | None) -> Exception:
        """A 400 naming the right endpoint for a model served elsewhere, else a 404 listing embedding models."""
        task = self._task_elsewhere(model)
        here = self.registry.base_name if self.registry else None
        offer = f"embedding models here: {here} and adapters built on it" if here else \
            "this server has no embedding model (an operator sets embedding_model, e.g. all-minilm-l6-v2)"
        if task is not None:
            where = ENDPOINTS.get(task, "/v1/completions, /v1/chat/completions or /v1/classify")
            return invalid(f"model {model!r} is not an embedding model", "model", f"use {where} for it; {offer}")
        usable = [r["id"] for r in self.model_rows() if principal is None or principal.may_use(r["id"])]
        return with_param(NotFound(f"model {model!r} does not exist",
                                   f"GET /v1/models (HTTP) or ListModels (gRPC) lists the models you can use; "
                                   f"embedding models: {', '.join(usable[:8]) or 'none'}"), "model")

    def _task_elsewhere(self, model: str) -> str | None:
        """The task of `model` when the causal-LM registry serves it ("" when not yet known), else None."""
        models = self.models
        if model in (models.base_name, BASE_ALIAS):
            return models.base.loaded.task
        if model in models.targets:
            return models.targets[model].loaded.task
        entry = models.adapters.get(model)
        if entry is not None:
            return entry.manifest.task
        return "" if model in models.catalog.adapters else None
