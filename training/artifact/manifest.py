"""The artifact manifest: what an artifact is, where it came from, and the sha256 of every file."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from training.artifact.version import tuneserve_version

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
PROFILE_NAME = "reference_profile.json"

ArtifactKind = Literal["adapter", "quantized-model", "merged-model", "onnx-model", "full-model"]
Task = Literal["causal-lm", "classification"]


class BaseRef(BaseModel):
    """The base model an artifact was built on: a hub id or path, and its fingerprint."""

    model_config = ConfigDict(extra="allow")
    id: str
    sha256: str


class DataRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    fingerprint: str | None = None
    rows: int | None = None
    source: str | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    name: str
    kind: ArtifactKind
    task: Task = "causal-lm"
    base: BaseRef
    method: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    tokenizer: dict[str, Any] = Field(default_factory=dict)
    data: DataRef = Field(default_factory=DataRef)
    metrics: dict[str, Any] = Field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    labels: list[str] | None = None
    trainable_parameters: int | None = None
    wall_time_seconds: float | None = None
    lineage: dict[str, Any] | None = None  # what it was made from (tuneserve merge: the source adapters)
    golden: dict[str, Any] | None = None  # summary of golden_set.json (training.artifact.golden); None: has none
    files: dict[str, str] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tuneserve_version: str = Field(default_factory=tuneserve_version)
    version: str = "1"
    # serving defaults an artifact may declare (all optional; a request's own options win)
    response_schema: dict[str, Any] | None = None  # JSON schema its outputs follow (structured output)
    chat_template: str | None = None  # Jinja chat template it was trained with
    tool_call_format: str | None = None  # how it writes tool calls ("hermes": <tool_call>{...}</tool_call>)
