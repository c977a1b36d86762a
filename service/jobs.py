"""Turning a validated request into a `Job` for the engine: limits checked, the model leased once (and
authorized once), the prompt rendered with the leased model's tokenizer and chat template, token ids
checked against its vocabulary and context. `ServingCore` (service/core.py) owns a `JobBuilder`:

    jobs = JobBuilder(settings, lease=core.lease, drift=core.drift)
    job = await jobs.completion(request, principal)   # or jobs.chat(...); job.release() when not handed on
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator

from training.artifact.errors import InvalidRequest

from service.auth import Principal
from service.drift import DriftMonitor
from service.engine.registry import Lease
from service.engine.sampling import MIN_TEMPERATURE
from service.engine.types import SamplingParams
from service.errors import with_model, with_param
from service.render import Echo, decode, echo_of
from service.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from service.settings import ServiceSettings
from service.structured import Grammars, constraint_of
from service.tools import chat_messages, check_format, tool_constraint

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def invalid(message: str, param: str | None = None, hint: str | None = None) -> InvalidRequest:
    return with_param(InvalidRequest(message, hint), param)


@contextmanager
def naming(model_id: str) -> Iterator[None]:
    """Errors raised inside name the resolved model (the transports label their metrics with it)."""
    try:
        yield
    except Exception as exc:
        raise with_model(exc, model_id)


@dataclass
class Job:
    """A validated generation request: one lease and prompt per prompt, shared sampling params."""

    model: str  # the resolved id (leases[0].model_id)
    leases: list[Lease]
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    started: float
    scope: str | None = None  # the API key the reply is cached for (None: in-process callers share one scope)
    echoes: list[Echo] | None = None  # per prompt, when the request asked for echo
    grammar: Any = None  # params.constraint compiled for the model's tokenizer (service/structured.py)
    tool_format: str | None = None  # the model's declared tool-call format (chat with tools; None: hermes)

    def echo(self, choice: int) -> Echo | None:
        return self.echoes[choice // self.n] if self.echoes else None

    def release(self) -> None:
        for lease in self.leases:
            lease.release()


class JobBuilder:
    def __init__(self, settings: ServiceSettings, lease: Callable[[str, Principal | None], Awaitable[Lease]],
                 drift: DriftMonitor) -> None:
        """`lease(model, principal)` authorizes and resolves a model (ServingCore.lease)."""
        self.settings = settings
        self.lease = lease
        self.drift = drift
        self.grammars = Grammars(settings.limits.grammar_cache_size)

    async def completion(self, request: CompletionRequest, principal: Principal | None) -> Job:
        prompts = self.counted(request.prompts(), "prompt", "prompts")
        return await self._job(request, request.logprobs, principal, lambda tokenizer, manifest: prompts)

    async def chat(self, request: ChatCompletionRequest, principal: Principal | None) -> Job:
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        return await self._job(request, logprobs, principal,
                               lambda tokenizer, manifest: [self.chat_prompt(request, tokenizer, manifest)])

    def counted(self, texts: list[str], param: str, what: str) -> list[str]:
        most = self.settings.limits.max_prompts
        if not texts or len(texts) > most:
            raise invalid(f"{param} must hold 1 to {most} {what}, got {len(texts)}", param,
                          f"send between 1 and {most} {what} per request; split larger jobs")
        return texts

    def params(self, request: SamplingFields, logprobs: int | None) -> SamplingParams:
        limits = self.settings.limits
        max_tokens = request.completion_limit(limits.default_max_tokens)
        checks = [
            (max_tokens > limits.max_tokens, "max_tokens", f"max_tokens {max_tokens} exceeds the limit {limits.max_tokens}"),
            (request.n > limits.max_n, "n", f"n {request.n} exceeds the limit {limits.max_n}"),
            (len(request.stop_list()) > limits.max_stop, "stop", f"at most {limits.max_stop} stop strings are allowed"),
            (any(len(s) > limits.max_stop_chars for s in request.stop_list()), "stop",
             f"a stop string is longer than the limit of {limits.max_stop_chars} characters (max_stop_chars)"),
            (logprobs is not None and logprobs > limits.max_logprobs, "logprobs",
             f"logprobs {logprobs} exceeds the limit {limits.max_logprobs}"),
            (request.presence_penalty != 0 or request.frequency_penalty != 0, "presence_penalty",
             "presence_penalty and frequency_penalty are not supported"),
            (max_tokens == 0 and not getattr(request, "echo", False), "max_tokens",
             "max_tokens 0 is allowed only with echo (to get the prompt's logprobs)"),
            (request.min_tokens > max_tokens, "min_tokens",
             f"min_tokens {request.min_tokens} exceeds max_tokens {max_tokens}"),
        ]
        for failed, param, message in checks:
            if failed:
                raise invalid(message, param, "lower the value or leave the field out")
        temperature = 1.0 if request.temperature is None else request.temperature
        temperature = 0.0 if temperature < MIN_TEMPERATURE else temperature  # below it: greedy (no overflow)
        return SamplingParams(max_tokens=max_tokens, temperature=temperature,
                              top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed,
                              stop=tuple(request.stop_list()), logprobs=logprobs, echo=getattr(request, "echo", False),
                              min_tokens=request.min_tokens, ignore_eos=request.ignore_eos,
                              stop_token_ids=tuple(sorted(set(request.stop_token_ids or ()))),
                              include_stop_str=request.include_stop_str_in_output)

    async def _job(self, request: SamplingFields, logprobs: int | None, principal: Principal | None,
                   render: Callable[[Any, Any], list[str | list[int]]]) -> Job:
        """Validate, lease the model once (authorized once), render the prompts with its tokenizer, encode
        (prompts given as token ids are checked against its vocabulary and decoded for the drift monitor)."""
        limits = self.settings.limits
        params = self.params(request, logprobs)
        lease = await self.lease(request.model, principal)
        leases = [lease]
        try:
            loaded = lease.target.loaded
            if loaded.task != "causal-lm":
                raise invalid(f"model {request.model!r} is a {loaded.task} model", "model", "use /v1/classify for it")
            manifest = lease.adapter.manifest if lease.adapter is not None else None
            given = render(loaded.tokenizer, manifest)
            for _ in given[1:]:  # one by one: each lease is released below if a later step fails
                leases.append(lease.share())
            vocab = vocabulary(loaded)
            check_ids(params.stop_token_ids, vocab, "stop_token_ids")
            prompts = [nonempty(loaded.tokenizer, loaded.tokenizer(p)["input_ids"]) if isinstance(p, str)
                       else check_ids(p, vocab, "prompt") for p in given]
            context = context_of(lease.target)
            for ids in prompts:
                if len(ids) > limits.max_prompt_tokens:
                    raise invalid(f"the prompt has {len(ids)} tokens; the limit is {limits.max_prompt_tokens}",
                                  "prompt", "shorten the prompt")
                if context and len(ids) + params.max_tokens > context:
                    raise invalid(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                                  f"model's context of {context} tokens", "max_tokens", "lower max_tokens")
            texts = [p if isinstance(p, str) else decode(loaded.tokenizer, p) for p in given]
            self.drift.observe_prompts(lease.model_id, texts, prompts, loaded.tokenizer)
            if getattr(request, "tools", None):
                check_format(getattr(manifest, "tool_call_format", None))
            constraint = (tool_constraint(request) if getattr(request, "tools", None) else None) \
                or constraint_of(request, getattr(manifest, "response_schema", None))
            grammar = None
            if constraint is not None:  # compiled (or found in the cache) before the job is admitted: a bad one is a 400
                grammar = await asyncio.to_thread(self.grammars.compile, loaded, constraint)
                params = dataclasses.replace(params, constraint=constraint)
            echoes = None
            if params.echo:
                echoes = await asyncio.to_thread(lambda: [echo_of(loaded.tokenizer, t, ids, params.prompt_logprobs)
                                                          for t, ids in zip(texts, prompts)])
        except BaseException as exc:
            for held in leases:
                held.release()
            raise with_model(exc, lease.model_id)
        return Job(lease.model_id, leases, prompts, params, request.n, time.perf_counter(),
                   scope=principal.key_id if principal is not None else None, echoes=echoes, grammar=grammar,
                   tool_format=getattr(manifest, "tool_call_format", None))

    def chat_prompt(self, request: ChatCompletionRequest, tokenizer: Any, manifest: Any = None) -> str:
        """The conversation (tools and tool turns included) rendered with the adapter's declared chat template,
        else its tokenizer's, else the configured one."""
        template = (getattr(manifest, "chat_template", None) or tokenizer.chat_template or self.settings.chat_template
                    or DEFAULT_CHAT_TEMPLATE)
        messages, extra = chat_messages(request, template)
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True, **extra)


def check_ids(ids, vocab: int, param: str) -> list[int]:
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise invalid(f"token id {bad} in {param} is outside the model's vocabulary (0 to {vocab - 1})", param,
                      "send token ids from the model's own tokenizer")
    return list(ids)

def nonempty(tokenizer, ids: list[int]) -> list[int]:
    """A prompt's ids; an empty encoding becomes one BOS (or EOS) token to generate from."""
    return ids or [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]


def context_of(target) -> int | None:
    """Prompt + completion tokens the target's model takes (its position embeddings), None when unknown."""
    return getattr(getattr(target.model, "config", None), "max_position_embeddings", None)


def vocabulary(loaded) -> int:
    """Token ids below this are both embedded by the model and known to its tokenizer."""
    sizes = [len(loaded.tokenizer), getattr(loaded.model.config, "vocab_size", None)]
    return min(s for s in sizes if s)
