"""Showing and tracking a run's step records, in the process that owns the console.

The loop hands every step's record (`{"step", "loss", "lr", "val_*"...}`) to `on_record`; a
`RunReporter` turns it into a rich progress bar (`progress=true`) and, with
`tracking.enabled=true`, metrics of one tracked run (MLflow/TensorBoard, see `training.tracking`).
A single-process run reports from its loop; a Ray run reports on the driver the records the
workers averaged over all ranks (`training.train.ray_backend`), so both look the same.

    with RunReporter(cfg) as reporter:
        reporter.begin(total_steps)
        loop.run(on_record=reporter.record)
        reporter.finish(result.metrics, result.steps)
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from training.train.config import TrainConfig


def progress_bar():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())


def run_params(cfg: TrainConfig) -> dict[str, Any]:
    return {"base": cfg.base, "task": cfg.task, "method": cfg.method, "batch_size": cfg.batch_size,
            "grad_accum": cfg.grad_accum, "seed": cfg.seed, "order_seed": cfg.order_seed, "optim": cfg.optim.model_dump(),
            "distributed": cfg.distributed.model_dump(exclude={"address"})}


class RunReporter:
    """Progress bar and tracked run of one training run; records may arrive again after a resume."""

    def __init__(self, cfg: TrainConfig, description: str = "training") -> None:
        self.cfg, self.description = cfg, description
        self.total: int | None = None
        self.bar = self.task = self.run = None
        self._stack = ExitStack()

    def __enter__(self) -> RunReporter:
        if self.cfg.progress:
            self.bar = self._stack.enter_context(progress_bar())
        if self.cfg.tracking.enabled:
            from training.tracking import Tracker

            tags = {"command": "train", "backend": self.cfg.distributed.backend, "workers": self.cfg.distributed.workers}
            self.run = self._stack.enter_context(
                Tracker(self.cfg.tracking).start_run(self.cfg.artifact_name(), params=run_params(self.cfg), tags=tags))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run else None

    def begin(self, total: int, description: str | None = None) -> None:
        self.total = total
        if description:
            self.description = description

    def record(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        if self.bar is not None and self.total is not None:
            if self.task is None:
                self.task = self.bar.add_task(self.description, total=self.total, completed=step - 1, loss=float("nan"))
            self.bar.update(self.task, completed=step, loss=record["loss"], description=self.description)
        if self.run is not None:
            self.run.log_metrics({k: v for k, v in record.items() if k != "step"}, step=step)

    def finish(self, metrics: dict[str, Any], steps: int) -> None:
        if self.run is not None:
            self.run.log_metrics(metrics, step=steps)
