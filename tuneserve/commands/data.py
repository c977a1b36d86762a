"""`tuneserve data ...`: prepare datasets, run the annotation round trip, inspect prepared data.

    tuneserve data prepare training/configs/data_banking77.yaml split.seed=7 output.dir=data/prepared/b77
    tuneserve data annotate export training/configs/data_demo_classification.yaml --out to_label.json --format labelstudio
    tuneserve data annotate import ls_export.json bob.csv --out labels.jsonl
    tuneserve data inspect data/prepared/banking77
    tuneserve data import-feedback --store artifacts/.tuneserve-feedback.db --out data/feedback [--model clf-v2]

Logic lives in `training.data`; heavy imports happen inside the command bodies.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneserve.commands.common import console, load_cli_config

ENV_PREFIX = "TUNESERVE_DATA__"


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Prepare, annotate and inspect datasets for fine-tuning.", no_args_is_help=True)
    annotate_app = typer.Typer(help="Export rows to label and import labels back.", no_args_is_help=True)
    data_app.add_typer(annotate_app, name="annotate")
    app.add_typer(data_app, name="data")

    @data_app.command("prepare")
    def prepare_cmd(args: list[str] | None = typer.Argument(None, help="[CONFIG.yaml] [key=value ...]")) -> None:
        """Collect, clean, split, check and write a prepared dataset with its report."""
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from training.data import DataConfig
        from training.data.pipeline import prepare
        from training.data.report import summary_lines

        cfg = load_cli_config(DataConfig, args, ENV_PREFIX)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task("collect", total=None)
            result = prepare(cfg, progress=lambda step, rows: progress.update(task, description=f"{step}: {rows} rows"))
        for line in summary_lines(result.report):
            console.print(line, highlight=False)
        console.print(f"[green]prepared[/] {result.path} in {result.report['seconds']} s", highlight=False)

    @data_app.command("inspect")
    def inspect_cmd(path: Path = typer.Argument(..., help="A prepared dataset directory.")) -> None:
        """Print the summary of a prepared dataset's report."""
        from training.artifact.errors import DataError
        from training.data import load_prepared
        from training.data.report import summary_lines

        ds = load_prepared(path)
        report_file = path / "data_report.json"
        if not report_file.is_file():
            raise DataError(f"{path} has no data_report.json", "re-run tuneserve data prepare")
        for line in summary_lines(json.loads(report_file.read_text(encoding="utf-8"))):
            console.print(line, highlight=False)
        console.print(f"task {ds.task}, rows {ds.rows}, labels {len(ds.labels or [])}, "
                      f"class weights {'yes' if ds.class_weights else 'no'}", highlight=False)

    @data_app.command("import-feedback")
    def import_feedback_cmd(
            store: Path = typer.Option(..., "--store", help="The server's feedback store (feedback.path; default "
                                       "<artifacts_dir>/.tuneserve-feedback.db)."),
            out: Path = typer.Option(..., "--out", help="Directory for the JSONL files and prepare configs."),
            model: str | None = typer.Option(None, "--model", help="Only feedback on this model (adapter version)."),
            since_days: float | None = typer.Option(None, "--since-days", help="Only feedback of the last N days."),
            keep_rating: int | None = typer.Option(5, "--keep-rating", help="Served outputs rated at least this "
                                                  "become instruction rows (0: none)."),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files in --out."),
    ) -> None:
        """Turn production feedback into data for the next round: {text,label}, {instruction,input,output}
        and preference pairs {prompt,chosen,rejected}, plus `data prepare` configs."""
        import time

        from training.data.feedback_import import import_feedback

        since = time.time() - since_days * 86400 if since_days is not None else None
        report = import_feedback(store, out, model, since, keep_rating or None, overwrite)
        rows = ", ".join(f"{task} {n}" for task, n in report["rows"].items()) or "no rows"
        skipped = ", ".join(f"{why}: {n}" for why, n in report["skipped"].items()) or "none"
        console.print(f"{report['feedback']} feedbacks -> {rows} (skipped: {skipped})", highlight=False)
        for config in sorted(out.glob("data_*.yaml")):
            console.print(f"next: tuneserve data prepare {config}", highlight=False)

    @annotate_app.command("export")
    def export_cmd(args: list[str] | None = typer.Argument(None, help="[CONFIG.yaml] [key=value ...]"),
                   out: Path = typer.Option(..., "--out", help="File to write."),
                   fmt: str = typer.Option("labelstudio", "--format", help="csv | jsonl | labelstudio"),
                   strategy: str = typer.Option("unlabeled", "--strategy", help="unlabeled | uncertain"),
                   limit: int | None = typer.Option(None, "--limit", help="At most this many rows."),
                   scorer: str = typer.Option("tfidf", "--scorer", help="tfidf | predictions (for uncertain)"),
                   predictions: str | None = typer.Option(None, "--predictions", help="JSONL of row_id/text, confidence"),
                   ) -> None:
        """Export rows that need labels (unlabeled, or least confident first)."""
        from training.data import DataConfig
        from training.data.annotate import export_rows, select_rows
        from training.data.bias import label_counts
        from training.data.collect import collect
        from training.data.tasks import get_task

        cfg = load_cli_config(DataConfig, args, ENV_PREFIX)
        spec = get_task(cfg.task)
        rows, bad = collect(cfg, allow_unlabeled=True)
        picked = select_rows(rows, spec, strategy, limit, scorer, predictions)
        labels = sorted(label_counts([r for r in rows if r.data.get(spec.label_field)], spec)) or None
        n = export_rows(picked, spec, out, fmt, labels)
        console.print(f"exported {n} of {len(rows)} rows to {out} ({fmt}); {bad.count} bad rows skipped",
                      highlight=False)

    @annotate_app.command("import")
    def import_cmd(files: list[str] = typer.Argument(..., help="Label Studio export JSON, CSV or JSONL files."),
                   out: Path = typer.Option(..., "--out", help="Merged labels JSONL (row_id, text, label)."),
                   on_conflict: str = typer.Option("drop", "--on-conflict", help="drop | first"),
                   ) -> None:
        """Merge annotators' labels, report agreement and conflicts, write merged labels."""
        from training.data.annotate import merge_annotations, read_annotations
        from training.data.prepared import write_jsonl

        votes, texts = read_annotations(files)
        merged, report = merge_annotations(votes, on_conflict)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(out, ({"row_id": k, "text": texts.get(k, ""), "label": v} for k, v in merged.items()))
        out.with_suffix(".agreement.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        console.print(f"{report['items']} items, {len(report['annotators'])} annotators, {report['merged']} merged, "
                      f"{report['conflicts']} conflicts; Fleiss' kappa {report['fleiss_kappa']}", highlight=False)
        for pair, stats in report["cohen_kappa"].items():
            console.print(f"  Cohen's kappa {pair}: {stats['cohen_kappa']} over {stats['items']} items", highlight=False)
        console.print(f"wrote {out} and {out.with_suffix('.agreement.json')}", highlight=False)
