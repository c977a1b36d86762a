"""`data.output_format`: training checks the assistant turn's declared format on every row and records the
serving defaults in the manifest (response_schema, tool_call_format, chat_template), which the service
then applies to requests that ask for no format of their own."""

from __future__ import annotations

import asyncio
import json

import pytest
from train_support import make_config, train_args, write_jsonl

from training.artifact.errors import ConfigError, DataError

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
          "required": ["city", "days"], "additionalProperties": False}
CITIES = ["Oslo", "Paris", "Lima", "Cairo", "Perth", "Quito"]


def json_rows(n: int) -> list[dict]:
    return [{"instruction": "Plan a trip.", "input": f"{CITIES[i % 6]} for {i % 5 + 1} days",
             "output": json.dumps({"city": CITIES[i % 6], "days": i % 5 + 1})} for i in range(n)]


def tool_rows(n: int) -> list[dict]:
    return [{"instruction": "Weather?", "input": CITIES[i % 6],
             "output": f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{CITIES[i % 6]}"}}}}</tool_call>'}
            for i in range(n)]


def test_json_outputs_record_their_schema_and_the_served_adapter_follows_it(tiny_base_dir, tmp_path, serve_keys):
    from service.core import ServingCore
    from service.schemas import CompletionRequest
    from service.settings import load_settings
    from tests.service_fixtures import service_args
    from training.artifact import read_manifest
    from training.train import train

    data = write_jsonl(tmp_path / "rows.jsonl", json_rows(40))
    out = tmp_path / "served" / "planner"
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    train(make_config(*train_args(tiny_base_dir, data, out, "data.output_format=json",
                                  f"data.output_schema={schema_file}", "max_steps=2")))
    manifest = read_manifest(out)
    assert manifest.response_schema == SCHEMA and manifest.tool_call_format is None

    core = ServingCore(load_settings(service_args(tiny_base_dir, out.parent, serve_keys[0])))
    core.start()
    try:
        reply = asyncio.run(core.complete(CompletionRequest(model="planner", prompt="Plan a trip.", max_tokens=60,
                                                            temperature=0), None))
        text = reply.choices[0].text
        if reply.choices[0].finish_reason == "stop":  # the default schema constrained the untrained answer
            import jsonschema
            jsonschema.validate(json.loads(text), SCHEMA)
        else:
            assert text.lstrip().startswith("{"), text
    finally:
        core.stop()


def test_tool_call_outputs_record_the_hermes_format_and_the_chat_template(tiny_base_dir, tmp_path):
    from training.train.output_format import check_outputs, manifest_defaults

    class Data:
        output_format, output_schema = "tool_calls", None

    class Splits:
        train, validation, test = tool_rows(6), tool_rows(2), []

    class Tokenizer:
        chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"

    class Chat:
        kind = "chat"

    check_outputs(Data, "causal-lm", Splits)
    assert manifest_defaults(Data, Tokenizer, Chat) == {"tool_call_format": "hermes", "chat_template": Tokenizer.chat_template}
    Splits.validation = [{"instruction": "x", "output": "<tool_call>{not json}</tool_call>"}]
    with pytest.raises(DataError, match="validation row 0"):
        check_outputs(Data, "causal-lm", Splits)


def test_json_outputs_are_checked_row_by_row_with_clear_errors(tiny_base_dir, tmp_path):
    from training.train import train

    rows = json_rows(20)
    rows[7]["output"] = '{"city": "Oslo", "days": "three"}'
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    inline = f"data.output_schema={json.dumps(SCHEMA)}"
    with pytest.raises(DataError, match="does not follow data.output_schema at days"):
        train(make_config(*train_args(tiny_base_dir, data, tmp_path / "out", "data.output_format=json", inline,
                                      "data.validation_fraction=0")))
    rows[7]["output"] = "not json"
    data = write_jsonl(tmp_path / "rows2.jsonl", rows)
    with pytest.raises(DataError, match="is not JSON"):
        train(make_config(*train_args(tiny_base_dir, data, tmp_path / "out", "data.output_format=json",
                                      "data.validation_fraction=0")))
    with pytest.raises(ConfigError, match="not a valid JSON schema"):
        train(make_config(*train_args(tiny_base_dir, data, tmp_path / "out", "data.output_format=json",
                                      'data.output_schema={"type": "nonsense"}')))
    with pytest.raises(ConfigError, match="instruction data"):
        make_config(*train_args(tiny_base_dir, data, tmp_path / "out", "data.output_format=json", "task=classification"))
