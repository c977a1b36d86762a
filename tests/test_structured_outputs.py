"""Structured outputs and tool calling (issue 18) through the official `openai` client over the REST app
and a real ServingCore on the tiny base (random-ish weights: only the grammar makes its output valid),
and a mixed batch in the engine: constrained and free rows on different adapters share decode steps
and give the tokens each gives alone.

    pytest tests/test_structured_outputs.py
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from service.engine.decode import DecodeBatch
from service.schemas import ChatCompletionRequest, CompletionRequest
from tests.test_openai_surface import oc, served, stub  # noqa: F401 - the openai client and gRPC stub over one core

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "rank", "ok"],
          "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                         "rank": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "celsius"],
                          "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]},
                                         "celsius": {"type": "boolean"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["zone"],
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}}}
TOOLS = {"get_weather": WEATHER, "get_time": TIME}
STRICT = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}
CHAT = [{"role": "user", "content": "Which city?"}]


def bad_request(call) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value.response.json()["error"]


# ---- structured outputs --------------------------------------------------------------------
@pytest.mark.parametrize("model", ["base", "a1"])
def test_strict_json_schema_on_chat_parses_and_validates(oc, model):
    reply = oc.chat.completions.create(model=model, messages=CHAT, max_tokens=120, temperature=0, response_format=STRICT)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_schema_on_completions_sampled_n_choices_all_validate(oc):
    reply = oc.completions.create(model="a2", prompt="Data:", max_tokens=120, temperature=1.0, n=3, seed=7,
                                  extra_body={"response_format": STRICT})
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.text
        jsonschema.validate(json.loads(choice.text), SCHEMA)


def test_vllm_structured_outputs_json_regex_choice_grammar(oc):
    def complete(options, model="base"):
        return oc.completions.create(model=model, prompt="Answer:", max_tokens=60, temperature=0,
                                     extra_body={"structured_outputs": options}).choices[0]

    jsonschema.validate(json.loads(complete({"json": SCHEMA}).text), SCHEMA)
    regex = complete({"regex": r"[0-9]{3}-[a-c]{2}"}, model="a1")
    assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", regex.text) and regex.finish_reason == "stop"
    assert complete({"choice": ["yes", "no", "maybe so"]}).text in ("yes", "no", "maybe so")
    assert complete({"grammar": 'root ::= "x" [0-9] [0-9]'}).text[0] == "x"
    assert re.fullmatch(r"(ab)+c", complete({"grammar": 'start: "ab"+ "c"'}, model="a3").text)  # Lark


def test_json_object_gives_a_json_object(oc):
    reply = oc.chat.completions.create(model="a3", messages=CHAT, max_tokens=200, temperature=0,
                                       response_format={"type": "json_object"})
    choice = reply.choices[0]
    if choice.finish_reason == "stop":  # a free object may run out of tokens; what came must be a prefix of one
        assert isinstance(json.loads(choice.message.content), dict)
    assert choice.message.content.startswith("{")


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "root ::= undefined_rule"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
    ({"structured_outputs": {"json": {"$schema": 5}}}, "structured_outputs.json"),
    ({"structured_outputs": {"json": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}}},
     "structured_outputs.json"),
])
def test_invalid_constraints_are_400_naming_the_field(oc, body, param):
    error = bad_request(lambda: oc.completions.create(model="base", prompt="x", max_tokens=4, extra_body=body))
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_invalid_tool_setups_are_400(oc):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}
    error = bad_request(lambda: oc.chat.completions.create(model="base", messages=CHAT, tools=[bad], tool_choice="required"))
    assert error["param"] == "tools.function.parameters"
    error = bad_request(lambda: oc.chat.completions.create(
        model="base", messages=CHAT, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "other"}}))
    assert error["param"] == "tool_choice"
    assert bad_request(lambda: oc.chat.completions.create(model="base", messages=CHAT,
                                                          tool_choice="required"))["param"] == "tool_choice"


def test_compiled_grammars_are_cached(served, oc):
    grammars = served.core.jobs.grammars
    before = grammars.hits
    for _ in range(2):
        oc.completions.create(model="base", prompt="x", max_tokens=8, extra_body={"structured_outputs": {"regex": "q+"}})
    assert grammars.hits >= before + 1 and len(grammars.compiled) <= grammars.size
    from service.structured import Constraint, Grammars

    small, loaded = Grammars(size=2), served.core.registry.base.loaded
    for pattern in ("a+", "b+", "c+", "a+"):
        small.compile(loaded, Constraint("regex", pattern, "structured_outputs.regex"))
    assert len(small.compiled) == 2 and small.misses == 4 and small.hits == 0  # "a+" was evicted by "c+"


# ---- tool calling --------------------------------------------------------------------------
def check_calls(calls, allowed=TOOLS):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id and call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), allowed[call.function.name]["function"]["parameters"])


def test_named_tool_choice_returns_a_valid_call(oc):
    reply = oc.chat.completions.create(model="a1", messages=CHAT, max_tokens=80, temperature=0, tools=[WEATHER, TIME],
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message.tool_calls, {"get_time": TIME})


def test_required_tool_choice_returns_valid_calls_one_when_not_parallel(oc):
    reply = oc.chat.completions.create(model="base", messages=CHAT, max_tokens=120, temperature=0, tools=[WEATHER, TIME],
                                       tool_choice="required", parallel_tool_calls=False)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    check_calls(choice.message.tool_calls)
    assert len(choice.message.tool_calls) == 1


@pytest.mark.parametrize("tool_choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"])
def test_tool_calls_stream_as_openai_deltas(oc, tool_choice):
    # one call at most: an untrained model may keep appending parallel calls until max_tokens ("length")
    stream = oc.chat.completions.create(model="a2", messages=CHAT, max_tokens=120, temperature=0, tools=[WEATHER, TIME],
                                        tool_choice=tool_choice, parallel_tool_calls=False, stream=True)
    calls: dict[int, dict] = {}
    finish, content = None, ""
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            content += choice.delta.content or ""
            for piece in choice.delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = piece.id or call["id"]
                call["name"] = (piece.function.name if piece.function else None) or call["name"]
                call["arguments"] += (piece.function.arguments or "") if piece.function else ""
    assert finish == "tool_calls" and calls and content == ""
    for call in calls.values():
        assert call["id"] and call["name"] in TOOLS
        jsonschema.validate(json.loads(call["arguments"]), TOOLS[call["name"]]["function"]["parameters"])


def test_tool_messages_in_history_render_and_auto_parses_hermes_calls(served, oc):
    history = [*CHAT, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"}]
    reply = oc.chat.completions.create(model="a1", messages=history, max_tokens=8, temperature=0, tools=[WEATHER])
    assert reply.choices[0].finish_reason in ("stop", "length")
    request = ChatCompletionRequest(model="a1", messages=history, tools=[WEATHER])
    prompt = served.core.jobs.chat_prompt(request, served.core.registry.base.loaded.tokenizer)
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in prompt
    assert "-3 C" in prompt and "get_weather" in prompt.split("-3 C")[0]
    error = bad_request(lambda: oc.chat.completions.create(model="a1", messages=[{"role": "tool", "content": "x"}]))
    assert error["param"].startswith("messages")


def test_auto_mode_parses_the_hermes_format():
    from service.tools import ToolReply

    request = ChatCompletionRequest(model="m", messages=CHAT, tools=[WEATHER])
    text = 'Let me look. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "celsius": true}}</tool_call>'
    content, calls = ToolReply(request).finish(text)
    assert content == "Let me look." and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "celsius": True}
    streamer, sent, deltas = ToolReply(request), [], []
    for piece in [text[:7], text[7:15], text[15:40], text[40:]]:
        content, calls = streamer.delta(piece)
        sent.append(content or "")
        deltas += calls
    rest, calls = streamer.close()
    assert "".join(sent) + (rest or "") == "Let me look. " and deltas[0]["function"]["name"] == "get_weather"
    assert ToolReply(request).finish("no call here") == ("no call here", [])


def _stream_pieces(tool_choice, text: str, size: int):
    from service.tools import ToolReply

    streamer = ToolReply(ChatCompletionRequest(model="m", messages=CHAT, tools=[WEATHER, TIME], tool_choice=tool_choice))
    content, calls, before_close = "", {}, set()
    for i in range(0, len(text), size):
        piece, deltas = streamer.delta(text[i:i + size])
        content += piece or ""
        for d in deltas:
            call = calls.setdefault(d["index"], {"id": d.get("id"), "name": d.get("function", {}).get("name"), "args": ""})
            call["args"] += d["function"]["arguments"]
            if d["function"]["arguments"]:
                before_close.add(d["index"])
    rest, deltas = streamer.close()
    for d in deltas:
        call = calls.setdefault(d["index"], {"id": d.get("id"), "name": d.get("function", {}).get("name"), "args": ""})
        call["args"] += d["function"]["arguments"]
    return content + (rest or ""), calls, before_close, streamer


@pytest.mark.parametrize("tool_choice,text", [
    ("auto", 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Pa\\"ris {x}", "celsius": true}}'
             '</tool_call> <tool_call>{"arguments": {"tz": "UTC"}, "name": "get_time"}</tool_call>'),
    ("required", '[{"name": "get_weather", "arguments": {"city": "Oslo, [N]"}} , {"name":"get_time","arguments":{"tz":"CET"}}]'),
])
def test_streamed_tool_calls_send_their_arguments_as_the_model_writes_them(tool_choice, text):
    """`auto` and `required` calls stream like named ones: a call's id and name as soon as its name is
    known, then its arguments' text piece by piece (not all at the end), joining into what the whole
    reply parses; for every split of the output into pieces."""
    from service.tools import ToolReply

    content_whole, whole = ToolReply(ChatCompletionRequest(model="m", messages=CHAT, tools=[WEATHER, TIME],
                                                           tool_choice=tool_choice)).finish(text)
    for size in (1, 2, 3, 7, 50):
        content, calls, before_close, streamer = _stream_pieces(tool_choice, text, size)
        assert [(c["name"], json.loads(c["args"])) for c in calls.values()] == \
            [(c.function.name, json.loads(c.function.arguments)) for c in whole], size
        assert all(c["id"] for c in calls.values()) and streamer.called()
        assert (content.strip() or None) == (content_whole if tool_choice == "auto" else None)
        if size < 10:
            assert before_close == set(calls), "every call's arguments streamed before the choice ended"


# ---- the mixed batch -----------------------------------------------------------------------
def test_constrained_and_free_rows_on_different_adapters_share_steps_and_match_alone(served, monkeypatch):
    """Greedy rows: a1 constrained by a schema, a2 free, base constrained by a regex, a3 free; run together
    (one request each, submitted at once) and each alone; same tokens, and they shared decode steps."""
    core = served.core
    requests = [
        CompletionRequest(model="a1", prompt="One", max_tokens=40, temperature=0, response_format=STRICT),
        CompletionRequest(model="a2", prompt="Two", max_tokens=12, temperature=0, ignore_eos=True),
        CompletionRequest(model="base", prompt="Three", max_tokens=20, temperature=0,
                          structured_outputs={"regex": "[a-z]{3,8}!"}),
        CompletionRequest(model="a3", prompt="Four", max_tokens=12, temperature=0, ignore_eos=True),
    ]
    for r in requests:  # the response cache would answer repeats without decoding
        r.seed = None
    core.engine.cache.size, size = 0, core.engine.cache.size
    steps: list[list[tuple]] = []
    original = DecodeBatch._choose

    def recording(self, rows, logits):
        steps.append([(a.row.adapter, a.matcher is not None) for a in rows])
        return original(self, rows, logits)

    monkeypatch.setattr(DecodeBatch, "_choose", recording)
    try:
        alone = [asyncio.run(core.complete(r, None)).choices[0].text for r in requests]

        async def together():
            return await asyncio.gather(*(core.complete(r, None) for r in requests))

        steps.clear()
        mixed = [reply.choices[0].text for reply in asyncio.run(together())]
    finally:
        core.engine.cache.size = size
    assert mixed == alone
    jsonschema.validate(json.loads(mixed[0]), SCHEMA)
    assert re.fullmatch("[a-z]{3,8}!", mixed[2])
    shared = [s for s in steps if len({adapter for adapter, _ in s}) >= 3 and {c for _, c in s} == {True, False}]
    assert shared, f"no decode step held constrained and free rows on several adapters: {steps[:5]}"


# ---- gRPC ----------------------------------------------------------------------------------
def test_grpc_constraints_tools_and_errors(stub):
    import grpc

    from service.grpc.gen.tuneserve.v1 import inference_pb2 as pb

    inference, md = stub
    schema = pb.OutputConstraint(json_schema=json.dumps(SCHEMA))
    reply = inference.Generate(pb.GenerateRequest(model="a1", prompt="Data:", max_tokens=120, temperature=0,
                                                  constraint=schema), metadata=md)
    jsonschema.validate(json.loads(reply.choices[0].text), SCHEMA)
    choice = inference.Generate(pb.GenerateRequest(model="base", prompt="x", max_tokens=10, temperature=0,
                                                   constraint=pb.OutputConstraint(choice=pb.ChoiceList(choices=["up", "down"]))),
                                metadata=md)
    assert choice.choices[0].text in ("up", "down")
    params = WEATHER["function"]["parameters"]
    tools = [pb.FunctionDefinition(name="get_weather", parameters_json=json.dumps(params))]
    history = pb.ChatMessages(messages=[
        pb.ChatMessage(role="user", content="Weather?"),
        pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="c1", name="get_weather", arguments='{"city": "Oslo"}')]),
        pb.ChatMessage(role="tool", tool_call_id="c1", content="-3 C")])
    called = inference.Generate(pb.GenerateRequest(model="a2", messages=history, max_tokens=80, temperature=0,
                                                   tools=tools, tool_choice="get_weather"), metadata=md)
    call = called.choices[0].tool_calls[0]
    assert called.choices[0].finish_reason == "tool_calls" and call.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.arguments), params)
    pieces = list(inference.GenerateStream(pb.GenerateRequest(model="a2", messages=history, max_tokens=80, temperature=0,
                                                              tools=tools, tool_choice="required",
                                                              parallel_tool_calls=False), metadata=md))
    deltas = [d for chunk in pieces for c in chunk.choices for d in c.tool_calls]
    assert deltas and deltas[0].name == "get_weather"
    jsonschema.validate(json.loads("".join(d.arguments for d in deltas)), params)
    with pytest.raises(grpc.RpcError) as caught:
        inference.Generate(pb.GenerateRequest(model="base", prompt="x", constraint=pb.OutputConstraint(regex="(")),
                           metadata=md)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "structured_outputs.regex" in caught.value.details()


# ---- an adapter's declared defaults ------------------------------------------------------------
def test_manifest_defaults_apply_and_the_request_wins(served, oc, tiny_base_dir, tmp_path):
    from service.schemas import LoadAdapterRequest
    from tests.service_fixtures import make_adapter

    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    make_adapter(tiny_base_dir, tmp_path / "shaped", "shaped", seed=9, response_schema=SCHEMA, chat_template=template)
    asyncio.run(served.core.load_adapter(LoadAdapterRequest(name="shaped", path=str(tmp_path / "shaped")), None))
    try:
        declared = oc.chat.completions.create(model="shaped", messages=CHAT, max_tokens=120, temperature=0)
        jsonschema.validate(json.loads(declared.choices[0].message.content), SCHEMA)
        regex = oc.chat.completions.create(model="shaped", messages=CHAT, max_tokens=20, temperature=0,
                                           extra_body={"structured_outputs": {"regex": "[0-9]{4}"}})
        assert re.fullmatch("[0-9]{4}", regex.choices[0].message.content)
        manifest = served.core.registry.adapters["shaped"].manifest
        prompt = served.core.jobs.chat_prompt(ChatCompletionRequest(model="shaped", messages=CHAT),
                                              served.core.registry.base.loaded.tokenizer, manifest)
        assert prompt == "[user] Which city?\n[assistant] "
    finally:
        asyncio.run(served.core.unload_adapter("shaped", force=True))


def test_a_failing_matcher_fails_only_its_row(served, monkeypatch):
    """A grammar matcher that breaks mid-generation fails its own request; the free row beside it finishes."""
    import service.engine.decode as decode

    original = decode.new_matcher

    class Breaking:
        def __init__(self, compiled):
            self.inner, self.fills = original(compiled), 0

        def fill_next_token_bitmask(self, bitmask, index):
            self.fills += 1
            if self.fills > 3:
                raise RuntimeError("matcher broke")
            return self.inner.fill_next_token_bitmask(bitmask, index)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(decode, "new_matcher", Breaking)
    core = served.core
    broken = CompletionRequest(model="a1", prompt="Broken", max_tokens=40, temperature=0, response_format=STRICT)
    free = CompletionRequest(model="a2", prompt="Free", max_tokens=10, temperature=0, ignore_eos=True)

    async def together():
        return await asyncio.gather(core.complete(broken, None), core.complete(free, None), return_exceptions=True)

    failed, fine = asyncio.run(together())
    assert isinstance(failed, RuntimeError) and "matcher broke" in str(failed)
    assert fine.choices[0].finish_reason == "length" and fine.usage.completion_tokens == 10
