"""Run a hyper-parameter search end to end (`tuneserve search`).

Opens (or resumes) the SQLite study, runs trials on the chosen backend until `n_trials`
trials finished, the grid is exhausted, `timeout` passed, `patience` trials brought no
improvement or the `budget` cannot fit another trial as long as the longest so far; keeps the best trial's artifact as `<output>/best`, writes the report, and logs
the search as a tracked run with one nested run per trial.

    from training.search import SearchConfig, search
    report = search(load_config(SearchConfig, "training/configs/search-tiny.yaml", ["n_trials=8"]))
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from training.search.backends import BACKENDS, remaining_trials
from training.search.config import SearchConfig
from training.search.report import write_report
from training.search.study import finished, open_study, settle_trial, stale_since_best
from training.tracking import Tracker


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[best]}"), TimeElapsedColumn())


def _best_text(study) -> str:
    try:
        return f"best {study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        return "no completed trial yet"


def out_of_budget(budget: float | None, elapsed: float, longest_trial: float, fit: float = 1.0) -> bool:
    """True when `fit` of another trial as long as the longest one so far would end after `budget` seconds."""
    return budget is not None and elapsed + fit * longest_trial > budget


def _longest_trial(study) -> float:
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished(study)
             if t.datetime_complete and t.datetime_start]
    return max(spans, default=0.0)


def search(cfg: SearchConfig) -> dict[str, Any]:
    """Run (or resume) the study described by `cfg`; return the report dict (also on disk)."""
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    study = open_study(cfg)
    started = time.monotonic()
    resumed = len(finished(study))
    params = {"sampler": cfg.sampler, "pruner": cfg.pruner, "metric": cfg.metric, "n_trials": cfg.n_trials,
              "backend": cfg.backend, "space": {k: v.model_dump(exclude_none=True) for k, v in cfg.space.items()},
              "base": cfg.train.base, "method": cfg.train.method}
    tags = {"command": "search", "study": cfg.study_name, "resumed_trials": resumed}
    with Tracker(cfg.tracking).start_run(f"search-{cfg.study_name}", params=params, tags=tags) as run, \
            _progress(cfg.progress) as bar:
        task = bar.add_task("search", total=cfg.n_trials, completed=resumed, best=_best_text(study)) if bar else None

        def after(number: int) -> str | None:
            settle_trial(cfg, study, number)
            frozen = study.trials[number]
            run.log_metrics({"trial_value": frozen.value if frozen.value is not None else float("nan"),
                             "pruned": float(frozen.state.name == "PRUNED")}, step=number)
            if bar:
                bar.update(task, advance=1, best=_best_text(study))
            if cfg.patience and stale_since_best(cfg, study) >= cfg.patience:
                return f"no improvement in {cfg.patience} trials"
            elapsed = time.monotonic() - started
            if out_of_budget(cfg.budget, elapsed, _longest_trial(study), cfg.trial_fit):
                return f"budget: {elapsed:.0f} s of {cfg.budget:.0f} s used, another trial would not fit"
            return None

        deadline = started + cfg.budget if cfg.budget else None
        stopped = BACKENDS[cfg.backend](cfg, study, run.run_id, after, deadline) if remaining_trials(cfg, study) > 0 else None
        report = write_report(cfg, study, stopped)
        report["resumed_trials"] = resumed
        if report["best"]:
            run.log_metrics({f"best_{cfg.metric}": report["best"]["value"]})
        for name in ("report.json", "report.md", "history.png", "importance.png"):
            run.log_artifact(Path(cfg.output) / name)
    return report
