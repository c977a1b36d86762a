"""`distributed.backend=ray`: the same training run on Ray Train workers (`TorchTrainer`).

The driver (`train_on_ray`) starts or joins Ray, launches `distributed.workers` workers
(gloo on CPU, NCCL with `use_gpu`) and shows their progress. Each worker builds the run exactly
as one process does (`training.train.parts.prepare`), wraps the model with Ray Train's
`prepare_model` (DDP, or FSDP for models that do not fit one device) and runs the shared
`TrainLoop` on its slice of every global batch (`batch_size` stays the global batch). Rank 0
streams the averaged step records to the driver through a small actor (`Channel`); the
driver logs them to MLflow/TensorBoard like a single-process run and, in a search, hands each
evaluation to the pruner and sends its verdict back before the workers go on.

Checkpoints (`checkpoint_every`) go through `ray.train.report` into `distributed.storage`
(a directory or an S3-compatible URI, default `<output>.ray`); when a worker dies, Ray Train
restarts the group (`FailureConfig(max_failures)`) and every worker resumes from the last
one. Rank 0 alone writes the artifact with the same writer, so `cfg.output` must be a path the
rank-0 worker can write and the user can read (shared storage on a multi-node cluster).

    outcome = train(load_config(TrainConfig, "training/configs/lora-tiny.yaml",
                                ["distributed.backend=ray", "distributed.workers=2"]))
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.artifact import Manifest
from training.artifact.errors import ConfigError, TrainingError
from training.artifact.local_ray import start_or_join_ray
from training.train.checkpoint import latest_checkpoint, save_checkpoint
from training.train.config import TrainConfig
from training.train.loop import STEP_DELAY_ENV, LoopResult, TrainLoop
from training.train.methods import get_method
from training.train.reporting import RunReporter

CHANNEL_LIMIT = 10_000  # records held for the driver; the oldest go first when it lags
POLL_S = 0.2


class Stopped(Exception):
    """The driver's on_eval (a search pruner) stopped the run; every rank leaves the loop at the same step."""


class Channel:
    """Ray actor between rank 0 and the driver: step records one way, evaluation verdicts the other."""

    def __init__(self) -> None:
        self.items: deque = deque(maxlen=CHANNEL_LIMIT)
        self.verdicts: dict[int, str] = {}

    def put(self, item: dict[str, Any]) -> None:
        self.items.append(item)

    def drain(self) -> list[dict[str, Any]]:
        out = list(self.items)
        self.items.clear()
        return out

    def decide(self, step: int, reason: str) -> None:
        self.verdicts[step] = reason

    def verdict(self, step: int) -> str | None:
        return self.verdicts.pop(step, None)


def storage_uri(cfg: TrainConfig) -> str:
    where = cfg.distributed.storage or f"{cfg.output}.ray"
    return where if "://" in where else str(Path(where).expanduser().resolve())


def _prepare_storage(cfg: TrainConfig, name: str) -> str:
    """A fresh run starts from empty storage; resume=true needs the killed run's checkpoints there."""
    import pyarrow.fs

    uri = storage_uri(cfg)
    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    run_dir = f"{root.rstrip('/')}/{name}"
    exists = fs.get_file_info(run_dir).type != pyarrow.fs.FileType.NotFound
    if cfg.resume and not exists:
        raise TrainingError(f"resume=true but no Ray Train run {name!r} in {uri}",
                            "start without --resume, or set distributed.storage to the killed run's storage")
    if exists and not cfg.resume:
        fs.delete_dir(run_dir)
    return uri


def _trainer(cfg: TrainConfig, channel: Any, verdicts: bool, storage: str, name: str):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    dist = cfg.distributed
    resources = {"CPU": dist.cpus_per_worker, **({"GPU": 1} if dist.use_gpu else {})}
    return TorchTrainer(
        worker_main,
        train_loop_config={"cfg": cfg.model_dump_json(), "channel": channel, "verdicts": verdicts},
        torch_config=TorchConfig(backend="nccl" if dist.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=dist.workers, use_gpu=dist.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage, worker_runtime_env=_worker_env(),
                             failure_config=FailureConfig(max_failures=dist.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)))


def _worker_env() -> dict[str, Any] | None:
    """Hand the loop's debug throttle to the workers, wherever Ray was started."""
    delay = os.environ.get(STEP_DELAY_ENV)
    return {"env_vars": {STEP_DELAY_ENV: delay}} if delay else None


class Driver:
    """Runs `trainer.fit()` in a thread and handles what rank 0 sends while it runs."""

    def __init__(self, channel: Any, reporter: RunReporter, on_eval: Callable | None) -> None:
        self.channel, self.reporter, self.on_eval = channel, reporter, on_eval
        self.records: dict[int, dict[str, float]] = {}
        self.final: dict[str, Any] | None = None
        self.stopped_by: BaseException | None = None

    def handle(self, item: dict[str, Any]) -> None:
        kind = item["kind"]
        if kind == "begin":
            self.reporter.begin(item["total"], f"training on {item['world']} Ray workers")
        elif kind == "record":
            self.records[int(item["record"]["step"])] = item["record"]
            self.reporter.record(item["record"])
        elif kind == "eval":
            self.channel.decide.remote(item["step"], self._verdict(item["step"], item["record"]))
        elif kind == "final":
            self.final = item

    def _verdict(self, step: int, record: dict[str, float]) -> str:
        if self.on_eval is None or self.stopped_by is not None:
            return "stopped" if self.stopped_by is not None else ""
        try:
            self.on_eval(step, record)
        except BaseException as exc:  # noqa: BLE001 - e.g. optuna.TrialPruned; re-raised after the workers stop
            self.stopped_by = exc
            return f"stopped: {exc}"
        return ""

    def run(self, trainer: Any) -> Any:
        import ray

        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                outcome["error"] = exc

        thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
        thread.start()
        while True:
            alive = thread.is_alive()
            for item in ray.get(self.channel.drain.remote()):
                self.handle(item)
            if not alive:
                break
            thread.join(POLL_S)
        if "error" in outcome:
            raise TrainingError(f"Ray Train run failed: {outcome['error']}",
                                "see the worker error above; raise distributed.max_failures to retry more, "
                                "or run with distributed.backend=local to debug") from outcome["error"]
        return outcome["result"]


def train_on_ray(cfg: TrainConfig, on_eval: Callable[[int, dict[str, float]], None] | None = None):
    """Train `cfg` on Ray Train workers; returns a `TrainOutcome` without the in-memory model."""
    from training.train.parts import TrainOutcome

    get_method(cfg.method)
    if Path(cfg.output).exists() and not cfg.overwrite and "://" not in cfg.output:
        raise ConfigError(f"output {cfg.output} already exists", "choose another output= or pass overwrite=true")
    name = cfg.artifact_name()
    started_here = start_or_join_ray(cfg.distributed.address, cfg.distributed.num_cpus)  # before `import ray`
    import ray

    try:
        storage = _prepare_storage(cfg, name)
        channel = ray.remote(num_cpus=0)(Channel).remote()
        with RunReporter(cfg) as reporter:
            driver = Driver(channel, reporter, on_eval)
            driver.run(_trainer(cfg, channel, on_eval is not None, storage, name))
            if driver.stopped_by is not None:
                raise driver.stopped_by
            if driver.final is None:
                raise TrainingError("the Ray Train run ended without a result from rank 0",
                                    "check the worker logs (ray logs) for what stopped it")
            final = driver.final
            reporter.finish(final["metrics"], final["steps"])
        result = LoopResult(steps=final["steps"], metrics=final["metrics"],
                            history=[driver.records[s] for s in sorted(driver.records)],
                            stopped_early=final["stopped_early"], samples=final["samples"],
                            tokens=final.get("tokens", 0), train_seconds=final["train_seconds"], resumed_from=final["resumed_from"])
        manifest = Manifest.model_validate_json(final["manifest"])
        merged = Path(final["merged"]) if final["merged"] else None
        return TrainOutcome(artifact=Path(final["artifact"]), merged=merged, model=None, tokenizer=None,
                            result=result, manifest=manifest, examples=[], collate=None)
    finally:
        if started_here:
            ray.shutdown()


# ---- on each worker ---------------------------------------------------------------------------


def _ray_checkpoints(collective: Any, keep: int) -> Callable[[int, Any, Any, dict], None]:
    """Save through ray.train.report: rank 0 writes the replicas' state; with FSDP every rank its shard."""
    import ray.train

    def save(step: int, model: Any, optimizer: Any, extra: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="tuneserve-ckpt-") as tmp:
            checkpoint = None
            if collective.sharded or collective.is_main:
                where = Path(tmp) / f"rank-{collective.rank}" if collective.sharded else Path(tmp)
                save_checkpoint(where, step, model, optimizer, extra, keep)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"step": step}, checkpoint=checkpoint)

    return save


def _restored(collective: Any, stack: contextlib.ExitStack) -> Path | None:
    """The latest Ray Train checkpoint of this run (a restarted worker group's), copied to a temp dir that lives as
    long as `stack`, as this rank's step dir; None on a first start, which makes no temp dir (a SIGKILLed worker
    cannot remove its own)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    into = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tuneserve-restore-")))
    checkpoint.to_directory(str(into))
    return latest_checkpoint(into / f"rank-{collective.rank}" if collective.sharded else into)


def _on_eval(channel: Any, collective: Any) -> Callable[[int, dict[str, float]], None]:
    """Rank 0 asks the driver about each evaluation; all ranks stop together when it says so."""
    import ray

    def ask(step: int, record: dict[str, float]) -> None:
        stop = 0.0
        if collective.is_main:
            channel.put.remote({"kind": "eval", "step": step, "record": record})
            while (reason := ray.get(channel.verdict.remote(step))) is None:
                time.sleep(POLL_S / 4)
            stop = 1.0 if reason else 0.0
        if collective.total([stop])[0] > 0:
            raise Stopped(f"stopped by the driver at step {step}")

    return ask


def worker_main(config: dict[str, Any]) -> None:
    """The per-worker training function handed to `TorchTrainer`."""
    import ray.train
    import ray.train.torch

    from training.train.collective import TorchCollective
    from training.train.parts import prepare, test_metrics, write_outputs

    cfg = TrainConfig.model_validate_json(config["cfg"])
    channel = config["channel"]
    device = ray.train.torch.get_device()
    prep = prepare(cfg, device)
    cfg = prep.cfg
    collective = TorchCollective.prepare(prep.model, cfg.distributed.strategy, device,
                                         move=not prep.method.quantized_base)
    identity = {**prep.identity, "shards": collective.world if collective.sharded else 1}
    loop = TrainLoop(cfg, prep.model, prep.train_ex, prep.val_ex, prep.collate, device, prep.weights, identity,
                     collective=collective, checkpoint=_ray_checkpoints(collective, cfg.keep_checkpoints),
                     objective=prep.objective)
    main = collective.is_main
    if main:
        channel.put.remote({"kind": "begin", "total": loop.total_steps, "world": collective.world})
    on_record = (lambda record: channel.put.remote({"kind": "record", "record": record})) if main else None
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            result = loop.run(resume_from=_restored(collective, stack), on_record=on_record,
                              on_eval=_on_eval(channel, collective) if config["verdicts"] else None)
        except Stopped:
            return
    wall = time.perf_counter() - started
    result.metrics.update(test_metrics(cfg, loop, prep.splits, prep.enc))
    with collective.full_params():
        if main:
            manifest, artifact, merged = write_outputs(cfg, prep, result, wall, device)
            channel.put.remote({"kind": "final", "manifest": manifest.model_dump_json(), "artifact": str(artifact),
                                "merged": str(merged) if merged else None, "steps": result.steps,
                                "metrics": result.metrics, "samples": result.samples, "tokens": result.tokens,
                                "train_seconds": result.train_seconds, "stopped_early": result.stopped_early,
                                "resumed_from": result.resumed_from})
    ray.train.report({"done": 1})
