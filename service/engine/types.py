"""Plain data passed between the serving core, the scheduler and the decode loop."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from service.engine.target import Target
    from service.structured import Constraint


@dataclass(frozen=True)
class SamplingParams:
    """Per-choice generation settings; temperature 0 means greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token + k alternatives
    echo: bool = False  # with logprobs: the prompt's tokens and logprobs come first (max_tokens may be 0)
    min_tokens: int = 0  # until then end-of-sequence and stop_token_ids are masked and stop strings wait
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str: bool = False  # a stop string (or stop token's text) stays in the output
    constraint: "Constraint | None" = None  # structured output (service/structured.py); the compiled grammar rides on GenRow

    @property
    def prompt_logprobs(self) -> bool:
        return self.echo and self.logprobs is not None

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0.0 or self.seed is not None


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None  # None: the first token of an echoed prompt (nothing predicts it)
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Event:
    """A piece of one choice: new text, its logprobs, and on the last event the finish reason."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: BaseException | None = None


class RequestStream:
    """Events of one request (all its choices), filled by the engine thread, read with `async for`.

    Leaving the loop early (client gone) cancels the request: the engine drops its rows at the
    next decode step.
    """

    def __init__(self, choices: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.remaining = choices
        self.cancelled = threading.Event()

    def put(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # loop closed: the consumer is gone
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()

    async def __aiter__(self):
        try:
            while self.remaining > 0:
                event = await self.queue.get()
                if event.error is not None:
                    raise event.error
                if event.finish_reason is not None:
                    self.remaining -= 1
                yield event
        finally:
            if self.remaining > 0:
                self.cancel()


@dataclass
class GenRow:
    """One choice of one request as the scheduler sees it."""

    prompt_ids: list[int]
    params: SamplingParams
    target: "Target"  # the model object it runs on
    adapter: str | None  # internal adapter slot on that model, None = bare model
    index: int
    stream: RequestStream
    model: str  # the request's resolved model id (metric label)
    release: Callable[[], None] = lambda: None
    queued_at: float = 0.0  # time.monotonic() when the scheduler received it
    decoding_since: float = 0.0  # time.monotonic() when its prefill ended (per-request timing metrics)
    grammar: Any = None  # the compiled grammar of params.constraint (each row matches its own copy)
    scope: str | None = None  # the API key whose prefix cache entries the row may use (None: in-process callers)
