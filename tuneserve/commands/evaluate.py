"""`tuneserve evaluate` and `tuneserve human-eval export|import`.

    tuneserve evaluate --model artifacts/banking77 --data data/prepared/banking77
    tuneserve evaluate --model http://localhost:8000#my-adapter --data squad.jsonl --task qa limit=200
    tuneserve evaluate --compare artifacts/a artifacts/b --data data/prepared/alpaca
    tuneserve evaluate --parity artifacts/my-int8 --max-kl 0.1     # golden-set replay; exit 1 over the threshold
    tuneserve human-eval export --prompts prompts.jsonl --model a=artifacts/a --model b=artifacts/b --out sheet/
    tuneserve human-eval import --key sheet.key/key.json --ratings rater1.csv --ratings rater2.csv

Options are shortcuts for `key=value` overrides of `EvalConfig` (YAML < TUNESERVE_EVAL__* < overrides).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from tuneserve.commands.common import console, load_cli_config

ARGS = typer.Argument(None, help="[CONFIG.yaml] [key=value ...] overrides of the evaluation config.")


def _overrides(**options) -> list[str]:
    return [f"{key}={value}" for key, value in options.items() if value is not None]


def _print_metrics(title: str, rows: list[tuple[str, object]]) -> None:
    from rich.table import Table

    from training.evaluation.render import fmt

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, fmt(value))
    console.print(table)


def evaluate_command(
    args: Optional[List[str]] = ARGS,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Artifact dir, HF model dir or http(s)://host:port#model."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Prepared dataset dir or a JSONL/JSON/CSV file."),
    task: Optional[str] = typer.Option(None, "--task", help="classification | instruction | qa | text | preference (raw files)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of a prepared dataset (default test)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate a seeded random sample of N rows."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Report directory (default <artifact>.eval/)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Preference data: adapter to compute the win "
                                           "rate against (e.g. the SFT-only adapter)."),
    compare_refs: Optional[Tuple[str, str]] = typer.Option(None, "--compare", help="Compare two models or report dirs: A B."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default file:./mlruns)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNESERVE_API_KEY", help="Key for an endpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    parity: Optional[Path] = typer.Option(None, "--parity", help="Replay ARTIFACT's golden set through the loaded "
                                          "artifact and compare with the training-time outputs (no --data needed)."),
    max_kl: Optional[float] = typer.Option(None, "--max-kl", help="--parity: fail above this mean KL."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="--parity: fail below this "
                                                  "token (label) agreement."),
) -> None:
    """Evaluate an artifact or a running endpoint; write eval_report.{json,md,html} and log the run."""
    if parity is not None:
        _parity(parity, max_kl, min_agreement)
        return
    from training.evaluation.runner import ENV_PREFIX, EvalConfig, compare, evaluate

    extra = _overrides(model=model, data=data, task=task, split=split, limit=limit, out=out, baseline=baseline,
                       **{"tracking.uri": tracking_uri})
    cfg = load_cli_config(EvalConfig, [*(args or []), *extra], ENV_PREFIX)
    if api_key:
        cfg.api_key = api_key
    if compare_refs and compare_refs[0]:
        table, where = compare(cfg, compare_refs[0], compare_refs[1], progress=progress)
        _print_metrics(f"B - A: {table['b']['name']} vs {table['a']['name']}",
                       [(r["metric"], r["delta"]) for r in table["headline"]])
        for row in table["paired_bootstrap"]:
            console.print(f"  {row['metric']}: delta {row['delta']:+.4f}  "
                          f"{row['confidence']:.0%} CI [{row['low']:+.4f}, {row['high']:+.4f}]  p={row['p_value']:.3g}")
        console.print(f"compare report: [bold]{where}/compare_report.html[/]")
        return
    result, where = evaluate(cfg, progress=progress)
    _print_metrics(f"{result.name} on {result.task} ({result.data['rows']} rows)", list(result.metrics.items()))
    for entry in result.fairness.get("slices", []):
        if "gap" in entry:
            console.print(f"  slice {entry['slice']}: {result.fairness['metric']} gap {entry['gap']:.4f} "
                          f"[{entry['low']:.4f}, {entry['high']:.4f}] worst {entry['worst']!r}"
                          + (" [red]FLAGGED[/]" if entry["flagged"] else ""))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"report: [bold]{where}/eval_report.html[/]  (MLflow run {result.tracking.get('run_id')})")


def _parity(path: Path, max_kl: float | None, min_agreement: float | None) -> None:
    from rich.table import Table

    from training.artifact.errors import ArtifactInvalid
    from training.artifact.golden import read_golden
    from training.artifact.replay import ParityGate, load_served, replay
    from training.evaluation.render import fmt

    gate = ParityGate(**{k: v for k, v in {"max_kl": max_kl, "min_token_agreement": min_agreement}.items()
                         if v is not None})
    artifact, forward = load_served(path)
    golden = read_golden(artifact)
    if golden is None:
        raise ArtifactInvalid(f"artifact {artifact.path} holds no golden set (written before golden sets existed)",
                              "rebuild it with this tuneserve (train or quantize again) to check its parity")
    report = replay(golden, forward)
    agreement = "label agreement" if golden.task == "classification" else "token agreement"
    table = Table(title=f"parity of {artifact.name} ({artifact.kind}) with its golden set")
    for column in ("#", "prompt", agreement, "KL", "max diff"):
        table.add_column(column, justify="left" if column == "prompt" else "right")
    for row in report["per_prompt"]:
        table.add_row(str(row["index"]), row["text"][:60].replace("\n", " "), fmt(row["agreement"]), fmt(row["kl"]),
                      fmt(row["max_diff"]))
    console.print(table)
    summary = {k: v for k, v in report.items() if k not in ("per_prompt", "worst", "task")}
    _print_metrics("overall", list(summary.items()))
    refusal = gate.refusal(f"artifact {artifact.name}", report)
    if refusal is not None:
        console.print(f"[red]FAIL[/] {refusal}", highlight=False, soft_wrap=True)  # the worst prompt stays greppable
        raise typer.Exit(1)
    console.print(f"[green]PASS[/] within max_kl={gate.max_kl}, min_token_agreement={gate.min_token_agreement}")


human_app = typer.Typer(help="Blinded side-by-side human evaluation: export sheets, import ratings.", no_args_is_help=True)


@human_app.command("export")
def human_export(
    prompts: Path = typer.Option(..., "--prompts", help="JSONL/JSON/CSV of prompts (field prompt, or instruction+input)."),
    models: List[str] = typer.Option([], "--model", help="NAME=REF (artifact, HF dir or endpoint URL); repeat 2+ times."),
    responses: List[str] = typer.Option([], "--responses", help="NAME=FILE.jsonl of precomputed {prompt_id, response}."),
    out: Path = typer.Option(Path("human-eval"), "--out", "-o", help="Directory for the rater sheet."),
    key: Optional[Path] = typer.Option(None, "--key", help="Where the un-blinding key goes (default <out>.key/key.json)."),
    criteria: str = typer.Option("helpfulness,correctness", "--criteria", help="Comma-separated 1-5 score criteria."),
    n: Optional[int] = typer.Option(None, "--n", help="Use N prompts (seeded sample)."),
    seed: int = typer.Option(0, "--seed"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNESERVE_API_KEY"),
) -> None:
    """Write sheet.csv, sheet.jsonl and sheet.html for raters, and the key file apart from them."""
    from training.evaluation.human import collect_responses, export_sheet, load_prompts

    items = load_prompts(prompts, n=n, seed=seed)
    answers = collect_responses(items, models, responses, max_new_tokens=max_new_tokens, api_key=api_key)
    paths = export_sheet(items, answers, out, [c.strip() for c in criteria.split(",") if c.strip()],
                         key_path=key, seed=seed)
    console.print(f"rater sheet: [bold]{paths['html']}[/] (+ {paths['csv'].name}, {paths['jsonl'].name})")
    console.print(f"key (keep it away from raters): [bold]{paths['key']}[/]")


@human_app.command("import")
def human_import(
    key: Path = typer.Option(..., "--key", help="The key.json written by export."),
    ratings: List[Path] = typer.Option(..., "--ratings", help="Filled ratings (CSV or JSONL); one file per rater or combined."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report directory (default next to the key)."),
    confidence: float = typer.Option(0.95, "--confidence"),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Also write the ratings as preference pairs "
                                         "{prompt, chosen, rejected} (JSONL) for data prepare task=preference."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="--pairs: the exported sheet directory (sheet.jsonl)."),
) -> None:
    """Un-blind ratings; report win rates with CIs, mean scores and inter-rater agreement."""
    from training.artifact.errors import ConfigError
    from training.evaluation.human_import import import_ratings, read_key, unblind

    if pairs is not None and sheet is None:
        raise ConfigError("--pairs needs --sheet (the responses live in the exported sheet)",
                          "pass --sheet DIR, the directory human-eval export wrote")
    report, where = import_ratings(key, ratings, out, confidence=confidence)
    if pairs is not None:
        from training.evaluation.human_pairs import ratings_to_pairs, read_sheet, write_pairs

        loaded = read_key(key)
        made = ratings_to_pairs(loaded, read_sheet(sheet), [r for p in ratings for r in unblind(loaded, Path(p))])
        console.print(f"preference pairs: [bold]{write_pairs(made, pairs)}[/] ({len(made)} pairs)")
    rows = [(f"{p['a']} vs {p['b']}: {p['a']} win rate", p["win_rate"]) for p in report["pairwise"]]
    rows += [(f"{m} {c}", s["mean"]) for m, crit in report["scores"].items() for c, s in crit.items()]
    rows += [(f"agreement {k}", v) for k, v in report["agreement"].items() if isinstance(v, float)]
    _print_metrics(f"human evaluation ({report['ratings']} ratings, {report['raters']} raters)", rows)
    console.print(f"report: [bold]{where}/human_eval_report.html[/]")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
    app.add_typer(human_app, name="human-eval")
