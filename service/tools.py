"""Tool calling on chat completions: the prompt (tools and tool turns through the chat template), the
output constraint of `required` and named choices, and turning the output into OpenAI `tool_calls`,
whole or as stream deltas.

    constraint = tool_constraint(request)            # required / named: the grammar engine enforces the form
    messages, extra = chat_messages(request, template) # for tokenizer.apply_chat_template(..., **extra)
    reply = ToolReply(request, tool_format)           # per choice
    content, calls = reply.finish(text)               # unary; or reply.delta(text) / reply.close() streaming

Output forms:
- named function (`tool_choice: {"type": "function", "function": {"name": f}}`): the output is f's
  arguments, a JSON object constrained by its `parameters` schema; one call.
- `required`: a JSON array of `{"name": ..., "arguments": {...}}` (one of the tools each, at least one;
  exactly one when `parallel_tool_calls` is false), constrained by a schema built from the tools.
- `auto`: free text, parsed with the model's declared tool-call format. The one format is "hermes"
  (the default, and the one adapters declare in their manifest's `tool_call_format`): each call is
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; text outside the tags is the content.
  When the chat template does not render tools itself, a system turn lists them and this format.
A reply with calls finishes with "tool_calls" (unless it ran out of tokens: "length").
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from service.schemas_output import NamedToolChoice, ToolCall
from service.structured import Constraint, check_schema, invalid

TOOL_FORMATS = ("hermes",)
OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.S)


def _parameters(tool) -> dict:
    return tool.function.parameters or {"type": "object", "properties": {}}


def tool_constraint(request) -> Constraint | None:
    """The constraint of a required or named tool choice, None for auto and none."""
    mode = request.tool_mode()
    if mode in ("none", "auto"):
        return None
    for tool in request.tools:
        check_schema(_parameters(tool), "tools.function.parameters")
    if isinstance(mode, NamedToolChoice):
        tool = next(t for t in request.tools if t.function.name == mode.function.name)
        return Constraint("json_schema", json.dumps(_parameters(tool), sort_keys=True), "tools.function.parameters")
    calls = [{"type": "object", "properties": {"name": {"const": t.function.name}, "arguments": _parameters(t)},
              "required": ["name", "arguments"], "additionalProperties": False} for t in request.tools]
    schema = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if request.parallel_tool_calls is False:
        schema["maxItems"] = 1
    return Constraint("json_schema", json.dumps(schema, sort_keys=True), "tools")


def check_format(tool_format: str | None) -> str:
    chosen = tool_format or "hermes"
    if chosen not in TOOL_FORMATS:
        raise invalid(f"the model declares tool-call format {chosen!r}, which this server does not parse "
                      f"(known: {', '.join(TOOL_FORMATS)})", "tools")
    return chosen


def chat_messages(request, template: str) -> tuple[list[dict], dict]:
    """The conversation as chat-template messages, and extra template arguments (`tools`). Templates that
    know tool calls get them structured; others get the calls as hermes text and a system turn listing tools."""
    knows_tools = "tool_calls" in template or "tools" in template
    messages = []
    for m in request.messages:
        item: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.tool_calls:
            calls = [{"id": c.id, "type": "function",
                      "function": {"name": c.function.name, "arguments": _loads(c.function.arguments)}}
                     for c in m.tool_calls]
            if knows_tools:
                item["tool_calls"] = calls
            else:
                item["content"] = item["content"] + "".join(
                    f"{OPEN}{json.dumps({'name': c['function']['name'], 'arguments': c['function']['arguments']})}{CLOSE}"
                    for c in calls)
        if m.tool_call_id and knows_tools:
            item["tool_call_id"] = m.tool_call_id
        if m.name:
            item["name"] = m.name
        messages.append(item)
    if not request.tools or request.tool_mode() == "none":
        return messages, {}
    tools = [t.model_dump(exclude_none=True) for t in request.tools]
    if knows_tools:
        return messages, {"tools": tools}
    listing = "\n".join(json.dumps(t["function"]) for t in tools)
    preamble = (f"You may call these functions:\n{listing}\nTo call one, answer with "
                f'{OPEN}{{"name": <function name>, "arguments": <arguments object>}}{CLOSE}')
    return [{"role": "system", "content": preamble}, *messages], {}


def _loads(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _call(name: str, arguments: Any) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=f"call_{secrets.token_hex(12)}", function={"name": name, "arguments": text})


class ToolReply:
    """One choice's output turned into content and tool calls (whole, or as stream deltas)."""

    def __init__(self, request, tool_format: str | None = None) -> None:
        self.mode = request.tool_mode()
        self.format = check_format(tool_format) if request.tools else None
        self.names = {t.function.name for t in request.tools or ()}
        self.text = ""
        self.sent = 0  # characters of text already streamed as content (auto) or arguments (named)
        self.opened: ToolCall | None = None  # named streaming: the call whose arguments are streaming

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.names)

    def finish(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of a complete output."""
        if not self.active:
            return text, []
        if isinstance(self.mode, NamedToolChoice):
            return None, [_call(self.mode.function.name, text)]
        if self.mode == "required":
            parsed = _loads(text)
            items = parsed if isinstance(parsed, list) else []
            return None, [_call(c["name"], c.get("arguments", {})) for c in items
                          if isinstance(c, dict) and c.get("name") in self.names]
        calls = []
        for body in _CALL.findall(text):
            parsed = _loads(body)
            if isinstance(parsed, dict) and parsed.get("name") in self.names:
                calls.append(_call(parsed["name"], parsed.get("arguments", {})))
        content = _CALL.sub("", text).strip() if calls else text
        return (content or None), calls

    def delta(self, text: str) -> tuple[str | None, list[dict]]:
        """Streaming: (content to send now, tool_call deltas to send now) for a new piece of text."""
        self.text += text
        if not self.active:
            return text, []
        if isinstance(self.mode, NamedToolChoice):
            if not text:
                return None, []
            if self.opened is None:
                self.opened = _call(self.mode.function.name, "")
                return None, [{"index": 0, "id": self.opened.id, "type": "function",
                               "function": {"name": self.mode.function.name, "arguments": text}}]
            return None, [{"index": 0, "function": {"arguments": text}}]
        if self.mode == "required":
            return None, []
        start = self.text.find(OPEN)  # auto: content until a call may begin, then the rest waits for the end
        safe = start if start >= 0 else len(self.text) - _held_back(self.text)
        out = self.text[self.sent:max(safe, self.sent)]
        self.sent = max(safe, self.sent)
        return out or None, []

    def close(self) -> tuple[str | None, list[dict]]:
        """Streaming, at the choice's end: the rest of the content and the buffered calls as deltas."""
        if not self.active or isinstance(self.mode, NamedToolChoice):
            return None, []
        calls = self.finish(self.text)[1]
        if self.mode == "required":  # the output is the calls' JSON, never content
            return None, [{"index": k, **c.model_dump()} for k, c in enumerate(calls)]
        unsent = self.text[self.sent:]
        rest = _CALL.sub("", unsent).strip() if calls else unsent  # the text around the calls, not yet sent
        return rest or None, [{"index": k, **c.model_dump()} for k, c in enumerate(calls)]

    def called(self) -> bool:
        """Whether this choice's (streamed) output made calls."""
        return self.opened is not None or bool(self.active and self.finish(self.text)[1])


def _held_back(text: str) -> int:
    """Characters at the end of `text` that may be the start of OPEN."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:n]):
            return n
    return 0


def tool_replies(request, tool_format: str | None):
    """choice index -> its ToolReply (one per choice, made on first use), or None without tools."""
    replies: dict[int, ToolReply] = {}

    def reply(index: int) -> ToolReply | None:
        if not request.tools:
            return None
        if index not in replies:
            replies[index] = ToolReply(request, tool_format)
        return replies[index]
    return reply
