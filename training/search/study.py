"""Optuna pieces of a search: samplers, pruners, suggestions, one trial, and keeping the best artifact.

`open_study(cfg)` creates or resumes the SQLite-backed study; `run_trial(cfg, trial, parent)`
trains one configuration (reporting the validation metric at each evaluation so the pruner
can stop it with `optuna.TrialPruned`) and logs it as a nested tracked run; `settle_trial`
keeps only the best trial's artifact (as `<output>/best`). Both backends share these.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from training.artifact.errors import ConfigError
from training.search.config import ParamSpec, SearchConfig, trial_config
from training.tracking import Tracker


def _sampler_grid(cfg: SearchConfig, seed: int):
    import optuna

    return optuna.samplers.GridSampler({key: spec.grid() for key, spec in cfg.space.items()}, seed=seed)


def _sampler_random(cfg: SearchConfig, seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _sampler_tpe(cfg: SearchConfig, seed: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, cfg.n_trials // 3)))


SAMPLERS: dict[str, Callable[[SearchConfig, int], Any]] = {"grid": _sampler_grid, "random": _sampler_random,
                                                      "tpe": _sampler_tpe}


def _max_evals(cfg: SearchConfig) -> int:
    train = cfg.train
    return max(1, (train.max_steps or 1000) // (train.eval_every or 1))


def _pruner_none(cfg: SearchConfig):
    import optuna

    return optuna.pruners.NopPruner()


def _pruner_median(cfg: SearchConfig):
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=0)


def _pruner_hyperband(cfg: SearchConfig):
    import optuna

    # Steps are evaluation indices (1, 2, ...), so the budget is the number of mid-run evaluations.
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=_max_evals(cfg), reduction_factor=2)


PRUNERS: dict[str, Callable[[SearchConfig], Any]] = {"none": _pruner_none, "median": _pruner_median,
                                                     "hyperband": _pruner_hyperband}

SUGGEST: dict[str, Callable[[Any, str, ParamSpec], Any]] = {
    "float": lambda t, k, s: t.suggest_float(k, s.low, s.high, step=s.step),
    "loguniform": lambda t, k, s: t.suggest_float(k, s.low, s.high, log=True),
    "int": lambda t, k, s: t.suggest_int(k, int(s.low), int(s.high), step=int(s.step or 1)),
    "categorical": lambda t, k, s: t.suggest_categorical(k, s.choices),
}


def open_study(cfg: SearchConfig):
    """Create the study, or load it from its SQLite file; fail runs a killed search left behind."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg.storage_path().parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(storage=cfg.storage_url(), study_name=cfg.study_name, load_if_exists=True,
                                    direction=cfg.resolved_direction(), sampler=SAMPLERS[cfg.sampler](cfg, cfg.seed),
                                    pruner=PRUNERS[cfg.pruner](cfg))
    except ValueError as exc:  # e.g. the stored study optimises the other direction
        raise ConfigError(f"cannot open study {cfg.study_name!r} in {cfg.storage_path()}: {exc}",
                          "use the same metric/direction as the stored study, or another study_name/storage") from None
    resumed = len(study.get_trials(deepcopy=False))
    if not resumed:
        for params in cfg.first_trials:
            study.enqueue_trial(params, skip_if_exists=True)
    if resumed and cfg.sampler != "grid":  # re-seeded as at the start, it would propose the stored trials again
        study.sampler = SAMPLERS[cfg.sampler](cfg, cfg.seed + resumed)  # (grid ids index the seed's grid order)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    return study


def finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def trial_dir(cfg: SearchConfig, number: int) -> Path:
    return Path(cfg.output) / "trials" / f"trial-{number:03d}"


def suggest(cfg: SearchConfig, trial) -> dict[str, Any]:
    return {key: SUGGEST[spec.type](trial, key, spec) for key, spec in cfg.space.items()}


def _spent(deadline: float | None, trial) -> bool:
    """The search budget is used up and some trial already completed (so stopping this one still leaves a winner)."""
    from optuna.trial import TrialState

    return (deadline is not None and time.monotonic() > deadline
            and bool(trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))


def run_trial(cfg: SearchConfig, trial, parent_run_id: str | None = None, deadline: float | None = None) -> float:
    """Train one trial; return the objective, or raise `optuna.TrialPruned` when the pruner stops it. At an
    evaluation after `deadline` (time.monotonic()), once another trial completed, the trial ends there (the
    budget is honoured mid-trial): pruned, or with `cut_trials_compete` finished with its best validated weights."""
    import optuna

    from training.train.run import train

    params = suggest(cfg, trial)
    out = trial_dir(cfg, trial.number)
    train_cfg = trial_config(cfg.train, params, out).model_copy(update={"name": f"{cfg.study_name}-trial-{trial.number}"})
    evals = {"count": 0}
    tags = {"command": "search", "study": cfg.study_name, "trial": trial.number, "sampler": cfg.sampler}
    run = Tracker(cfg.tracking).start_run(f"trial-{trial.number}", params=params, tags=tags, parent_run_id=parent_run_id)

    def on_eval(step: int, record: dict[str, float]) -> bool:
        if cfg.metric not in record:
            raise ConfigError(f"the trials do not report metric {cfg.metric!r}",
                              f"use one of {sorted(k for k in record if k.startswith('val_'))}")
        evals["count"] += 1
        run.log_metrics({k: v for k, v in record.items() if k != "step"}, step=step)
        trial.report(record[cfg.metric], evals["count"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({cfg.metric}={record[cfg.metric]:.4f})")
        if _spent(deadline, trial):
            if cfg.cut_trials_compete:
                trial.set_user_attr("cut_by_budget", step)
                return True  # ends like early stopping: its best validated weights are written and compete
            raise optuna.TrialPruned(f"stopped at step {step}: the search budget is spent")
        return False

    try:
        outcome = train(train_cfg, on_eval=on_eval)
    except optuna.TrialPruned:
        run.end("KILLED")
        shutil.rmtree(out, ignore_errors=True)
        raise
    except BaseException:
        run.end("FAILED")
        raise
    metrics = outcome.result.metrics
    if cfg.metric not in metrics:
        run.end("FAILED")
        raise ConfigError(f"the trials do not report metric {cfg.metric!r}",
                          f"use one of {sorted(k for k in metrics if k.startswith(('val_', 'test_')))} "
                          "(validation metrics need a validation split)")
    run.log_metrics(metrics, step=outcome.result.steps)
    run.end("FINISHED")
    trial.set_user_attr("artifact", str(out))
    trial.set_user_attr("steps", outcome.result.steps)
    return float(metrics[cfg.metric])


def settle_trial(cfg: SearchConfig, study, number: int) -> None:
    """After trial `number` finished: make `<output>/best` the best trial's artifact, drop the others."""
    out = trial_dir(cfg, number)
    try:
        best = study.best_trial.number
    except ValueError:  # no completed trial yet
        best = None
    if best == number and out.is_dir():
        dest = Path(cfg.output) / "best"
        staging = dest.with_name(".best.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(out, staging)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    shutil.rmtree(out.with_name(f"{out.name}.ray"), ignore_errors=True)  # a Ray Train trial's run state
    if not cfg.keep_trial_artifacts:
        shutil.rmtree(out, ignore_errors=True)


def stale_since_best(cfg: SearchConfig, study) -> int:
    """Finished trials after the best one (all of them when none completed)."""
    try:
        best = study.best_trial.number
    except ValueError:
        best = -1
    return sum(1 for t in finished(study) if t.number > best)
