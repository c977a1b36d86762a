"""Turning engine results into OpenAI-shaped responses and stream chunks (completion and chat).

An echoed completion (`Echo`: the prompt's text and its tokens' offsets in it) starts with the
prompt; its logprobs (the engine sends the prompt's first) keep the prompt tokens' offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.engine.types import Event, TokenLogprob
from service.tools import ToolReply
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


ECHO_WINDOW = 6  # tokens of context when measuring a token's text (a leading space shows only after another token)


@dataclass(frozen=True)
class Echo:
    """The prompt an echoed completion starts with, and where each prompt token starts in it."""

    text: str
    offsets: tuple[int, ...] = ()


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


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def echo_of(tokenizer, text: str, ids: list[int], offsets: bool) -> Echo:
    """The echoed prompt; with `offsets`, where each token starts in `text`: the length of the text of the
    tokens before it (a token's leading space is its own; special tokens add nothing). Linear: each token's
    length is what it adds to the decoding of a few tokens before it."""
    if not offsets:
        return Echo(text)
    starts, length = [], 0
    for j in range(len(ids)):
        starts.append(min(length, len(text)))
        window = max(0, j - ECHO_WINDOW)
        length += len(decode(tokenizer, ids[window:j + 1])) - len(decode(tokenizer, ids[window:j]))
    return Echo(text, tuple(starts))


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def completion_logprobs(items: list[TokenLogprob], echo: Echo | None = None) -> CompletionLogprobs:
    out = CompletionLogprobs()
    given = echo.offsets if echo is not None else ()
    offset = len(echo.text) if echo is not None else 0
    for i, item in enumerate(items):
        out.tokens.append(item.token)
        out.token_logprobs.append(item.logprob)
        out.top_logprobs.append(None if item.logprob is None else {tok: lp for tok, lp in item.top})
        if i < len(given):
            out.text_offset.append(given[i])
            continue
        out.text_offset.append(offset)
        offset += len(item.token)
    return out


def chat_logprobs(items: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(content=[
        ChatTokenLogprob(token=i.token, logprob=i.logprob, bytes=list(i.token.encode()),
                         top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in i.top])
        for i in items])


def completion_choice(result: ChoiceResult, want_logprobs: bool, echo: Echo | None = None) -> CompletionChoice:
    return CompletionChoice(index=result.index, text=(echo.text if echo else "") + result.text,
                            finish_reason=result.finish_reason,
                            logprobs=completion_logprobs(result.logprobs, echo) if want_logprobs else None)


def chat_choice(result: ChoiceResult, want_logprobs: bool, reply: ToolReply | None = None) -> ChatChoice:
    """A chat choice; with tools (`reply`), its output becomes content and tool calls."""
    content, calls = reply.finish(result.text) if reply is not None else (result.text, [])
    return ChatChoice(index=result.index, message=AssistantMessage(content=content, tool_calls=calls or None),
                      finish_reason=_finish(result.finish_reason, bool(calls)),
                      logprobs=chat_logprobs(result.logprobs) if want_logprobs else None)


def _finish(reason: str | None, called: bool) -> str | None:
    return "tool_calls" if called and reason == "stop" else reason


def completion_chunk(head: dict, index: int, event: Event, want_logprobs: bool, echo: Echo | None = None) -> dict:
    """A choice's piece; `echo` on its first piece only."""
    choice = CompletionChoice(index=index, text=(echo.text if echo else "") + event.text,
                              finish_reason=event.finish_reason,
                              logprobs=completion_logprobs(event.logprobs, echo) if want_logprobs else None)
    return {**head, "object": "text_completion", "choices": [choice.model_dump()]}


def chat_chunk(head: dict, index: int, event: Event | None, want_logprobs: bool, reply: ToolReply | None = None) -> dict:
    """A chat choice's piece; with tools (`reply`), content and `delta.tool_calls` as OpenAI streams them."""
    if event is None:  # opening chunk of a choice: the role
        choice = ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))
    else:
        content, calls = reply.delta(event.text) if reply is not None else (event.text or None, [])
        finish = event.finish_reason
        if reply is not None and finish is not None:
            rest, more = reply.close()
            content, calls = ((content or "") + (rest or "")) or None, calls + more
            finish = _finish(finish, reply.called())
        choice = ChatChunkChoice(index=index, delta=ChatDelta(content=content, tool_calls=calls or None),
                                 finish_reason=finish,
                                 logprobs=chat_logprobs(event.logprobs) if want_logprobs else None)
    return ChatCompletionChunk(**head, choices=[choice]).model_dump(exclude_none=True)


def usage_chunk(head: dict, obj: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {**head, "object": obj, "choices": [], "usage": usage(prompt_tokens, completion_tokens).model_dump()}
