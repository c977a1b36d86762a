"""The typed configuration of a hyper-parameter search (`tuneserve search [CONFIG.yaml] [key=value ...]`).

`train:` is a full `TrainConfig`, the base of every trial; `space:` maps dotted TrainConfig
keys to a distribution; each trial applies its sampled values as dotted overrides onto `train`.

    space:
      optim.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
      lora.r: {type: categorical, choices: [4, 8, 16]}
      batch_size: {type: int, low: 4, high: 16, step: 4}

Study state lives in SQLite (`storage`, default `<output>/study.db`), so running the same
config again resumes the study up to `n_trials` finished trials.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from training.artifact.config import StrictModel, set_dotted
from training.artifact.errors import ConfigError
from training.tracking import TrackingConfig
from training.train.config import TrainConfig
from training.train.loop import lower_is_better

ENV_PREFIX = "TUNESERVE_SEARCH__"
TRIAL_DRIVER_MEMORY = 512 * 2**20  # bytes a Ray Tune trial reserves to drive a Ray Train run


class SearchTracking(TrackingConfig):
    """Tracking of a search: its runs go to experiment `search` unless told otherwise (also when
    only other tracking keys, such as `tracking.uri`, are given)."""

    experiment: str = "search"


class ParamSpec(StrictModel):
    """One searched parameter: a range (float, int, loguniform) or a list of choices (categorical)."""

    type: Literal["float", "int", "categorical", "loguniform"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0, description="float/int grid spacing")
    choices: list[Any] | None = None
    grid_points: int = Field(3, ge=2, description="grid sampler: points of a float/loguniform range without step")

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            return self
        if self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"a {self.type} parameter needs low < high (got low={self.low}, high={self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("a loguniform parameter needs low > 0")
        return self

    def grid(self) -> list[Any]:
        """The values the grid sampler visits."""
        if self.type == "categorical":
            return list(self.choices)
        low, high = self.low, self.high
        if self.type == "int":
            return list(range(int(low), int(high) + 1, int(self.step or 1)))
        if self.step:
            return [low + i * self.step for i in range(int(math.floor((high - low) / self.step + 1e-9)) + 1)]
        if self.type == "loguniform":
            ratio = (high / low) ** (1 / (self.grid_points - 1))
            return [low * ratio**i for i in range(self.grid_points)]
        return [low + (high - low) * i / (self.grid_points - 1) for i in range(self.grid_points)]

    def example(self) -> Any:
        return self.grid()[0]

    def admits(self, value: Any) -> bool:
        """Whether `value` is a point of this parameter (a first trial must be)."""
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


class RayOptions(StrictModel):
    address: str | None = Field(None, description="an existing Ray cluster (ray://host:10001 or auto); default: start a local one")
    num_cpus: int = Field(2, gt=0, description="CPUs of the local Ray instance")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs of a trial that trains in its own process; a trial "
                                  "whose train.distributed.backend=ray asks none (its Ray Train workers hold them)")
    concurrency: int = Field(1, gt=0, description="trials run at the same time")


class SearchConfig(StrictModel):
    """A study: the base run, the space, how to sample and prune, what to optimise, where to keep state."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    space: dict[str, ParamSpec] = Field(min_length=1)
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    pruner: Literal["none", "median", "hyperband"] = "median"
    n_trials: int = Field(20, gt=0, description="finished (complete or pruned) trials to reach, counting resumed ones")
    timeout: float | None = Field(None, gt=0, description="seconds; no new trial starts after it")
    budget: float | None = Field(None, gt=0, description="seconds for the whole search: after each trial, stop "
                                 "when the longest trial so far would not fit in what is left")
    metric: str = Field("val_loss", description="validation metric the trials report (val_loss, val_accuracy)")
    direction: Literal["minimize", "maximize"] | None = Field(None, description="default: minimize losses, maximize others")
    patience: int | None = Field(None, gt=0, description="stop the search after N finished trials without a new best")
    startup_trials: int = Field(1, ge=0, description="trials completed before the pruner may prune")
    trial_fit: float = Field(1.0, gt=0, le=1, description="share of the longest trial so far that must still fit in "
                             "the budget for another trial to start")
    cut_trials_compete: bool = Field(False, description="a trial the budget ends at an evaluation keeps its best "
                                     "validated weights and competes (else it is pruned)")
    first_trials: list[dict[str, Any]] = Field(default_factory=list, description="settings tried before the "
                                               "sampler's own (e.g. the recipe's defaults), when the study is new")
    storage: str | None = Field(None, description="SQLite file of the study (default: <output>/study.db)")
    study_name: str = "search"
    output: str = "artifacts/search"
    backend: Literal["local", "ray"] = "local"
    ray: RayOptions = Field(default_factory=RayOptions)
    seed: int = 0
    keep_trial_artifacts: bool = Field(False, description="keep every trial's artifact, not only the best one")
    progress: bool = True
    tracking: SearchTracking = Field(default_factory=SearchTracking)

    @field_validator("space", mode="before")
    @classmethod
    def _flatten_space(cls, value: Any) -> Any:
        """Accept nested keys too (`space.optim.lr={...}` on the command line nests `optim: {lr: ...}`)."""
        if not isinstance(value, dict):
            return value
        flat: dict[str, Any] = {}
        for key, spec in value.items():
            if isinstance(spec, dict) and "type" not in spec:
                flat.update({f"{key}.{k}": v for k, v in cls._flatten_space(spec).items()})
            else:
                flat[key] = spec
        return flat

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        for key, spec in self.space.items():
            try:
                trial_config(self.train, {key: spec.example()}, "check")
            except ConfigError as exc:
                raise ValueError(f"space key {key!r}: {exc.message}") from None
        for params in self.first_trials:
            for key, value in params.items():
                if key not in self.space or not self.space[key].admits(value):
                    raise ValueError(f"first_trials: {key}={value!r} is not a point of the space "
                                     f"({self.space[key].model_dump(exclude_none=True) if key in self.space else 'not searched'})")
        if self.sampler == "grid" and self.grid_size() > 10_000:
            raise ValueError(f"the grid has {self.grid_size()} points; narrow the space or use sampler=tpe")
        return self

    def trial_resources(self) -> dict[str, float]:
        """What one Ray Tune trial reserves: a CPU to train in, or, when it only drives Ray Train workers
        (which hold the CPUs/GPUs), no CPU and the driver's memory (Tune refuses an all-zero request)."""
        if self.train.distributed.backend == "ray":
            return {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}
        return {"cpu": self.ray.cpus_per_trial}

    def resolved_direction(self) -> str:
        return self.direction or ("minimize" if lower_is_better(self.metric) else "maximize")

    def storage_path(self) -> Path:
        return Path(self.storage) if self.storage else Path(self.output) / "study.db"

    def storage_url(self) -> str:
        return f"sqlite:///{self.storage_path().resolve()}"

    def grid_size(self) -> int:
        return math.prod(len(spec.grid()) for spec in self.space.values())


def trial_config(base: TrainConfig, params: dict[str, Any], output: str | Path) -> TrainConfig:
    """`base` with the dotted `params` applied, written to `output`, without resume or checkpoints."""
    data = base.model_dump()
    for key, value in params.items():
        set_dotted(data, key.split("."), value)
    data.update(output=str(output), overwrite=True, resume=False, checkpoint_every=None, progress=False)
    try:
        return TrainConfig.model_validate(data)
    except Exception as exc:  # pydantic ValidationError: an unknown key or a value the trainer refuses
        raise ConfigError(f"parameters {params} do not make a valid training config: {exc}",
                          "search only TrainConfig keys (e.g. optim.lr, lora.r, batch_size) within their valid ranges") from None
