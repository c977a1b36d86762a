"""Typed request/response models of the serving API, shaped like OpenAI's.

Requests forbid unknown fields (a typo is a 400 naming the field, not silently ignored);
responses are plain models the transports serialize. Used by `ServingCore` and both
transports.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictInt, model_validator

from training.artifact.errors import InvalidRequest

from service.errors import with_param
from service.schema_base import Request, find_surrogate  # noqa: F401 - find_surrogate re-exported
from service.schemas_output import ResponseFormat, StructuredOutputs, ToolCall, ToolCallIn, ToolFields

# Seeds are signed 64-bit integers (OpenAI's `seed`, the gRPC API's int64); larger ones are refused.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
MAX_STOP_TOKEN_IDS = 256
TokenIds = Annotated[list[StrictInt], Field(min_length=1)]  # a prompt as token ids (vocabulary checked by the core)
class StreamOptions(Request):
    include_usage: bool = False


class SamplingFields(Request):
    model: str
    max_tokens: int | None = Field(None, ge=0)  # 0 only with echo (the prompt's logprobs alone)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    user: str | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # vLLM's extensions: generate at least min_tokens (end-of-sequence, stop ids and stop strings wait),
    # go on past end-of-sequence, stop at these token ids, keep the stop string in the text
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[StrictInt] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    include_stop_str_in_output: bool = False
    # structured outputs: OpenAI's response_format, vLLM's structured_outputs (service/schemas_output.py)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:  # as vLLM: raised as is, a 400 naming the field
            raise with_param(InvalidRequest("stream_options is only allowed with stream: true",
                                            "set stream to true or leave stream_options out"), "stream_options")
        return self

    def completion_limit(self, default: int) -> int:
        """max_tokens per choice: the request's (chat: or max_completion_tokens), else `default`."""
        for value in (self.max_tokens, getattr(self, "max_completion_tokens", None)):
            if value is not None:
                return value
        return default

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def texts_or_ids(value: str | list) -> list[str | list[int]]:
    """A request's `prompt` / `input` as a list of items, each a text or a list of token ids."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [list(value)]
    return list(value)


class CompletionRequest(SamplingFields):
    # text, texts, one prompt as token ids, or several (OpenAI accepts all four)
    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text or a list of token ids."""
        return texts_or_ids(self.prompt)


class TextPart(Request):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(Request):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None  # None only for an assistant turn with tool_calls
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant turns: the calls it made
    tool_call_id: str | None = None  # tool turns: the call this answers

    @model_validator(mode="after")
    def _shape(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise with_param(InvalidRequest(f"a {self.role} message needs content",
                                            "only an assistant message with tool_calls may leave content out"),
                             "messages.content")
        if self.role == "tool" and not self.tool_call_id:
            raise with_param(InvalidRequest("a tool message needs tool_call_id",
                                            "set it to the id of the assistant's tool call it answers"),
                             "messages.tool_call_id")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingFields, ToolFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class ClassifyRequest(Request):
    model: str
    input: str | list[str]
    top_k: int | None = Field(None, ge=0)
    user: str | None = None

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class LoadAdapterRequest(Request):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    path: str | None = None
    pin: bool | None = None


class PinRequest(Request):
    pinned: bool = True


# ---- responses -------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)  # None: an echoed prompt's first token
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] = Field(default_factory=list)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's pieces: {index, id, type, function: {name, arguments}}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class LabelScore(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    index: int
    label: str
    score: float
    scores: list[LabelScore]


class ClassifyResponse(BaseModel):
    id: str
    object: Literal["classification"] = "classification"
    created: int
    model: str
    data: list[Classification]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneserve"
    kind: str
    base: str = ""
    task: str = ""
    root: str | None = None  # the base model at the root of its lineage (vLLM: a path; never one here)
    parent: str | None = None  # adapters and full models: the base id they derive from; the base: None
    max_model_len: int | None = None  # prompt + completion tokens the model takes


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FleetStatus(BaseModel):
    """How far an admin change has spread: the state generation it wrote and the live Engine replicas
    that applied it, have not yet (within fleet.ack_timeout_s) or failed to (replica -> error)."""

    generation: int
    applied: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.pending and not self.failed


class ReplicaState(BaseModel):
    replica: str
    applied: int
    errors: dict[str, str] = Field(default_factory=dict)
    seen_s_ago: float


class FleetView(BaseModel):
    generation: int
    replicas: list[ReplicaState]


class ParityNumbers(BaseModel):
    prompts: int
    token_agreement: float | None = None
    label_agreement: float | None = None
    mean_kl: float
    max_logprob_diff: float | None = None
    max_prob_diff: float | None = None
    worst_prompt: str | None = None
    seconds: float | None = None


class AdapterInfo(BaseModel):
    name: str
    path: str
    base: str
    method: str
    task: str
    pinned: bool
    loaded_at: int
    version: str
    parity: ParityNumbers | None = Field(None, description="its golden set replayed through the served form at load "
                                         "(absent for artifacts without a golden set)")
    fleet: FleetStatus | None = Field(None, description="admin replies: the replicas that applied the change")


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterInfo]
    fleet: FleetView | None = Field(None, description="the admin-set state's generation and each live replica's")


class Health(BaseModel):
    status: Literal["ok", "starting", "unavailable"]
    models: int = 0
    adapters: int = 0
    queue_depth: int = 0
    active_rows: int = 0
    cache: dict[str, Any] = Field(default_factory=dict)
