"""`ServiceSettings`: everything the serving application is configured with.

Loaded from the Ray Serve config's application `args` (see `service/configs/serve.yaml`),
then `TUNESERVE_SERVE__*` environment variables, then `key=value` overrides:

    settings = load_settings({"artifacts_dir": "artifacts"}, ["batching.max_batch_size=8"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field

from training.artifact.config import StrictModel, load_config

from service.drift.monitor import DriftSettings

from service.security.config import SecuritySettings

ENV_PREFIX = "TUNESERVE_SERVE__"


class BatchingSettings(StrictModel):
    max_batch_size: int = Field(16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=5.0, description="an idle engine keeps collecting "
                                        "requests while they arrive less than this apart ...")
    batch_max_wait_s: float = Field(0.1, ge=0.0, le=5.0, description="... for at most this long in all")
    join_wait_s: float = Field(0.03, ge=0.0, le=1.0, description="a running batch admits new requests once "
                               "join_min_rows wait or the oldest waited this long (each admission costs one prefill "
                               "pass the running rows wait for); 0: admit at the next step")
    join_min_rows: int = Field(4, ge=1, le=256)


class LimitSettings(StrictModel):
    max_tokens: int = Field(256, ge=1, description="cap on max_tokens per request")
    default_max_tokens: int = Field(16, ge=1, description="max_tokens when the request gives none (OpenAI: 16)")
    max_prompt_tokens: int = Field(1024, ge=1)
    max_n: int = Field(8, ge=1)
    max_stop: int = Field(4, ge=0)
    max_logprobs: int = Field(5, ge=0)
    max_prompts: int = Field(32, ge=1, description="prompts per completion request / texts per classify request")
    max_body_bytes: int = Field(1_048_576, ge=1024)
    grpc_concurrent_rpcs: int = Field(256, ge=1, description="gRPC calls one Ingress replica handles at once (as "
                                      "its max_ongoing_requests does for HTTP); more get RESOURCE_EXHAUSTED at once")
    grpc_health_watches: int = Field(32, ge=0, description="open grpc.health.v1 Watch streams per Ingress replica "
                                     "(they need no key); more get RESOURCE_EXHAUSTED")


class CacheSettings(StrictModel):
    enabled: bool = True
    size: int = Field(1024, ge=0)
    ttl_s: float = Field(300.0, gt=0)


class ServiceSettings(StrictModel):
    base_model: str = "tiny-llama"
    base_task: Literal["causal-lm", "classification"] = "causal-lm"
    dtype: str = "float32"
    artifacts_dir: Path | None = None
    models: list[Path] = Field(default_factory=list, description="extra full-model artifact dirs served by name")
    adapters: dict[str, Path] = Field(default_factory=dict, description="extra adapters: name -> artifact dir")
    max_adapters: int = Field(16, ge=1, description="LRU bound on loaded adapters (pinned ones count)")
    pinned: list[str] = Field(default_factory=list)
    batched_lora: bool = Field(True, description="mixed-adapter batches via batched LoRA matmuls (else PEFT adapter_names)")
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    chat_template: str | None = Field(None, description="Jinja chat template when the tokenizer has none")
    keys_file: Path | None = None
    api_keys_env: str | None = Field("TUNESERVE_API_KEYS", description="env var holding comma-separated plain keys")
    auth_enabled: bool = True
    security: SecuritySettings = Field(default_factory=SecuritySettings,
                                       description="rate limits, audit log, blocking, TLS (docs/security.md)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    direct_ingress: bool = Field(True, description="`tuneserve serve`: the Ingress replica serves HTTP on `port` "
                                 "itself (Ray Serve's throughput-optimized mode, no proxy hop). Used when the serve config "
                                 "allows one Ingress replica; more replicas, or false: Ray's HTTP proxy")
    grpc_port: int | None = Field(9000, ge=0, le=65535,
                                  description="gRPC port of the grpc.aio server in the Ingress replica (0: a free port, null: no gRPC)")
    num_threads: int = Field(2, ge=1, description="torch threads in the engine replica")
    stop_timeout_s: float = Field(45.0, ge=1.0, description="`tuneserve serve`: after SIGTERM or Ctrl-C, Serve drains "
                                  "and Ray stops within this; then the server's Ray processes are killed")
    drift: DriftSettings = Field(default_factory=DriftSettings, description="drift of live traffic vs reference profiles")


def load_settings(args: dict[str, Any] | None = None, overrides: Iterable[str] = (),
                  yaml_path: str | Path | None = None) -> ServiceSettings:
    return load_config(ServiceSettings, yaml_path, list(overrides), env_prefix=ENV_PREFIX, base=dict(args or {}))
