"""Protobuf messages ↔ the serving core's OpenAI-shaped schemas. Pure functions, no serving logic.

    request = generate_request(pb_request, stream=False)     # -> CompletionRequest | ChatCompletionRequest
    pb_reply = generate_response(await core.complete(request, principal))
    pb_chunk = generate_chunk(chunk_dict)                     # None for chunks that carry nothing

Requests are validated by the same pydantic models the REST API uses, so limits and messages
match; a validation failure becomes `InvalidRequest` naming the field (INVALID_ARGUMENT).
Responses may arrive as pydantic models or plain dicts (through a Ray handle): both work.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ValidationError

from service.embedding_schemas import EmbeddingRequest
from service.errors import with_param
from service.grpc.gen.tuneserve.v1 import admin_pb2, inference_pb2 as pb
from service.feedback_schemas import FeedbackRequest
from service.rollout_schemas import RolloutRequest
from service.schemas import ChatCompletionRequest, ClassifyRequest, CompletionRequest, LoadAdapterRequest
from training.artifact.errors import InvalidRequest

_OPTIONAL_SAMPLING = ("max_tokens", "temperature", "top_p", "seed", "n", "ignore_eos", "min_tokens",
                      "include_stop_str_in_output")


def validated(cls: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "request"
        raise with_param(InvalidRequest(f"{field}: {first['msg']}", "fix the field and send the request again"),
                         field) from None


def _require_model(model: str) -> None:
    if not model:
        raise with_param(InvalidRequest("model is required", "set `model` to an id from ListModels"), "model")


def as_dict(obj: Any) -> dict[str, Any]:
    return obj.model_dump() if isinstance(obj, BaseModel) else dict(obj)


# ---- requests ---------------------------------------------------------------------------
class Undecodable:
    """A request message that did not parse (e.g. a string field holding invalid UTF-8, such as an
    encoded lone surrogate); the handler answers INVALID_ARGUMENT instead of grpc's UNKNOWN."""

    model = ""

    def __init__(self, error: str) -> None:
        self.error = error


def tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that returns `Undecodable` instead of raising."""
    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and kin
            return Undecodable(str(exc)[:200])
    return parse


def check_decoded(msg: Any) -> None:
    if isinstance(msg, Undecodable):
        raise InvalidRequest(f"the request is not a valid protobuf message: {msg.error}",
                             "strings must be valid UTF-8 (a lone UTF-16 surrogate has no UTF-8 form); "
                             "build requests with stubs generated from proto/tuneserve/v1")


def generate_request(msg: pb.GenerateRequest, stream: bool = False) -> CompletionRequest | ChatCompletionRequest:
    _require_model(msg.model)
    data: dict[str, Any] = {"model": msg.model}
    data.update({name: getattr(msg, name) for name in _OPTIONAL_SAMPLING if msg.HasField(name)})
    if msg.stop:
        data["stop"] = list(msg.stop)
    if msg.stop_token_ids:
        data["stop_token_ids"] = list(msg.stop_token_ids)
    if stream:
        data.update(stream=True, stream_options={"include_usage": True})
    data.update(_constraint(msg.constraint) if msg.HasField("constraint") else {})
    which = msg.WhichOneof("input")
    if which in ("prompt", "prompt_token_ids"):
        data["prompt"] = msg.prompt if which == "prompt" else list(msg.prompt_token_ids.ids)
        if msg.HasField("logprobs"):
            data["logprobs"] = msg.logprobs
        if msg.HasField("echo"):
            data["echo"] = msg.echo
        return validated(CompletionRequest, data)
    if msg.HasField("echo"):
        raise with_param(InvalidRequest("echo applies to completions (prompt), not to chat (messages)",
                                        "leave echo out of chat requests"), "echo")
    if which == "messages":
        data["messages"] = [_message(m) for m in msg.messages.messages]
        if msg.HasField("logprobs"):
            data.update(logprobs=True, top_logprobs=msg.logprobs)
        data.update(_tools(msg))
        return validated(ChatCompletionRequest, data)
    raise with_param(InvalidRequest("the request has neither prompt nor messages", "set exactly one of them"), "prompt")


def _constraint(c: pb.OutputConstraint) -> dict[str, Any]:
    """OutputConstraint -> the REST fields (JSON texts are parsed by the schemas' validation)."""
    which = c.WhichOneof("kind")
    if which == "json_object":
        return {"response_format": {"type": "json_object"}} if c.json_object else {}
    if which == "choice":
        return {"structured_outputs": {"choice": list(c.choice.choices)}}
    if which is None:
        return {}
    return {"structured_outputs": {{"json_schema": "json"}.get(which, which): getattr(c, which)}}


def _message(m: pb.ChatMessage) -> dict[str, Any]:
    item: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        item["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                              for c in m.tool_calls]
        item["content"] = m.content or None
    item.update({k: getattr(m, k) for k in ("tool_call_id", "name") if getattr(m, k)})
    return item


def _tools(msg: pb.GenerateRequest) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if msg.tools:
        data["tools"] = [{"type": "function", "function": {
            "name": f.name, **({"description": f.description} if f.description else {}),
            **({"parameters": _json(f.parameters_json, "tools.parameters_json")} if f.parameters_json else {})}}
            for f in msg.tools]
    if msg.HasField("tool_choice"):
        choice = msg.tool_choice
        data["tool_choice"] = choice if choice in ("none", "auto", "required") else {
            "type": "function", "function": {"name": choice}}
    if msg.HasField("parallel_tool_calls"):
        data["parallel_tool_calls"] = msg.parallel_tool_calls
    return data


def _json(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise with_param(InvalidRequest(f"{field} is not valid JSON: {exc}", "send a JSON schema as JSON text"),
                         field) from None


def classify_request(msg: pb.ClassifyRequest) -> ClassifyRequest:
    _require_model(msg.model)
    data: dict[str, Any] = {"model": msg.model, "input": list(msg.inputs)}
    if msg.HasField("top_k"):
        data["top_k"] = msg.top_k
    return validated(ClassifyRequest, data)


def embed_request(msg: pb.EmbedRequest) -> EmbeddingRequest:
    _require_model(msg.model)
    if bool(msg.inputs) == bool(msg.token_inputs):
        raise with_param(InvalidRequest("set exactly one of inputs and token_inputs",
                                        "send texts in inputs or token ids in token_inputs"), "inputs")
    data: dict[str, Any] = {"model": msg.model, "encoding_format": msg.encoding_format or "float",
                            "input": list(msg.inputs) or [list(t.ids) for t in msg.token_inputs]}
    if msg.HasField("dimensions"):
        data["dimensions"] = msg.dimensions
    if msg.user:
        data["user"] = msg.user
    return validated(EmbeddingRequest, data)


def load_adapter_request(msg: admin_pb2.LoadAdapterRequest) -> LoadAdapterRequest:
    data: dict[str, Any] = {"name": msg.name, "pin": msg.pin}
    if msg.HasField("path"):
        data["path"] = msg.path
    return validated(LoadAdapterRequest, data)


def feedback_request(msg: pb.FeedbackRequest) -> FeedbackRequest:
    data: dict[str, Any] = {"id": msg.id}
    value = msg.WhichOneof("value")
    if value is not None:
        data[value] = getattr(msg, value)
    data.update({name: getattr(msg, name) for name in ("index", "comment") if msg.HasField(name)})
    return validated(FeedbackRequest, data)


def feedback_response(resp: Any) -> pb.FeedbackResponse:
    return pb.FeedbackResponse(**{k: v for k, v in as_dict(resp).items() if k != "object"})


# ---- responses --------------------------------------------------------------------------
def _usage(data: dict[str, Any] | None) -> pb.Usage | None:
    return pb.Usage(**{k: data[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}) if data else None


def _token_triples(lp: dict[str, Any]) -> Iterable[tuple[str, float, list[tuple[str, float]]]]:
    if "content" in lp:  # chat shape: [{token, logprob, top_logprobs: [{token, logprob}]}]
        for item in lp["content"] or ():
            yield item["token"], item["logprob"], [(t["token"], t["logprob"]) for t in item.get("top_logprobs") or ()]
        return
    tops = lp.get("top_logprobs") or [{}] * len(lp.get("tokens") or ())  # completion shape: parallel lists
    for token, logprob, top in zip(lp.get("tokens") or (), lp.get("token_logprobs") or (), tops):
        yield token, logprob, list((top or {}).items())


def _logprobs(lp: dict[str, Any] | None) -> pb.Logprobs | None:
    if lp is None:
        return None
    return pb.Logprobs(tokens=[pb.TokenLogprob(token=t, logprob=v, top_logprobs=[pb.TopLogprob(token=a, logprob=b) for a, b in top])
                               for t, v, top in _token_triples(lp)])


def _text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice["text"] or ""
    return (choice.get("message") or choice.get("delta") or {}).get("content") or ""


def _tool_calls(choice: dict[str, Any], cls: type) -> list[Any]:
    calls = (choice.get("message") or choice.get("delta") or {}).get("tool_calls") or ()
    if cls is pb.ChunkChoice:  # deltas: {index, id?, function: {name?, arguments?}}
        return [pb.ToolCallDelta(index=c["index"], id=c.get("id") or "", name=(c.get("function") or {}).get("name") or "",
                                 arguments=(c.get("function") or {}).get("arguments") or "") for c in calls]
    return [pb.ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"]) for c in calls]


def _choice(choice: dict[str, Any], cls: type = pb.Choice) -> Any:
    return cls(index=choice["index"], text=_text(choice), finish_reason=choice.get("finish_reason") or "",
               logprobs=_logprobs(choice.get("logprobs")), tool_calls=_tool_calls(choice, cls))


def generate_response(resp: Any) -> pb.GenerateResponse:
    d = as_dict(resp)
    return pb.GenerateResponse(id=d["id"], model=d["model"], created=d["created"],
                               choices=[_choice(c) for c in d["choices"]], usage=_usage(d.get("usage")))


def generate_chunk(chunk: Any) -> pb.GenerateChunk | None:
    """A stream chunk, or None when it carries no text, finish reason, logprobs or usage (chat's role opener)."""
    d = as_dict(chunk)
    choices = [_choice(c, pb.ChunkChoice) for c in d.get("choices") or ()]
    choices = [c for c in choices if c.text or c.finish_reason or c.HasField("logprobs") or c.tool_calls]
    usage = _usage(d.get("usage"))
    if not choices and usage is None:
        return None
    return pb.GenerateChunk(id=d["id"], model=d["model"], created=d.get("created", 0), choices=choices, usage=usage)


def classify_response(resp: Any) -> pb.ClassifyResponse:
    d = as_dict(resp)
    results = [pb.Classification(index=r["index"], label=r["label"], score=r["score"],
                                 scores=[pb.LabelScore(label=s["label"], score=s["score"]) for s in r["scores"]])
               for r in d["data"]]
    return pb.ClassifyResponse(id=d["id"], model=d["model"], created=d["created"], results=results,
                               usage=_usage(d.get("usage")))


def embed_response(resp: Any) -> pb.EmbedResponse:
    d = as_dict(resp)
    data = [pb.Embedding(index=e["index"], packed=base64.b64decode(e["embedding"])) if isinstance(e["embedding"], str)
            else pb.Embedding(index=e["index"], values=e["embedding"]) for e in d["data"]]
    usage = d["usage"]
    return pb.EmbedResponse(model=d["model"], data=data, usage=pb.Usage(
        prompt_tokens=usage["prompt_tokens"], completion_tokens=0, total_tokens=usage["total_tokens"]))


def model_info(card: Any) -> pb.ModelInfo:
    fields = pb.ModelInfo.DESCRIPTOR.fields_by_name  # unset (None) parent, root, max_model_len: empty / 0
    return pb.ModelInfo(**{k: v for k, v in as_dict(card).items() if k in fields and v is not None})


def list_models_response(resp: Any) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_info(m) for m in as_dict(resp)["data"]])


def adapter_info(info: Any) -> admin_pb2.AdapterInfo:
    fields = admin_pb2.AdapterInfo.DESCRIPTOR.fields_by_name
    return admin_pb2.AdapterInfo(**{k: v for k, v in as_dict(info).items() if k in fields and v is not None})


def list_adapters_response(resp: Any) -> admin_pb2.ListAdaptersResponse:
    return admin_pb2.ListAdaptersResponse(adapters=[adapter_info(a) for a in as_dict(resp)["data"]])


def rollout_request(msg: admin_pb2.RolloutRequest) -> RolloutRequest:
    data: dict[str, Any] = {"action": msg.action, "alias": msg.alias or None, "weight": msg.weight,
                            "shadow": msg.shadow, "sticky": msg.sticky or "key", "force": msg.force}
    for name in ("stable", "candidate"):
        if msg.HasField(name):
            data[name] = getattr(msg, name)
    return validated(RolloutRequest, data)


def rollout_reply(resp: Any) -> admin_pb2.RolloutReply:
    from google.protobuf.json_format import ParseDict

    return ParseDict(_without_nones(as_dict(resp)), admin_pb2.RolloutReply(), ignore_unknown_fields=True)


def _without_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def unload_adapter_response(resp: Any) -> admin_pb2.UnloadAdapterResponse:
    d = as_dict(resp)
    return admin_pb2.UnloadAdapterResponse(name=d["name"], unloaded=bool(d["unloaded"]), fleet=d.get("fleet"))
