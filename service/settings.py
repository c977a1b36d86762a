"""`ServiceSettings`: everything the serving application is configured with.

Loaded from the Ray Serve config's application `args` (see `service/configs/serve.yaml`),
then `TUNESERVE_SERVE__*` environment variables, then `key=value` overrides:

    settings = load_settings({"artifacts_dir": "artifacts"}, ["batching.max_batch_size=8"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from pydantic import Field

from training.artifact.config import StrictModel, load_config

from service.drift.monitor import DriftSettings
from service.engine.settings import EngineSettings
from service.feedback import FeedbackSettings
from service.fleet import FleetSettings
from service.rollout import RolloutSettings
from service.security.config import SecuritySettings

ENV_PREFIX = "TUNESERVE_SERVE__"
ENGINE_QUEUE_CAPACITY = 64  # requests one Engine replica takes at once (its max_ongoing_requests, service/app.py)


class AdapterLoadLimits(StrictModel):
    """Adapter loads (on demand and admin): their own pool, bounded, on-demand ones rate-limited (service/loader.py)."""

    workers: int = Field(1, ge=1, le=8, description="threads that load adapters (never the default thread pool)")
    max_pending: int = Field(4, ge=1, le=256, description="loads running or queued at once; more answer 503")
    per_min: int | None = Field(20, ge=1, description="on-demand loads per minute in this replica, all keys "
                                "together (null: unlimited); more answer 429")
    per_key_per_min: int | None = Field(4, ge=1, description="on-demand loads per minute one API key may cause")


class LimitSettings(StrictModel):
    max_tokens: int = Field(256, ge=1, description="cap on max_tokens per request")
    default_max_tokens: int = Field(16, ge=1, description="max_tokens when the request gives none (OpenAI: 16)")
    max_prompt_tokens: int = Field(1024, ge=1)
    max_n: int = Field(8, ge=1)
    max_stop: int = Field(4, ge=0)
    max_stop_chars: int = Field(256, ge=1, description="length cap of each stop string (the engine thread "
                                "matches every stop string against the text after every token)")
    max_logprobs: int = Field(5, ge=0)
    max_prompts: int = Field(32, ge=1, description="prompts per completion request / texts per classify request")
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_embedding_inputs: int = Field(256, ge=1, description="inputs per /v1/embeddings request (each at most "
                                      "max_prompt_tokens and the encoder's context)")
    grammar_cache_size: int = Field(256, ge=1, description="compiled grammars (structured outputs, tool choices) "
                                    "kept per replica, least recently used dropped")
    grpc_concurrent_rpcs: int = Field(256, ge=1, description="gRPC calls one Ingress replica handles at once (as "
                                      "its max_ongoing_requests does for HTTP); more get RESOURCE_EXHAUSTED at once")
    grpc_health_watches: int = Field(32, ge=0, description="open grpc.health.v1 Watch streams per Ingress replica "
                                     "(they need no key); more get RESOURCE_EXHAUSTED")
    adapter_loads: AdapterLoadLimits = Field(default_factory=AdapterLoadLimits)


class ServiceSettings(EngineSettings):
    """The engine's settings (models, batching, cache, threads: service/engine/settings.py) and the service's."""

    limits: LimitSettings = Field(default_factory=LimitSettings)
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
    stop_timeout_s: float = Field(45.0, ge=1.0, description="`tuneserve serve`: after SIGTERM or Ctrl-C, Serve drains "
                                  "and Ray stops within this; then the server's Ray processes are killed")
    drift: DriftSettings = Field(default_factory=DriftSettings, description="drift of live traffic vs reference profiles")
    fleet: FleetSettings = Field(default_factory=FleetSettings, description="the admin-set adapter state all Engine "
                                 "replicas converge to (service/fleet.py)")
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings, description="served-response records, "
                                       "POST /v1/feedback and online quality (service/feedback.py, docs/feedback.md)")
    rollout: RolloutSettings = Field(default_factory=RolloutSettings, description="aliases, canaries, shadow "
                                     "traffic and the promotion gate (service/rollout.py, docs/fleet.md)")


def load_settings(args: dict[str, Any] | None = None, overrides: Iterable[str] = (),
                  yaml_path: str | Path | None = None) -> ServiceSettings:
    return load_config(ServiceSettings, yaml_path, list(overrides), env_prefix=ENV_PREFIX, base=dict(args or {}))
