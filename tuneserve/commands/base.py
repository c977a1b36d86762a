"""CLI: `tuneserve base build` and `tuneserve base info` for the embedded tiny base model.

    tuneserve base build                                # default tiny-llama into $TUNESERVE_CACHE/base/tiny-llama
    tuneserve base build steps=60 seed=1 --out /tmp/tl  # overrides, another directory
    tuneserve base build base.yaml --force              # YAML config; rebuild even if up to date
    tuneserve base info [--path DIR]

Environment overrides use the prefix `TUNESERVE_BASE__` (e.g. `TUNESERVE_BASE__STEPS=100`).
Heavy libraries (torch, transformers, tokenizers) are imported inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tuneserve.commands.common import console, load_cli_config

ENV_PREFIX = "TUNESERVE_BASE__"
ARGS_HELP = r"[CONFIG.yaml] \[key=value ...] (e.g. steps=300 hidden_size=256 seed=0)"


def _build(args: Optional[List[str]], force: bool, out: Optional[Path]) -> None:
    from training.base.build import BaseBuildConfig, build_base, read_build_info

    cfg = load_cli_config(BaseBuildConfig, args, ENV_PREFIX)
    model_dir = build_base(cfg, out_dir=out, force=force, progress=True)
    info = read_build_info(model_dir)
    console.print(f"[green]base model[/] {cfg.name} → {model_dir}")
    console.print(f"  parameters: {info['parameters']:,}   loss: {info['initial_loss']:.3f} → {info['final_loss']:.3f}"
                  f"   build time: {info['seconds']:.1f}s")


def _info(path: Optional[Path]) -> None:
    from rich.table import Table

    from training.artifact import embedded_base_dir, fingerprint_model_dir
    from training.artifact.errors import ArtifactInvalid
    from training.base.build import read_build_info

    model_dir = path or embedded_base_dir()
    info = read_build_info(model_dir)
    if not info:
        raise ArtifactInvalid(f"no built base model in {model_dir}",
                              "run `tuneserve base build` (or pass --path to a directory it wrote)")
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # hashes must stay whole (copy-paste), so wrap instead of "…"
    table.add_row("path", str(model_dir))
    table.add_row("fingerprint", fingerprint_model_dir(model_dir))
    table.add_row("parameters", f"{info['parameters']:,}")
    table.add_row("loss", f"{info['initial_loss']:.3f} → {info['final_loss']:.3f}")
    table.add_row("built in", f"{info['seconds']:.1f}s with tuneserve {info['tuneserve_version']}")
    table.add_row("corpus sha256", info["corpus_sha256"])
    for key, value in info["config"].items():
        table.add_row(f"config.{key}", str(value))
    console.print(table)


def register(app: typer.Typer) -> None:
    base_app = typer.Typer(help="Build and inspect the embedded tiny base model (tiny-llama).", no_args_is_help=True)

    @base_app.command("build")
    def build_cmd(
        args: Optional[List[str]] = typer.Argument(None, help=ARGS_HELP),
        force: bool = typer.Option(False, "--force", help="Rebuild even if an up-to-date build exists."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the tuneserve cache)."),
    ) -> None:
        """Train the tokenizer and pretrain the tiny Llama on the shipped corpus (1-3 min on 2 cores)."""
        _build(args, force, out)

    @base_app.command("info")
    def info_cmd(path: Optional[Path] = typer.Option(None, "--path", help="Model directory (default: the cache).")) -> None:
        """Show where the base model is, its size, build config, losses and fingerprint."""
        _info(path)

    app.add_typer(base_app, name="base")
