"""Turning engine results into OpenAI-shaped responses and stream chunks (completion and chat)."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.engine.types import Event, TokenLogprob
from service.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    TopLogprob,
    Usage,
)


@dataclass
class ChoiceResult:
    """Everything generated for one choice, accumulated from its events."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def add(self, event: Event) -> None:
        self.text += event.text
        self.logprobs.extend(event.logprobs)
        self.completion_tokens = max(self.completion_tokens, event.completion_tokens)
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def completion_logprobs(items: list[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for item in items:
        out.tokens.append(item.token)
        out.token_logprobs.append(item.logprob)
        out.top_logprobs.append({tok: lp for tok, lp in item.top})
        out.text_offset.append(offset)
        offset += len(item.token)
    return out


def chat_logprobs(items: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(content=[
        ChatTokenLogprob(token=i.token, logprob=i.logprob, bytes=list(i.token.encode()),
                         top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in i.top])
        for i in items])


def completion_choice(result: ChoiceResult, want_logprobs: bool) -> CompletionChoice:
    return CompletionChoice(index=result.index, text=result.text, finish_reason=result.finish_reason,
                            logprobs=completion_logprobs(result.logprobs) if want_logprobs else None)


def chat_choice(result: ChoiceResult, want_logprobs: bool) -> ChatChoice:
    return ChatChoice(index=result.index, message=AssistantMessage(content=result.text),
                      finish_reason=result.finish_reason,
                      logprobs=chat_logprobs(result.logprobs) if want_logprobs else None)


def completion_chunk(head: dict, index: int, event: Event, want_logprobs: bool) -> dict:
    choice = CompletionChoice(index=index, text=event.text, finish_reason=event.finish_reason,
                              logprobs=completion_logprobs(event.logprobs) if want_logprobs else None)
    return {**head, "object": "text_completion", "choices": [choice.model_dump()]}


def chat_chunk(head: dict, index: int, event: Event | None, want_logprobs: bool) -> dict:
    if event is None:  # opening chunk of a choice: the role
        choice = ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))
    else:
        choice = ChatChunkChoice(index=index, delta=ChatDelta(content=event.text or None),
                                 finish_reason=event.finish_reason,
                                 logprobs=chat_logprobs(event.logprobs) if want_logprobs else None)
    return ChatCompletionChunk(**head, choices=[choice]).model_dump(exclude_none=True)


def usage_chunk(head: dict, obj: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {**head, "object": obj, "choices": [], "usage": usage(prompt_tokens, completion_tokens).model_dump()}
