"""Where trials run: `local` (in this process, `study.optimize`) or `ray` (Ray Tune workers).

Both take `(cfg, study, parent_run_id, after)` where `after(number)` settles a finished trial
(locally, a trial still running at `deadline`, the end of the budget, stops at its next evaluation)
and returns a reason to stop the search (patience) or None. The Ray backend asks the study
for trials in the driver (so the sampler sees every result), fixes their parameters there,
and runs each in a Tune function trainable that reopens the study from its storage to
report intermediate values to the pruner. Workers therefore need the storage and the
output directory on a shared filesystem (always true for a local Ray instance).
With `train.distributed.backend=ray` each trial is itself a multi-worker Ray Train run (Ray Tune
over Ray Train): the trial only drives it and reserves no CPU, its workers hold the resources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from training.artifact.errors import TrainingError
from training.artifact.local_ray import start_or_join_ray
from training.search.config import SearchConfig
from training.search.study import PRUNERS, SAMPLERS, finished, run_trial, suggest

After = Callable[[int], "str | None"]


def remaining_trials(cfg: SearchConfig, study) -> int:
    left = cfg.n_trials - len(finished(study))
    return min(left, cfg.grid_size() - len(finished(study))) if cfg.sampler == "grid" else left


def run_local(cfg: SearchConfig, study, parent_run_id: str | None, after: After,
              deadline: float | None = None) -> str | None:
    stop: dict[str, Any] = {"reason": None}

    def callback(study_, frozen) -> None:
        reason = after(frozen.number)
        if reason:
            stop["reason"] = reason
            study_.stop()

    study.optimize(lambda trial: run_trial(cfg, trial, parent_run_id, deadline), n_trials=max(0, remaining_trials(cfg, study)),
                   timeout=cfg.timeout, callbacks=[callback], catch=(), gc_after_trial=True)
    return stop["reason"]


def ray_trial(config: dict[str, Any], cfg_json: str, parent_run_id: str | None, trial_ids: dict[int, int]) -> None:
    """Tune function trainable: run one already-asked trial of the stored study."""
    import optuna
    from ray import tune

    cfg = SearchConfig.model_validate_json(cfg_json)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url(),
                              sampler=SAMPLERS[cfg.sampler](cfg, cfg.seed), pruner=PRUNERS[cfg.pruner](cfg))
    trial = optuna.trial.Trial(study, trial_ids[config["number"]])
    try:
        value = run_trial(cfg, trial, parent_run_id)
    except optuna.TrialPruned:
        tune.report({"pruned": 1, "objective": float("nan")})
        return
    tune.report({"pruned": 0, "objective": value})


def run_ray(cfg: SearchConfig, study, parent_run_id: str | None, after: After,
            deadline: float | None = None) -> str | None:
    import time

    from optuna.trial import TrialState

    started_here = start_or_join_ray(cfg.ray.address, cfg.ray.num_cpus)  # before `import ray`
    import ray
    from ray import tune

    timeout_at = time.monotonic() + cfg.timeout if cfg.timeout else None  # (`deadline`: only between batches)
    storage = (Path(cfg.output) / "ray").resolve()
    try:
        batch_no = 0
        while remaining_trials(cfg, study) > 0:
            if timeout_at and time.monotonic() > timeout_at:
                return "timeout"
            if deadline and time.monotonic() > deadline:
                return "budget spent"
            asked = [study.ask() for _ in range(min(cfg.ray.concurrency, remaining_trials(cfg, study)))]
            for trial in asked:
                suggest(cfg, trial)
            trainable = tune.with_resources(
                tune.with_parameters(ray_trial, cfg_json=cfg.model_dump_json(), parent_run_id=parent_run_id,
                                     trial_ids={t.number: t._trial_id for t in asked}),
                cfg.trial_resources())
            tuner = tune.Tuner(trainable, param_space={"number": tune.grid_search([t.number for t in asked])},
                               tune_config=tune.TuneConfig(max_concurrent_trials=cfg.ray.concurrency),
                               run_config=tune.RunConfig(name=f"{cfg.study_name}-{batch_no}", storage_path=str(storage),
                                                         verbose=0))
            batch_no += 1
            reason = None
            for result in tuner.fit():
                number = result.config["number"]
                if result.error is not None:
                    study.tell(number, state=TrialState.FAIL)
                    raise TrainingError(f"trial {number} failed on Ray: {result.error}",
                                        "run with backend=local to see the error directly")
                if result.metrics.get("pruned"):
                    study.tell(number, state=TrialState.PRUNED)
                else:
                    study.tell(number, result.metrics["objective"])
                reason = after(number) or reason
            if reason:
                return reason
        return None
    finally:
        if started_here:
            ray.shutdown()


BACKENDS: dict[str, Callable[[SearchConfig, Any, "str | None", After], "str | None"]] = {
    "local": run_local, "ray": run_ray}
