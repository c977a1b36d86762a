"""Experiment tracking: one `Tracker` that fans out to MLflow, TensorBoard, W&B and Comet.

MLflow (local file store `file:./mlruns` by default, any tracking server via `uri`) and
TensorBoard (`<tensorboard_dir>/<experiment>/<run>`) are on by default. W&B and Comet join
only when their package is importable AND they are configured (`WANDB_API_KEY` or
`WANDB_MODE`; `COMET_API_KEY`), and are silently absent otherwise. Every run records
system info (python, torch, cpu count, RAM, git commit) as tags.

    tracker = Tracker(TrackingConfig(experiment="banking77"))
    with tracker.start_run("evaluate", params={"model": "a"}, tags={"task": "classification"}) as run:
        run.log_metrics({"accuracy": 0.9}, step=0)
        run.log_artifact("eval_report.json")
    run.run_id            # the MLflow run id; pass it as `parent_run_id` for nested (search) trials
"""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from pydantic import Field

from training.artifact.config import StrictModel

log = logging.getLogger(__name__)


class TrackingConfig(StrictModel):
    enabled: bool = True
    uri: str = "file:./mlruns"
    experiment: str = "tuneserve"
    tensorboard_dir: str = "runs"
    backends: list[str] = Field(default_factory=lambda: ["mlflow", "tensorboard", "wandb", "comet"])


def system_info() -> dict[str, str]:
    """Where a run happened: interpreter, torch, CPU count, RAM and the git commit of the working tree."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": str(os.cpu_count())}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = str(torch.cuda.is_available())
    except ImportError:
        pass
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["ram_gib"] = f"{pages * page_size / 2**30:.1f}"
    except (ValueError, OSError, AttributeError):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Keep finite-or-nan numbers only (nested dicts flattened); reports log lists and tables as artifacts."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in _numeric(value).items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class Backend:
    """One tracking destination. Subclasses implement the four calls; `available` says if it can run."""

    name = ""
    module = ""  # the package that must be importable
    env: tuple[str, ...] = ()  # when given, at least one must be set (the backend is configured)

    @classmethod
    def available(cls) -> bool:
        configured = not cls.env or any(os.environ.get(name) for name in cls.env)
        return configured and _importable(cls.module)

    def start(self, config: TrackingConfig, name: str, params: dict[str, str], tags: dict[str, str],
              parent_run_id: str | None) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_artifact(self, path: Path) -> None:
        raise NotImplementedError

    def end(self, status: str) -> None:
        raise NotImplementedError


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    BACKENDS[cls.name] = cls
    return cls


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def local_store_uri(uri: str) -> str:
    """A relative file store (`file:./mlruns`, `mlruns`) as the absolute `file://` URI it names now.

    MLflow caches one store per URI string: a relative one, made in the first working directory, fails
    in any later one that has no such directory ("'./mlruns' does not exist")."""
    if uri.startswith("file://") or (":" in uri and not uri.startswith("file:")) or uri in {"databricks", "uc"}:
        return uri  # a server, a database, an absolute file URI, or MLflow's own names
    path = Path(uri.removeprefix("file:")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


@register_backend
class MlflowBackend(Backend):
    name = "mlflow"
    module = "mlflow"

    def start(self, config, name, params, tags, parent_run_id):
        uri = local_store_uri(config.uri)
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store in maintenance mode behind this opt-in; it is our offline default.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment_id = self._experiment_id(config.experiment)
        run_tags = {"mlflow.runName": name, **tags}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        self.run = self.client.create_run(experiment_id, run_name=name, tags=run_tags)
        self.run_id = self.run.info.run_id
        items = list(params.items())
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[start:start + 100]])

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # created meanwhile by a parallel run (e.g. search trials)
            return self.client.get_experiment_by_name(name).experiment_id

    def log_metrics(self, metrics, step):
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, v, stamp, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])

    def log_artifact(self, path):
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
        else:
            self.client.log_artifact(self.run_id, str(path))

    def end(self, status):
        self.client.set_terminated(self.run_id, status=status)


@register_backend
class TensorBoardBackend(Backend):
    name = "tensorboard"
    module = "tensorboard"

    def start(self, config, name, params, tags, parent_run_id):
        from torch.utils.tensorboard import SummaryWriter

        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
        self.logdir = Path(config.tensorboard_dir) / config.experiment / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        table = "\n".join(f"| {k} | {v} |" for k, v in {**params, **tags}.items())
        self.writer.add_text("params", "| key | value |\n|---|---|\n" + table, 0)

    def log_metrics(self, metrics, step):
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_artifact(self, path):
        self.writer.add_text("artifacts", str(path.resolve()), 0)

    def end(self, status):
        self.writer.add_text("status", status, 0)
        self.writer.close()


@register_backend
class WandbBackend(Backend):
    name = "wandb"
    module = "wandb"
    env = ("WANDB_API_KEY", "WANDB_MODE")  # WANDB_MODE=offline works without an account

    def start(self, config, name, params, tags, parent_run_id):
        import wandb

        labels = [f"{k}={v}"[:64] for k, v in tags.items() if not k.startswith("sys.")]
        self.run = wandb.init(project=config.experiment, name=name, config={**params, **tags}, tags=labels[:20],
                              group=parent_run_id, reinit=True)

    def log_metrics(self, metrics, step):
        self.run.log(metrics, step=step)

    def log_artifact(self, path):
        self.run.save(str(path), policy="now")

    def end(self, status):
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


@register_backend
class CometBackend(Backend):
    name = "comet"
    module = "comet_ml"
    env = ("COMET_API_KEY",)

    def start(self, config, name, params, tags, parent_run_id):
        import comet_ml

        self.experiment = comet_ml.Experiment(project_name=config.experiment)
        self.experiment.set_name(name)
        self.experiment.log_parameters(params)
        self.experiment.add_tags([f"{k}={v}" for k, v in tags.items()][:50])

    def log_metrics(self, metrics, step):
        self.experiment.log_metrics(metrics, step=step)

    def log_artifact(self, path):
        self.experiment.log_asset(str(path))

    def end(self, status):
        self.experiment.end()


class TrackedRun:
    """An open run on every active backend. A backend that fails is logged and dropped, never fatal."""

    def __init__(self, backends: list[Backend], name: str) -> None:
        self.backends = backends
        self.name = name
        self.step = 0
        self.closed = False

    @property
    def run_id(self) -> str | None:
        return next((getattr(b, "run_id") for b in self.backends if hasattr(b, "run_id")), None)

    @property
    def active(self) -> list[str]:
        return [b.name for b in self.backends]

    def _each(self, action: Callable[[Backend], None], what: str) -> None:
        for backend in list(self.backends):
            try:
                action(backend)
            except Exception as exc:  # noqa: BLE001 - tracking must never break training or evaluation
                log.warning("tracking backend %s failed to %s (%s); dropping it for this run", backend.name, what, exc)
                self.backends.remove(backend)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = _numeric(metrics)
        if not values:
            return
        step = self.step if step is None else step
        self.step = step + 1
        self._each(lambda b: b.log_metrics(values, step), "log metrics")

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        if path.exists():
            self._each(lambda b: b.log_artifact(path), f"log artifact {path}")

    def end(self, status: str = "FINISHED") -> None:
        if not self.closed:
            self.closed = True
            self._each(lambda b: b.end(status), "end the run")

    def __enter__(self) -> "TrackedRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")


class Tracker:
    """Creates runs on the configured backends that are importable and configured here."""

    def __init__(self, config: TrackingConfig | None = None) -> None:
        self.config = config or TrackingConfig()
        unknown = [b for b in self.config.backends if b not in BACKENDS]
        if unknown:
            from training.artifact.errors import ConfigError

            raise ConfigError(f"unknown tracking backend(s) {unknown}", f"choose from {sorted(BACKENDS)}")

    def available_backends(self) -> list[str]:
        if not self.config.enabled:
            return []
        return [name for name in self.config.backends if BACKENDS[name].available()]

    def start_run(self, name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                  parent_run_id: str | None = None) -> TrackedRun:
        flat_params = _flatten(params or {})
        all_tags = {**{f"sys.{k}": v for k, v in system_info().items()}, **{k: str(v) for k, v in (tags or {}).items()}}
        started: list[Backend] = []
        for name_ in self.available_backends():
            backend = BACKENDS[name_]()
            try:
                backend.start(self.config, name, flat_params, all_tags, parent_run_id)
                started.append(backend)
            except Exception as exc:  # noqa: BLE001
                log.warning("tracking backend %s could not start (%s); continuing without it", name_, exc)
        return TrackedRun(started, name)
