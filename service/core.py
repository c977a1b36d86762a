"""`ServingCore`: the one serving class. Validation, model/adapter resolution, authorization,
generation, usage and response cache live here (adapter and rollout administration in
`service/administration.py`, which it inherits); transports (REST in
`service.http`, gRPC in `service.grpc`) only translate into these async methods.

    core = ServingCore(load_settings({"artifacts_dir": "artifacts"}))
    core.start()
    resp = await core.complete(CompletionRequest(model="my-adapter", prompt="Hi"), principal)
    async for chunk in core.stream_complete(request, principal): ...   # OpenAI chunk dicts
    reply = await core.embed(EmbeddingRequest(model="all-minilm-l6-v2", input="Hi"), principal)  # service/embeddings.py
    core.stop()

`principal=None` skips authorization (in-process callers that already checked it). A request's
`model` is resolved once, by the lease (`"base"` → the base model's id): every response, metric,
drift sample and (through the response's `model`) audit line of the request names that id. An alias
(service/rollout.py) resolves first to one of its versions, which the request is then served as.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, AsyncIterator

from service import metrics
from service.administration import Administration
from service.auth import Authenticator, Principal
from service.drift import DriftMonitor
from service.embedding_schemas import EmbeddingRequest, EmbeddingResponse
from service.embeddings import ENDPOINTS, EmbeddingService
from service.engine.engine import Engine
from service.engine.registry import Lease
from service.engine.types import RequestStream
from service.errors import with_model
from service.feedback import FeedbackStore
from service.feedback_schemas import FeedbackRequest, FeedbackResponse
from service.fleet import Coordinator, FleetMember, local_replica_id, state_path
from service.jobs import Job, JobBuilder, context_of, invalid, naming, nonempty
from service.loader import AdapterLoader
from service.rollout import QualitySource, Rollouts, Route, answers_of
from service.render import ChoiceResult, chat_choice, chat_chunk, completion_choice, completion_chunk, usage, usage_chunk
from service.schemas import (
    ChatCompletionRequest, ChatCompletionResponse, Classification, ClassifyRequest, ClassifyResponse,
    CompletionRequest, CompletionResponse, Health, LabelScore, ModelCard, ModelList, SamplingFields,
)
from service.settings import ENGINE_QUEUE_CAPACITY, ServiceSettings
from service.tools import tool_replies


class ServingCore(Administration):
    def __init__(self, settings: ServiceSettings, engine: Engine | None = None, coordinator: Any = None,
                 replica_id: str | None = None, quality: QualitySource | None = None) -> None:
        """`coordinator`: the fleet's (service/fleet.py; the Ray app passes the cluster's actor), else an
        in-process one over the state file; `replica_id` names this replica to it; `quality`: online quality
        per version for the promotion gate (service/rollout.py; default: the production feedback store)."""
        self.settings = settings
        self.engine = engine or Engine(settings)
        self.registry = self.engine.registry
        self.loader = AdapterLoader(self.registry, settings.limits.adapter_loads)
        self.fleet = FleetMember(self.registry, coordinator or Coordinator(
            state_path(settings.fleet, settings.artifacts_dir), settings.fleet.replica_ttl_s),
            replica_id or local_replica_id(), settings.fleet, settings.adapters)
        self.feedback_store = FeedbackStore(settings.feedback, settings.artifacts_dir)
        self.rollouts = Rollouts(settings.rollout, self.fleet, self._knows, quality or self.feedback_store)
        self.fleet.tallies = self.rollouts.snapshot  # every replica's gate counts the whole fleet's traffic
        self.drift = DriftMonitor(settings.drift, self._artifact_dir)
        self.jobs = JobBuilder(settings, self.lease, self.drift)
        self.embeddings = EmbeddingService(settings, getattr(self.engine, "encoder", None), self.registry, self.drift,
                                           self.loader.buckets)
        self._stop_gauges = None

    def start(self) -> None:
        self.engine.start(desired=self.fleet.plan)  # the admin-set adapters, before serving
        self.fleet.start()
        self.drift.start()
        self.feedback_store.start()
        self._stop_gauges = metrics.poll(self._sample_gauges)

    def stop(self) -> None:
        self.rollouts.stop()
        self.fleet.stop()
        self.engine.stop()
        self.loader.stop()
        self.embeddings.stop()
        self.drift.stop()
        self.feedback_store.stop()
        if self._stop_gauges is not None:
            self._stop_gauges.set()

    def _knows(self, name: str) -> bool:
        return name in self.registry.catalog.adapters or name in self.registry.model_ids()

    def _artifact_dir(self, name: str):
        """Where `name`'s artifact is (the drift monitor reads its reference profile), or None."""
        entry = self.registry.adapters.get(name)
        if entry is None:
            return self.registry.catalog.models.get(name) or self.embeddings.artifact_dir(name)
        return entry.path

    def _sample_gauges(self) -> None:
        metrics.queue_state(self.engine.scheduler.queue_depth(), ENGINE_QUEUE_CAPACITY)
        metrics.adapters_loaded(len(self.registry.adapters))
        self.feedback_store.refresh_gauges()

    # ---- inference -------------------------------------------------------------------
    async def complete(self, request: CompletionRequest, principal: Principal | None) -> CompletionResponse:
        return await self._aliased(self._complete, request, principal)

    async def chat(self, request: ChatCompletionRequest, principal: Principal | None) -> ChatCompletionResponse:
        return await self._aliased(self._chat, request, principal)

    async def classify(self, request: ClassifyRequest, principal: Principal | None) -> ClassifyResponse:
        return await self._aliased(self._classify, request, principal)

    async def stream_complete(self, request: CompletionRequest, principal: Principal | None) -> AsyncIterator[dict]:
        async for chunk in self._aliased_stream(self._stream_complete, self._complete, request, principal):
            yield chunk

    async def stream_chat(self, request: ChatCompletionRequest, principal: Principal | None) -> AsyncIterator[dict]:
        async for chunk in self._aliased_stream(self._stream_chat, self._chat, request, principal):
            yield chunk

    async def _aliased(self, serve, request, principal: Principal | None):
        """Serve `request` (an alias resolves once to a version, counted for it; a sampled copy goes to the
        shadow version after the client's answer is complete)."""
        route = self.rollouts.route(request.model, principal, getattr(request, "user", None))
        if route is None:
            return await serve(request, principal)
        reply = await self.rollouts.serve(route, lambda: serve(_as(request, route.version), route.principal))
        self._shadow(route, serve, request, answers_of(reply))
        return reply

    async def _aliased_stream(self, stream, serve, request, principal: Principal | None) -> AsyncIterator[dict]:
        route = self.rollouts.route(request.model, principal, getattr(request, "user", None))
        if route is None:
            async for chunk in stream(request, principal):
                yield chunk
            return
        texts: dict[int, str] = {}
        started = time.perf_counter()
        try:
            async for chunk in stream(_as(request, route.version), route.principal):
                for choice in chunk.get("choices") or ():
                    piece = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                    texts[choice.get("index", 0)] = texts.get(choice.get("index", 0), "") + (piece or "")
                yield chunk
        except Exception as exc:  # a client that went away (cancelled, GeneratorExit) counts for no version
            self.rollouts.failed(route.alias, route.version, "primary", exc, time.perf_counter() - started)
            raise
        self.rollouts.record(route.alias, route.version, "primary", True, time.perf_counter() - started)
        self._shadow(route, serve, request.model_copy(update={"stream": False, "stream_options": None}),
                         [texts[i] for i in sorted(texts)])

    def _shadow(self, route: Route, serve, request, primary: list[str]) -> None:
        if route.shadow is not None:
            self.rollouts.shadow_copy(route, lambda: serve(_as(request, route.shadow), None), primary, answers_of)

    async def _complete(self, request: CompletionRequest, principal: Principal | None) -> CompletionResponse:
        job = await self.jobs.completion(request, principal)
        with naming(job.model):
            results, prompt_tokens = await self._generate(job)
        want = request.logprobs is not None
        reply = CompletionResponse(id=_id("cmpl"), created=int(time.time()), model=job.model,
                                   choices=[completion_choice(r, want, job.echo(r.index)) for r in results],
                                   usage=usage(prompt_tokens, sum(r.completion_tokens for r in results)))
        self._remember(reply.id, job.model, principal, _inputs(request, job.n), [r.text for r in results])
        return reply

    async def _chat(self, request: ChatCompletionRequest, principal: Principal | None) -> ChatCompletionResponse:
        job = await self.jobs.chat(request, principal)
        replies = tool_replies(request, job.tool_format)
        with naming(job.model):
            results, prompt_tokens = await self._generate(job)
        reply = ChatCompletionResponse(id=_id("chatcmpl"), created=int(time.time()), model=job.model,
                                       choices=[chat_choice(r, request.logprobs, replies(r.index)) for r in results],
                                       usage=usage(prompt_tokens, sum(r.completion_tokens for r in results)))
        self._remember(reply.id, job.model, principal, _inputs(request, job.n), [r.text for r in results])
        return reply

    async def _stream_complete(self, request: CompletionRequest, principal: Principal | None) -> AsyncIterator[dict]:
        job = await self.jobs.completion(request, principal)
        head = {"id": _id("cmpl"), "created": int(time.time()), "model": job.model}
        want = request.logprobs is not None
        unechoed = set(range(len(job.prompts) * job.n)) if job.echoes else set()

        def chunk(i: int, event) -> dict | None:
            if event is None:
                return None
            echo = job.echo(i) if i in unechoed else None  # the prompt goes with a choice's first piece
            unechoed.discard(i)
            return completion_chunk(head, i, event, want, echo)

        with naming(job.model):
            async for item in self._stream(job, head, "text_completion", request, chunk, principal):
                yield item

    async def _stream_chat(self, request: ChatCompletionRequest, principal: Principal | None) -> AsyncIterator[dict]:
        job = await self.jobs.chat(request, principal)
        head = {"id": _id("chatcmpl"), "created": int(time.time()), "model": job.model}
        replies = tool_replies(request, job.tool_format)
        with naming(job.model):
            async for item in self._stream(job, head, "chat.completion.chunk", request,
                                           lambda i, ev: chat_chunk(head, i, ev, request.logprobs, replies(i)), principal):
                yield item

    async def _classify(self, request: ClassifyRequest, principal: Principal | None) -> ClassifyResponse:
        texts = self.jobs.counted(request.inputs(), "input", "texts")
        lease = await self.lease(request.model, principal)
        try:
            loaded = lease.target.loaded
            if loaded.task != "classification":
                raise invalid(f"model {request.model!r} is not a classification model", "model",
                              "use /v1/completions or /v1/chat/completions for it")
            started = time.perf_counter()
            ranked = await asyncio.to_thread(self.engine.classify, lease, texts, self.settings.limits.max_prompt_tokens)
            metrics.classified(lease.model_id, len(texts), time.perf_counter() - started)
            encoded = [loaded.tokenizer(t)["input_ids"] for t in texts]
            self.drift.observe_prompts(lease.model_id, texts, [nonempty(loaded.tokenizer, ids) for ids in encoded],
                                       loaded.tokenizer, ranked)
        except Exception as exc:
            raise with_model(exc, lease.model_id)
        finally:
            lease.release()
        top = request.top_k or None
        data = [Classification(index=i, label=r[0][0], score=r[0][1],
                               scores=[LabelScore(label=name, score=s) for name, s in r[:top]]) for i, r in enumerate(ranked)]
        reply = ClassifyResponse(id=_id("cls"), created=int(time.time()), model=lease.model_id, data=data,
                                 usage=usage(sum(len(ids) for ids in encoded), 0))
        self.feedback_store.served(reply.id, lease.model_id, principal, "classification", texts, [c.label for c in data],
                                   labels=[name for name, _ in ranked[0]] if ranked else None)
        return reply

    async def feedback(self, request: FeedbackRequest, principal: Principal | None) -> FeedbackResponse:
        """Feedback on a response this service served (service/feedback.py: scoping, validation, storage)."""
        self._authorize(principal, "infer")
        return await self.feedback_store.feedback(request, principal)

    async def embed(self, request: EmbeddingRequest, principal: Principal | None) -> EmbeddingResponse:
        return await self.embeddings.embed(request, principal)

    async def list_models(self, principal: Principal | None) -> ModelList:
        rows = [(r, self.registry) for r in self.registry.list_models()]
        rows += [(r, self.embeddings.registry) for r in self.embeddings.model_rows()]
        by_id = {r["id"]: r for r, _ in rows}
        for alias, spec in sorted(self.fleet.aliases.items()):  # an alias lists like the version most traffic gets
            if spec.stable in by_id:
                rows.append(({**by_id[spec.stable], "id": alias, "kind": "alias"}, self.registry))
        if principal is not None:
            rows = [(r, reg) for r, reg in rows if principal.may_use(r["id"])]
        return ModelList(data=[self._model_card(r, reg) for r, reg in rows])

    @staticmethod
    def _model_card(row: dict, registry) -> ModelCard:
        """A listed model with vLLM's lineage fields (`parent`: the base id it derives from; `root`:
        the base at the root, itself for the base) and its context length (`max_model_len`)."""
        target = registry.targets.get(row["id"]) if row["kind"] == "model" else None
        base = row["base"] or None
        return ModelCard(**row, parent=base, root=base or row["id"],
                         max_model_len=context_of(target or registry.base))

    async def health(self) -> Health:
        if not self.engine.started:
            return Health(status="starting")
        sched = self.engine.scheduler
        return Health(status="ok", models=len(self.registry.model_ids()), adapters=len(self.registry.adapters),
                      queue_depth=sched.queue_depth(), active_rows=sched.active_rows, cache=self.engine.cache.stats())

    # ---- internals -------------------------------------------------------------------
    @staticmethod
    def _authorize(principal: Principal | None, scope: str, model: str | None = None) -> None:
        if principal is not None:
            Authenticator.authorize(principal, scope, model)

    async def lease(self, model: str, principal: Principal | None) -> Lease:
        """Authorize `model` for the principal, then resolve it (an on-demand load runs on the
        loader's pool, rate-limited per key; service/loader.py)."""
        self._authorize(principal, "infer", model)
        if self.embeddings.serves(model):
            raise invalid(f"model {model!r} is an embedding model", "model", f"use {ENDPOINTS['embedding']} for it")
        visible = principal.may_use if principal is not None else None  # hints name only models the key may use
        return await self.loader.acquire(model, getattr(principal, "key_id", None), visible)

    def _cache_key(self, job: Job) -> str | None:
        if not job.params.deterministic or self.engine.cache.size <= 0:
            return None
        lease = job.leases[0]
        version = f"{lease.target.key}:{lease.slot}"
        return self.engine.cache.key(job.model, version, [t for p in job.prompts for t in [*p, -1]], job.params, job.n,
                                     scope=job.scope)  # per key: no tenant learns another's prompts from timing

    def _start(self, job: Job) -> list[RequestStream]:
        """Hand each prompt's lease to the engine with its rows; when one cannot start, the started
        ones are cancelled and the leases not handed over are released (nothing leaks)."""
        streams: list[RequestStream] = []
        try:
            for lease, ids in zip(job.leases, job.prompts):
                streams.append(self.engine.generate(lease, ids, job.params, job.n, grammar=job.grammar,
                                                     scope=job.scope))
        except BaseException:
            for stream in streams:
                stream.cancel()
            for lease in job.leases[len(streams):]:
                lease.release()
            raise
        return streams

    async def _generate(self, job: Job) -> tuple[list[ChoiceResult], int]:
        """Run a unary job to the end (or answer it from the cache): its choices and prompt tokens."""
        prompt_tokens = sum(len(p) for p in job.prompts)
        key = self._cache_key(job)
        if key is not None:
            hit = self.engine.cache.get(key)
            metrics.cache_lookup(job.model, hit is not None)
            if hit is not None:
                job.release()
                return hit, prompt_tokens
        results = [ChoiceResult(i) for i in range(len(job.prompts) * job.n)]
        streams = self._start(job)
        first = True
        try:
            for p, stream in enumerate(streams):
                async for event in stream:
                    if first and event.text:
                        metrics.first_token(job.model, time.perf_counter() - job.started)
                        first = False
                    results[p * job.n + event.index].add(event)
        finally:  # caller cancelled (client gone) or a choice failed: stop the rest
            for stream in streams:
                stream.cancel()
        completion = sum(r.completion_tokens for r in results)
        metrics.generation_finished(job.model, prompt_tokens, completion, time.perf_counter() - job.started)
        if key is not None:
            self.engine.cache.put(key, results)
        return results, prompt_tokens

    def _remember(self, response_id: str, model: str, principal: Principal | None, inputs: list[str | None],
                  texts: list[str]) -> None:
        """A generated reply's record for feedback: choice i's input and text."""
        self.feedback_store.served(response_id, model, principal, "generation", inputs, texts)

    async def _stream(self, job: Job, head: dict, obj: str, request: SamplingFields, make,
                      principal: Principal | None = None) -> AsyncIterator[dict]:
        queue: asyncio.Queue = asyncio.Queue()
        texts = [""] * (len(job.prompts) * job.n)  # what each choice generated, for the feedback record
        text_cap = self.settings.feedback.max_prediction_chars
        streams = self._start(job)

        async def pump(p: int, stream) -> None:
            try:
                async for event in stream:
                    await queue.put((p * job.n + event.index, event))
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                await queue.put((p, exc))
            finally:
                await queue.put((p, None))

        tasks = [asyncio.create_task(pump(p, s)) for p, s in enumerate(streams)]
        try:
            for i in range(len(job.prompts) * job.n):
                opening = make(i, None)
                if opening is not None:
                    yield opening
            done, completion, last = 0, 0, {}
            while done < len(streams):
                index, event = await queue.get()
                if event is None:
                    done += 1
                    continue
                if isinstance(event, BaseException):
                    raise event
                now = time.perf_counter()
                if event.text:
                    if not last:
                        metrics.first_token(job.model, now - job.started)
                    elif index in last:
                        metrics.inter_token(job.model, now - last[index])
                    last[index] = now
                completion += event.completion_tokens if event.finish_reason else 0
                if len(texts[index]) <= text_cap:
                    texts[index] += event.text
                yield make(index, event)
            prompt_tokens = sum(len(p) for p in job.prompts)
            metrics.generation_finished(job.model, prompt_tokens, completion, time.perf_counter() - job.started)
            self._remember(head["id"], job.model, principal, _inputs(request, job.n), texts)
            if request.stream_options is not None and request.stream_options.include_usage:
                yield usage_chunk(head, obj, prompt_tokens, completion)
        finally:
            for task in tasks:
                task.cancel()
            for stream in streams:
                stream.cancel()


def _as(request, model: str):
    """The request as one for `model` (an alias's resolved version)."""
    return request.model_copy(update={"model": model})


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _inputs(request: SamplingFields, n: int) -> list[str | None]:
    """Each choice's input text for the feedback record: its prompt (completions; None for token ids), or
    the conversation's last user message (chat)."""
    if isinstance(request, ChatCompletionRequest):
        users = [m.text() for m in request.messages if m.role == "user"]
        return [users[-1] if users else None] * n
    return [p if isinstance(p, str) else None for p in request.prompts() for _ in range(n)]
