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
Streamed, every form sends a call's id and name once its name is written and then its arguments' raw
JSON text piece by piece (`CallScanner` reads the output once, as it grows), as OpenAI streams calls.
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


class CallScanner:
    """Tool calls in JSON text as it grows: the objects at `depth` (1: the text is one call object, as in a
    hermes tag; 2: an array of them, as `required` writes) with a "name" string and an "arguments" value.
    It scans each character once and keeps, per call, its name and where the raw text of its arguments
    starts and (once the value closed) ends, so the arguments can stream as the model writes them."""

    def __init__(self, depth: int) -> None:
        self.depth, self.pos, self.level = depth, 0, 0
        self.in_string, self.escaped, self.string_start = False, False, 0
        self.key: str | None = None    # the last key read in the current call object
        self.value_of: str | None = None  # the key whose value is being read
        self.calls: list[dict] = []

    def feed(self, text: str) -> None:
        for i in range(self.pos, len(text)):
            self._char(text, i)
        self.pos = len(text)

    def _char(self, text: str, i: int) -> None:
        c, here = text[i], self.level == self.depth
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif c == "\\":
                self.escaped = True
            elif c == '"':
                self.in_string = False
                if here and self.calls:
                    self._string(text[self.string_start:i + 1])
        elif c == '"':
            self.in_string, self.string_start = True, i
        elif c in "{[":
            self.level += 1
            if c == "{" and self.level == self.depth:
                self.calls.append({"name": None, "start": None, "end": None})
                self.key = self.value_of = None
        elif c in "}]":
            if here and self.calls:
                self._value_ends(i)
            self.level -= 1
        elif here and self.calls and c == ":":
            self.value_of = self.key
            if self.key == "arguments":
                self.calls[-1]["start"] = i + 1
        elif here and self.calls and c == ",":
            self._value_ends(i)

    def _string(self, literal: str) -> None:
        try:
            value = json.loads(literal)
        except ValueError:
            return
        if self.value_of is None:
            self.key = value
        elif self.value_of == "name" and self.calls[-1]["name"] is None:
            self.calls[-1]["name"] = value

    def _value_ends(self, i: int) -> None:
        call = self.calls[-1]
        if self.value_of == "arguments" and call["end"] is None:
            call["end"] = i
        self.value_of = self.key = None


class ToolReply:
    """One choice's output turned into content and tool calls (whole, or as stream deltas)."""

    def __init__(self, request, tool_format: str | None = None) -> None:
        self.mode = request.tool_mode()
        self.format = check_format(tool_format) if request.tools else None
        self.names = {t.function.name for t in request.tools or ()}
        self.text = ""
        self.sent = 0  # characters of text already streamed as content (auto) or arguments (named)
        self.opened: ToolCall | None = None  # named streaming: the call whose arguments are streaming
        self.scanners: list[tuple[int, CallScanner]] = []  # auto: (where its tag's body starts, its scanner)
        self.streamed: dict[tuple[int, int], dict] = {}  # (scanner, call) -> {"index", "sent"}

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
        """Streaming: (content to send now, tool_call deltas to send now) for a new piece of text. A call's
        deltas begin once its name is known (id, name, empty arguments), then carry its arguments' raw
        text as the model writes it, so they join into the arguments JSON."""
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
            return None, self._call_deltas(final=False)
        start = self.text.find(OPEN)  # auto: content until a call may begin; after it, content waits for the end
        safe = start if start >= 0 else len(self.text) - _held_back(self.text, OPEN)
        out = self.text[self.sent:max(safe, self.sent)]
        self.sent = max(safe, self.sent)
        return out or None, self._call_deltas(final=False)

    def close(self) -> tuple[str | None, list[dict]]:
        """Streaming, at the choice's end: the rest of the content and what is left of the calls."""
        if not self.active or isinstance(self.mode, NamedToolChoice):
            return None, []
        deltas = self._call_deltas(final=True)
        if self.mode == "required":  # the output is the calls' JSON, never content
            return None, deltas
        unsent = self.text[self.sent:]
        rest = _CALL.sub("", unsent).strip() if self.streamed else unsent  # the text around the calls
        return rest or None, deltas

    def _regions(self, final: bool) -> list[tuple[int, CallScanner, str]]:
        """(scanner number, scanner, the text it reads): the whole output for `required`, each hermes tag's
        body for auto (up to its closing tag, or to what may be the start of one)."""
        if self.mode == "required":
            if not self.scanners:
                self.scanners.append((0, CallScanner(depth=2)))
            return [(0, self.scanners[0][1], self.text)]
        while True:
            after = self.scanners[-1][0] if self.scanners else 0
            found = self.text.find(OPEN, after)
            if found < 0:
                break
            self.scanners.append((found + len(OPEN), CallScanner(depth=1)))
        regions = []
        for k, (begin, scanner) in enumerate(self.scanners):
            close = self.text.find(CLOSE, begin)
            end = close if close >= 0 else len(self.text) - (0 if final else _held_back(self.text, CLOSE))
            regions.append((k, scanner, self.text[begin:max(end, begin)]))
        return regions

    def _call_deltas(self, final: bool) -> list[dict]:
        deltas = []
        for k, scanner, region in self._regions(final):
            scanner.feed(region)
            for j, call in enumerate(scanner.calls):
                if call["name"] not in self.names or call["start"] is None:
                    continue
                state = self.streamed.get((k, j))
                if state is None:
                    state = self.streamed[(k, j)] = {"index": len(self.streamed), "sent": 0}
                    deltas.append({"index": state["index"], "id": f"call_{secrets.token_hex(12)}", "type": "function",
                                   "function": {"name": call["name"], "arguments": ""}})
                raw = region[call["start"]:call["end"] if call["end"] is not None else len(region)].lstrip()
                raw = raw.rstrip()  # trailing whitespace may be the gap before the value's end: sent once more follows
                piece = raw[state["sent"]:]
                if piece:
                    state["sent"] = len(raw)
                    deltas.append({"index": state["index"], "function": {"arguments": piece}})
        return deltas

    def called(self) -> bool:
        """Whether this choice's (streamed) output made calls."""
        return self.opened is not None or bool(self.streamed) or bool(self.active and self.finish(self.text)[1])


def _held_back(text: str, tag: str) -> int:
    """Characters at the end of `text` that may be the start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
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
