"""`tuneserve merge`: combine LoRA adapters of one base into a new adapter artifact.

    tuneserve merge artifacts/a artifacts/b --out artifacts/ab                       # linear, weights 1/2 each
    tuneserve merge artifacts/a artifacts/b --out artifacts/ab combination=ties density=0.3 weights=[1,1]

Extra settings come as `[CONFIG.yaml] [key=value ...]` (see `training.train.merge.MergeConfig`,
environment prefix `TUNESERVE_MERGE__`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tuneserve.commands.common import console, load_cli_config


def register(app: typer.Typer) -> None:
    @app.command("merge")
    def merge_cmd(
        args: list[str] = typer.Argument(..., help="Adapter artifact dirs, then [CONFIG.yaml] [key=value ...]."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output adapter artifact directory."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output artifact."),
    ) -> None:
        """Merge adapters (linear, cat, svd, TIES, DARE) into one adapter artifact with its lineage."""
        from training.train.merge import ENV_PREFIX, MergeConfig, merge_adapters

        sources = [a for a in args if "=" not in a and not a.endswith((".yaml", ".yml"))]
        rest = [a for a in args if a not in sources]
        overrides = [f"sources={json.dumps(sources)}"] if sources else []
        overrides += [f"output={out}"] if out else []
        overrides += ["overwrite=true"] if overwrite else []
        config = load_cli_config(MergeConfig, [*rest, *overrides], ENV_PREFIX)
        with console.status(f"merging {len(config.sources)} adapters ({config.combination})"):
            artifact = merge_adapters(config)
        names = ", ".join(f"{s['name']} v{s['version']}" for s in artifact.manifest.lineage["sources"])
        console.print(f"[green]wrote[/] adapter {artifact.path} ({config.combination} of {names})")
