"""CLI: `tuneserve base build|convert|info` for the bases tuneserve keeps in its cache.

    tuneserve base build                                # default tiny-llama into $TUNESERVE_CACHE/base/tiny-llama
    tuneserve base build size=small                     # small-llama (~30M parameters), the scale ladder's middle rung
    tuneserve base build steps=60 seed=1 --out /tmp/tl  # overrides, another directory
    tuneserve base build base.yaml --force              # YAML config; rebuild even if up to date
    tuneserve base convert smollm2-135m                 # SmolLM2-135M-Instruct from its GGUF file, once
    tuneserve base info [NAME] [--path DIR]

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


def _convert(name: str, force: bool, out: Optional[Path]) -> None:
    import time

    from training.base.build import read_build_info
    from training.base.gguf import convert_base

    started = time.monotonic()
    model_dir = convert_base(name, out_dir=out, force=force, progress=True)
    info = read_build_info(model_dir)
    console.print(f"[green]base model[/] {name} → {model_dir}")
    console.print(f"  parameters: {info['parameters']:,}   from {info['gguf_file']}   "
                  f"({time.monotonic() - started:.1f}s, reused when up to date)")


def _info_rows(info: dict) -> list[tuple[str, str]]:
    if info.get("kind") == "gguf-conversion":
        keys = ("source", "gguf_file", "gguf_sha256", "dtype", "tokenizer_vocab", "transformers_version")
        return [("converted by", f"tuneserve {info['tuneserve_version']}"), *((k, str(info[k])) for k in keys)]
    rows = [("loss", f"{info['initial_loss']:.3f} → {info['final_loss']:.3f}"),
            ("built in", f"{info['seconds']:.1f}s with tuneserve {info['tuneserve_version']}"),
            ("corpus sha256", info["corpus_sha256"])]
    return rows + [(f"config.{key}", str(value)) for key, value in info["config"].items()]


def _info(name: str, path: Optional[Path]) -> None:
    from rich.table import Table

    from training.artifact import embedded_base_dir, fingerprint_model_dir
    from training.artifact.errors import ArtifactInvalid
    from training.artifact.paths import CACHED_BASES
    from training.base.build import read_build_info

    model_dir = path or embedded_base_dir(name)
    info = read_build_info(model_dir)
    if not info:
        make = CACHED_BASES.get(name, "tuneserve base build")
        raise ArtifactInvalid(f"no built base model in {model_dir}",
                              f"run `{make}` (or pass --path to a directory it wrote)")
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # hashes must stay whole (copy-paste), so wrap instead of "…"
    table.add_row("path", str(model_dir))
    table.add_row("fingerprint", fingerprint_model_dir(model_dir))
    table.add_row("parameters", f"{info['parameters']:,}")
    for key, value in _info_rows(info):
        table.add_row(key, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    base_app = typer.Typer(help="Build, convert and inspect the cached base models (tiny-llama, smollm2-135m).",
                           no_args_is_help=True)

    @base_app.command("build")
    def build_cmd(
        args: Optional[List[str]] = typer.Argument(None, help=ARGS_HELP),
        force: bool = typer.Option(False, "--force", help="Rebuild even if an up-to-date build exists."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the tuneserve cache)."),
    ) -> None:
        """Train the tokenizer and pretrain the tiny Llama on the shipped corpus (1-3 min on 2 cores)."""
        _build(args, force, out)

    @base_app.command("convert")
    def convert_cmd(
        name: str = typer.Argument("smollm2-135m", help="Named GGUF base (smollm2-135m)."),
        force: bool = typer.Option(False, "--force", help="Convert again even if an up-to-date conversion exists."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the tuneserve cache)."),
    ) -> None:
        """Convert a pretrained base shipped as a GGUF file into safetensors in the cache (~30-60 s, once)."""
        _convert(name, force, out)

    @base_app.command("info")
    def info_cmd(
        name: str = typer.Argument("tiny-llama", help="Cached base name (tiny-llama, smollm2-135m)."),
        path: Optional[Path] = typer.Option(None, "--path", help="Model directory (default: the cache)."),
    ) -> None:
        """Show where a base model is, its size, how it was made and its fingerprint."""
        _info(name, path)

    app.add_typer(base_app, name="base")
