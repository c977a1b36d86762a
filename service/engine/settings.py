"""The engine's typed settings, with the one set of defaults (the serving settings derive from them).

    settings = EngineSettings(base_model="tiny-llama", batching=BatchingSettings(max_batch_size=8))
    engine = Engine(settings)              # registry: the ModelSettings fields; scheduler: settings.batching

`ServiceSettings` (service/settings.py) extends `EngineSettings`, so a service config is an engine
config: the keys stay top-level (`max_adapters: 4`, `batching.max_batch_size=8`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from training.artifact.config import StrictModel
from training.artifact.replay import ParityGate


class ModelSettings(StrictModel):
    """What the registry serves: the base, full-model artifacts and adapters."""

    base_model: str = "tiny-llama"
    base_task: Literal["causal-lm", "classification", "embedding"] = "causal-lm"
    dtype: str = "float32"
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:[0-9]+)?)$", description="where the models run: cpu, "
                        "cuda, cuda:N, or auto (the first CUDA device when torch sees one, else cpu)")
    artifacts_dir: Path | None = None
    models: list[Path] = Field(default_factory=list, description="extra full-model artifact dirs served by name")
    adapters: dict[str, str] = Field(default_factory=dict, description="extra adapters: name -> artifact dir "
                                     "or s3://bucket/prefix URI")
    max_adapters: int = Field(16, ge=1, description="LRU bound on loaded adapters (pinned ones count)")
    pinned: list[str] = Field(default_factory=list)
    prepack: bool = Field(True, description="on the CPU, run the models' Linear layers through oneDNN on weights "
                          "packed once (service/engine/prepack.py): ~2x faster decode-step matrix products, one more "
                          "copy of the Linear weights in memory")
    batched_lora: bool = Field(True, description="mixed-adapter batches via batched LoRA matmuls (else PEFT adapter_names)")
    embedding_model: str | None = Field(None, description="an encoder base served beside base_model for "
                                        "/v1/embeddings, e.g. all-minilm-l6-v2, with the adapters in artifacts_dir "
                                        "built on it (service/engine/embed.py); null: no embeddings")
    parity: ParityGate = Field(default_factory=ParityGate, description="replay each artifact's golden set through "
                               "its served form at load; refuse one that drifted past these tolerances")

    @model_validator(mode="after")
    def _one_role_per_base(self) -> "ModelSettings":
        if self.embedding_model is not None and self.embedding_model == self.base_model:
            raise ValueError(f"embedding_model {self.embedding_model!r} is also base_model: serve one model either "
                             "as the base (completions, classification) or for embeddings, not both")
        return self


class BatchingSettings(StrictModel):
    max_batch_size: int = Field(16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=5.0, description="an idle engine keeps collecting "
                                        "requests while they arrive less than this apart ...")
    batch_max_wait_s: float = Field(0.1, ge=0.0, le=5.0, description="... for at most this long in all")
    join_wait_s: float = Field(0.03, ge=0.0, le=1.0, description="a running batch admits new requests once "
                               "join_min_rows wait or the oldest waited this long (each admission costs one prefill "
                               "pass the running rows wait for); 0: admit at the next step")
    join_min_rows: int = Field(4, ge=1, le=256)


class CacheSettings(StrictModel):
    enabled: bool = True
    size: int = Field(1024, ge=0)
    ttl_s: float = Field(300.0, gt=0)
    max_bytes: int = Field(64 * 1024 * 1024, ge=0, description="bound on the estimated size of the cached replies "
                           "(text and logprobs), besides the entry count")


class PrefixCacheSettings(StrictModel):
    enabled: bool = Field(True, description="reuse the KV cache of prompt prefixes across requests "
                          "(service/engine/prefix_cache.py), per base and adapter version")
    max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="bound on the cached KV tensors (LRU)")
    block_tokens: int = Field(16, ge=1, le=1024, description="prefixes match in blocks of this many tokens")


class EngineSettings(ModelSettings):
    """Everything one replica's engine is built from (registry, scheduler, response and prefix caches, threads)."""

    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    prefix_cache: PrefixCacheSettings = Field(default_factory=PrefixCacheSettings)
    num_threads: int = Field(2, ge=1, description="torch threads in the engine replica")
