"""CLI: `tuneserve baseline` (untuned base model as a classifier) and `tuneserve learning-curve`.

    tuneserve baseline base=smollm2-135m data=../shared/data/banking77/test.csv task=classification \
        train_data=../shared/data/banking77/train.csv columns.label=category limit=200 out=evals/b77-smollm2
    tuneserve baseline base=all-minilm-l6-v2 data=data/prepared/banking77 out=evals/b77-minilm
    tuneserve learning-curve train=training/configs/classify-minilm.yaml train.epochs=2 seeds=3 output=artifacts/curve
    tuneserve learning-curve ... compare=augmentation fractions=[0.1,1.0]

Both take `[CONFIG.yaml] [key=value ...]`; see training.evaluation.baseline_run and
training.train.learning_curve for the fields.
"""

from __future__ import annotations

from typing import Optional

import typer

from tuneserve.commands.common import console, load_cli_config


def _train_file_override(args: list[str]) -> list[str]:
    """`train=FILE.yaml` loads a training config file as the `train:` section."""
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "train" and value.endswith((".yaml", ".yml")):
            from training.artifact.config import load_config
            from training.train.config import TrainConfig

            cfg = load_config(TrainConfig, value, [])
            out += [f"train.{k}={v}" for k, v in _flatten(cfg.model_dump(mode="json", exclude_unset=True)).items()]
        else:
            out.append(arg)
    return out


def _flatten(data: dict, prefix: str = "") -> dict:
    import json

    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else value
    return flat


def register(app: typer.Typer) -> None:
    @app.command("baseline")
    def baseline_cmd(args: Optional[list[str]] = typer.Argument(None, help="[CONFIG.yaml] base=... data=... "
                                                                 "train_data=... modes=[zero-shot,few-shot] limit=N"),
                     progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
        """Evaluate an untuned base: zero/few-shot prompting (causal LM) or centroid/kNN on embeddings (encoder)."""
        from training.evaluation.baseline_run import ENV_PREFIX, BaselineConfig, run_baselines

        summary = run_baselines(load_cli_config(BaselineConfig, args, ENV_PREFIX), progress=progress)
        for r in summary["results"]:
            console.print(f"{r['mode']:>24}: accuracy {r['accuracy']:.4f} 95% CI [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}] "
                          f"({r['rows']} rows, {r['latency_per_example_s']:.3f} s/example)  {r['report']}")

    @app.command("learning-curve")
    def curve_cmd(args: Optional[list[str]] = typer.Argument(None, help="[CONFIG.yaml] train=TRAIN.yaml train.key=... "
                                                              "fractions=[0.05,0.1,0.25,0.5,1.0] seeds=3 compare=augmentation")) -> None:
        """Train on growing seeded fractions of the data; plot the metric and find the 95 % point."""
        from training.train.learning_curve import ENV_PREFIX, CurveConfig, run_curve

        report = run_curve(load_cli_config(CurveConfig, _train_file_override(list(args or [])), ENV_PREFIX), console)
        hit = report["smallest_fraction_reaching_target"]
        console.print(f"smallest fraction reaching {report['target']:.0%} of full data: "
                      f"{hit['fraction'] if hit else 'none'}")
        for e in report.get("augmentation", []):
            console.print(f"augmentation at {e['fraction']:g}: {e['mean']:+.4f} [{e['low']:+.4f}, {e['high']:+.4f}]")
        console.print(f"[green]wrote[/] {report['paths']['md']}, {report['paths']['png']}")
