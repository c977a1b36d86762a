"""Request and response models for structured outputs and tool calling (fields of service/schemas.py's
completion and chat requests), shaped like OpenAI's and vLLM's:

    ResponseFormat(type="json_schema", json_schema={"name": "x", "schema": {...}, "strict": True})
    StructuredOutputs(regex="[0-9]+")            # or json / choice / grammar (exactly one)
    Tool(function={"name": "get_weather", "parameters": {...}}); tool_choice "none" | "auto" | "required" | named

Each format turns into a `Constraint` (service/structured.py) the grammar engine compiles.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from service.schema_base import Request
from service.structured import Constraint, invalid, schema_constraint

MAX_TOOLS = 128
MAX_CHOICES = 256
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class JsonSchemaFormat(Request):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = {"populate_by_name": True}


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraint(self) -> Constraint | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return Constraint("json_object", "", "response_format")
        if self.json_schema is None:
            raise invalid("response_format of type json_schema needs json_schema", "response_format.json_schema")
        schema = self.json_schema.schema_ if self.json_schema.schema_ is not None else {"type": "object"}
        return schema_constraint(schema, "response_format.json_schema.schema", strict=bool(self.json_schema.strict))


class StructuredOutputs(Request):
    """vLLM's `structured_outputs`: exactly one of a JSON schema, a regex, a list of choices or a grammar."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1, max_length=MAX_CHOICES)
    grammar: str | None = None

    model_config = {"populate_by_name": True}

    def constraint(self) -> Constraint:
        given = [name for name in ("json_", "regex", "choice", "grammar") if getattr(self, name) is not None]
        if len(given) != 1:
            raise invalid(f"structured_outputs needs exactly one of json, regex, choice, grammar; got {len(given)}",
                          "structured_outputs")
        if self.json_ is not None:
            return schema_constraint(self.json_, "structured_outputs.json")
        if self.regex is not None:
            return Constraint("regex", self.regex, "structured_outputs.regex")
        if self.choice is not None:
            return Constraint("choice", json.dumps(self.choice), "structured_outputs.choice")
        return Constraint("grammar", self.grammar or "", "structured_outputs.grammar")


class FunctionDef(Request):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Request):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionName(Request):
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(Request):
    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(Request):
    name: str
    arguments: str


class ToolCallIn(Request):
    """A tool call of an earlier assistant turn in the history."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolFields(Request):
    """Chat's tool options; checked together (a named or required choice needs its tools)."""

    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _choice_needs_tools(self) -> "ToolFields":
        choice = self.tool_choice
        if choice not in (None, "none") and not self.tools:
            raise invalid("tool_choice other than none needs tools", "tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in self.tools}:
            raise invalid(f"tool_choice names {choice.function.name!r}, which is not among the tools", "tool_choice")
        return self

    def tool_mode(self) -> str | NamedToolChoice:
        """none | auto | required | the named choice (OpenAI: auto when tools are given, else none)."""
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        return self.tool_choice


# ---- responses -------------------------------------------------------------------------
class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut
