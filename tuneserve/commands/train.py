"""CLI: `tuneserve train`, `tuneserve plan`, `tuneserve compare`.

    tuneserve train training/configs/lora-tiny.yaml optim.lr=1e-3 max_steps=50
    tuneserve train training/configs/lora-tiny.yaml --resume          # continue a killed run
    tuneserve train training/configs/classify-minilm.yaml auto=true budget=15m   # time-budgeted search + weight soup
    tuneserve train method=lora output=artifacts/a --merge              # also write <output>-merged
    tuneserve train training/configs/lora-tiny.yaml --backend ray --workers 2          # Ray Train, local Ray
    tuneserve train cfg.yaml --backend ray --workers 8 --use-gpu --address auto       # on a Ray cluster
    tuneserve plan model=tiny-llama task=causal-lm rows=1000 gpu_memory_gb=24
    tuneserve compare training/configs/compare-tiny.yaml methods=[lora,full]
    tuneserve compare --report evals/b77-smollm2/zero-shot-calibrated --report artifacts/minilm-intents.eval

Heavy libraries (torch, transformers, peft) are imported inside the command bodies.
"""

from __future__ import annotations

from typing import Optional

import typer

from tuneserve.commands.common import console, load_cli_config

ARGS_HELP = "optional CONFIG.yaml, then key=value overrides (e.g. method=lora optim.lr=2e-4 lora.r=16)"


def distributed_overrides(backend: str | None, workers: int | None, use_gpu: bool, address: str | None) -> list[str]:
    """The --backend/--workers/--use-gpu/--address flags as `distributed.*` overrides (flags win over the file)."""
    pairs = {"backend": backend, "workers": workers, "use_gpu": "true" if use_gpu else None, "address": address}
    return [f"distributed.{key}={value}" for key, value in pairs.items() if value is not None]


def split_auto(args: list[str]) -> tuple[list[str], dict | None]:
    """Take `auto=true budget=15m soup=4` out of the overrides: (the rest, auto_train's keyword arguments or None)."""
    from training.search.auto import SOUP_SIZE, parse_budget

    keys = ("auto=", "budget=", "soup=")
    picked = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith(keys)}
    rest = [a for a in args if not a.startswith(keys)]
    if picked.get("auto", "false").lower() not in ("true", "1", "yes"):
        return rest, None
    soup = picked.get("soup", str(SOUP_SIZE))
    if not soup.isdigit() or int(soup) < 1:
        from training.artifact.errors import ConfigError

        raise ConfigError(f"soup={soup} is not a count of runs", "write soup=1 (off), or the most runs to average, e.g. soup=4")
    return rest, {"budget": parse_budget(picked.get("budget", "15m")), "soup": int(soup)}


def _train(args: list[str] | None, resume: bool, merge: bool, overwrite: bool, scale: list[str]) -> None:
    from training.train.config import ENV_PREFIX, TrainConfig
    from training.train.run import train

    args, auto = split_auto(list(args or []))
    cfg = load_cli_config(TrainConfig, [*args, *scale], ENV_PREFIX)
    updates = {k: True for k, flag in (("resume", resume), ("merge", merge), ("overwrite", overwrite)) if flag}
    cfg = cfg.model_copy(update=updates) if updates else cfg
    where = (f" on {cfg.distributed.workers} Ray workers ({cfg.distributed.strategy})"
             if cfg.distributed.backend == "ray" else "")
    console.print(f"[bold]training[/] {cfg.method} on {cfg.base} ({cfg.task}){where} → {cfg.output}")
    if auto is not None:
        from training.search.auto import auto_train

        report = auto_train(cfg, **auto)
        soup = report.get("soup") or {}
        souped = f", a soup of {soup['members']} runs" if soup.get("written") and soup["members"] > 1 else ""
        console.print(f"[green]wrote[/] {cfg.output} (auto: best of {len(report['trials'])} trials{souped}, "
                      f"{report['stopped'] or 'done'}; report in {cfg.output}.search)")
        return
    outcome = train(cfg)
    metrics = outcome.manifest.metrics
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    console.print(f"[green]wrote[/] {outcome.artifact}  ({outcome.result.steps} steps; {shown})")
    if outcome.merged:
        console.print(f"[green]wrote[/] {outcome.merged} (merged model)")


def _plan(args: list[str] | None) -> None:
    from training.train.plan import ENV_PREFIX, PlanRequest, plan, render_plan

    render_plan(plan(load_cli_config(PlanRequest, args, ENV_PREFIX)), console)


def _compare(args: list[str] | None) -> None:
    from training.train.compare import ENV_PREFIX, CompareConfig, compare

    result = compare(load_cli_config(CompareConfig, args, ENV_PREFIX), console)
    console.print(f"[green]wrote[/] {result['markdown']}, {result['json']}, {result['plot']}")


def _cost_table(reports: list[str], out: str) -> None:
    from pathlib import Path

    from training.evaluation.cost_table import cost_table, write_cost_table

    paths = write_cost_table(cost_table(reports), Path(out))
    console.print(paths["md"].read_text(encoding="utf-8"))
    console.print(f"[green]wrote[/] {paths['md']}, {paths['json']}")


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        args: list[str] | None = typer.Argument(None, help=ARGS_HELP),
        resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint of this run."),
        merge: bool = typer.Option(False, "--merge", help="Also write a merged full model (LoRA-family methods)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output artifact."),
        backend: Optional[str] = typer.Option(None, "--backend", help="local (this process) or ray (Ray Train workers)."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers (global batch_size is split)."),
        use_gpu: bool = typer.Option(False, "--use-gpu", help="One GPU per Ray worker, NCCL between them."),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: ray://head:10001 or auto "
                                                                      "(default: start a local Ray)."),
    ) -> None:
        """Fine-tune a base model (full, lora, qlora, dora, prefix, prompt, p-tuning, ia3, loha, lokr)."""
        _train(args, resume, merge, overwrite, distributed_overrides(backend, workers, use_gpu, address))

    @app.command("plan")
    def plan_cmd(args: list[str] | None = typer.Argument(None, help="optional CONFIG.yaml, then model=... task=... rows=... "
                                                                     "gpu_memory_gb=... cpu_memory_gb=...")) -> None:
        """Estimate memory for full / lora / qlora / prompt tuning and recommend one."""
        _plan(args)

    @app.command("compare")
    def compare_cmd(args: list[str] | None = typer.Argument(None, help="optional CONFIG.yaml, then methods=[lora,full] "
                                                                        "train.data.path=... output=..."),
                    reports: list[str] = typer.Option([], "--report", help="Instead of training: eval report dirs "
                                                      "(tuneserve baseline / evaluate) to tabulate with their cost."),
                    out: str = typer.Option("evals/cost", "--out", "-o", help="--report: where the table goes.")) -> None:
        """Train several methods on the same data, or (--report) put baselines and fine-tuned models side by side."""
        if reports:
            _cost_table(reports, out)
            return
        _compare(args)
