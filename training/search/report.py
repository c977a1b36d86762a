"""The search report: best params, parameter importance, optimization history (JSON, Markdown, PNGs).

`write_report(cfg, study)` writes `report.json`, `report.md`, `history.png` (objective of
every finished trial plus the best so far) and `importance.png` (Optuna's fANOVA importance;
skipped with a reason when fewer than two trials completed or no parameter varied).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.search.config import SearchConfig


def importance(study) -> tuple[dict[str, float] | None, str | None]:
    """(param -> importance, None), or (None, why it could not be computed)."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"needs at least 2 completed trials (have {len(complete)})"
    try:
        values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return None, f"could not be computed: {exc}"
    return {k: float(v) for k, v in values.items()}, None


def trial_rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        intermediate = dict(sorted(t.intermediate_values.items()))
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                     "cut_by_budget": t.user_attrs.get("cut_by_budget"),
                     "intermediate": {str(k): v for k, v in intermediate.items()},
                     "seconds": t.duration.total_seconds() if t.duration else None})
    return rows


def _plot_history(path: Path, rows: list[dict], metric: str, minimize: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    pruned = [r for r in rows if r["state"] == "PRUNED" and r["intermediate"]]
    ax.scatter([r["number"] for r in complete], [r["value"] for r in complete], label="complete", color="tab:blue")
    ax.scatter([r["number"] for r in pruned], [list(r["intermediate"].values())[-1] for r in pruned],
               label="pruned (last report)", color="tab:gray", marker="x")
    best, xs, ys = None, [], []
    for r in complete:
        if best is None or (r["value"] < best if minimize else r["value"] > best):
            best = r["value"]
        xs.append(r["number"])
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimization history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_importance(path: Path, values: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(6, 1 + 0.5 * len(names)))
    ax.barh(names, [values[n] for n in names], color="tab:green")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(report: dict[str, Any]) -> str:
    best = report["best"]
    lines = [f"# Search `{report['study_name']}`", "",
             f"- sampler **{report['sampler']}**, pruner **{report['pruner']}**, backend {report['backend']}",
             f"- objective: {report['direction']} `{report['metric']}`",
             "- trials: " + ", ".join(f"{n} {state.lower()}" for state, n in report["states"].items()), ""]
    if best:
        lines += [f"## Best trial #{best['number']}: {report['metric']} = {best['value']:.5f}", "",
                  f"Artifact: `{best['artifact']}`", "", "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | {v} |" for k, v in best["params"].items()]
    else:
        lines += ["No trial completed."]
    lines += ["", "## Parameter importance", ""]
    if report["importance"]:
        lines += ["| parameter | importance |", "|---|---|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in report["importance"].items()]
    else:
        lines += [f"Not available: {report['importance_note']}."]
    lines += ["", "## Trials", "", f"| # | state | {report['metric']} | params |", "|---|---|---|---|"]
    for r in report["trials"]:
        value = "" if r["value"] is None else f"{r['value']:.5f}"
        state = r["state"] if r.get("cut_by_budget") is None else f"{r['state']} (cut by the budget at step {r['cut_by_budget']})"
        lines.append(f"| {r['number']} | {state} | {value} | {json.dumps(r['params'])} |")
    if report.get("choice"):
        choice = report["choice"]
        lines += ["", f"## Written: trial #{choice['trial']} ({report['metric']} = {choice['value']:.5f}): {choice['why']}"]
    if report.get("refit_decision"):
        lines += ["", f"- {report['refit_decision']}"]
    if report.get("refit"):
        refit = report["refit"]
        lines += ["", f"## Refit: the chosen trial's settings retrained on train + validation for {refit['steps']} "
                  f"steps (the steps its trial selected), {refit['seconds']:.0f} s; that run is the artifact"]
    if report.get("soup"):
        soup = report["soup"]
        outcome = "the artifact" if soup["written"] else "not written"
        lines += ["", f"## Weight soup: {soup['members']} runs of the chosen settings ({outcome}): {soup['why']}"]
    plots = [p for p in report["plots"].values() if p]
    lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots], ""]
    return "\n".join(lines)


def write_report(cfg: SearchConfig, study, stopped: str | None = None) -> dict[str, Any]:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = None
    if complete:
        trial = study.best_trial
        best = {"number": trial.number, "value": trial.value, "params": trial.params, "artifact": str(out / "best")}
    values, note = importance(study)
    plots = {"history": str(out / "history.png"), "importance": str(out / "importance.png") if values else None}
    _plot_history(out / "history.png", rows, cfg.metric, cfg.resolved_direction() == "minimize")
    if values:
        _plot_importance(out / "importance.png", values)
    report = {"study_name": cfg.study_name, "storage": str(cfg.storage_path()), "sampler": cfg.sampler,
              "pruner": cfg.pruner, "backend": cfg.backend, "metric": cfg.metric,
              "direction": cfg.resolved_direction(), "states": states, "stopped": stopped, "best": best,
              "importance": values, "importance_note": note, "plots": plots, "trials": rows}
    save_report(out, report)
    return report


def save_report(out: Path, report: dict[str, Any]) -> None:
    """report.json and report.md in the search's output directory."""
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
