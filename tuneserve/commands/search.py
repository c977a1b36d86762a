"""CLI: `tuneserve search`: hyper-parameter search over a training config (Optuna; local or Ray Tune trials).

    tuneserve search training/configs/search-tiny.yaml
    tuneserve search training/configs/search-tiny.yaml sampler=random pruner=hyperband n_trials=12
    tuneserve search training/configs/search-tiny.yaml backend=ray ray.address=auto

Running the same config again resumes the study from its SQLite file (`storage`, default
`<output>/study.db`) until `n_trials` trials finished. Heavy imports live in the command body.
"""

from __future__ import annotations

import typer

from tuneserve.commands.common import console, load_cli_config

ARGS_HELP = ("optional CONFIG.yaml, then key=value overrides (e.g. sampler=tpe pruner=median n_trials=20 "
             "'space.optim.lr={type: loguniform, low: 1e-5, high: 1e-2}' train.max_steps=50)")


def _search(args: list[str] | None, backend: str | None) -> None:
    from training.search.config import ENV_PREFIX, SearchConfig
    from training.search.run import search

    cfg = load_cli_config(SearchConfig, [*(args or []), *([f"backend={backend}"] if backend else [])], ENV_PREFIX)
    console.print(f"[bold]search[/] {cfg.study_name}: {cfg.sampler} sampler, {cfg.pruner} pruner, "
                  f"{cfg.n_trials} trials on {cfg.backend} → {cfg.output}")
    report = search(cfg)
    states = ", ".join(f"{n} {s.lower()}" for s, n in report["states"].items())
    console.print(f"trials: {states}" + (f" (resumed {report['resumed_trials']})" if report["resumed_trials"] else ""))
    if report["stopped"]:
        console.print(f"[yellow]stopped early:[/] {report['stopped']}")
    best = report["best"]
    if best:
        console.print(f"[green]best[/] trial #{best['number']}: {report['metric']}={best['value']:.5f} → {best['artifact']}")
        for key, value in best["params"].items():
            console.print(f"  {key} = {value}")
    console.print(f"[green]wrote[/] {cfg.output}/report.md, report.json, history.png"
                  + (", importance.png" if report["importance"] else ""))


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search_cmd(
        args: list[str] | None = typer.Argument(None, help=ARGS_HELP),
        backend: str | None = typer.Option(None, "--backend", help="local (in-process, default) or ray (Ray Tune)."),
    ) -> None:
        """Hyper-parameter search (grid, random, TPE) with pruning; resumable; keeps the best artifact."""
        _search(args, backend)
