"""`tuneserve quantize` and `tuneserve export`: turn a trained model into deployable artifacts.

    tuneserve quantize tiny-llama --scheme torch-int8 --out artifacts/tiny-int8
    tuneserve quantize artifacts/my-adapter --merge --scheme torch-int8 --out artifacts/my-int8
    tuneserve quantize tiny-llama --scheme bnb-nf4 --out artifacts/tiny-nf4      # attach adapters at serve time
    tuneserve export artifacts/my-merged --out artifacts/my-onnx --int8 static --calibration data/prepared
    tuneserve quantize --list

Extra settings come as `[CONFIG.yaml] [key=value ...]` (see `training.quantize.config.QuantizeConfig`,
environment prefix `TUNESERVE_QUANTIZE__`), e.g. `parity.samples=16 qat.steps=100`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tuneserve.commands.common import console, load_cli_config

ONNX_INT8 = {"none": "onnx-fp32", "dynamic": "onnx-int8-dynamic", "static": "onnx-int8-static"}


def _run(source: str, out: Path, overrides: list[str], args: list[str] | None, overwrite: bool,
         kinds: tuple[str, ...]) -> None:
    from rich.table import Table

    from training.quantize import QuantizeConfig, quantize

    config = load_cli_config(QuantizeConfig, [*(args or []), *overrides], "TUNESERVE_QUANTIZE__")
    with console.status("starting") as status:
        manifest = quantize(source, config, out, overwrite=overwrite, kinds=kinds,
                            status=lambda message: status.update(message))
    q, parity = manifest.quantization or {}, manifest.metrics.get("parity", {})
    table = Table(title=f"{manifest.kind} {out} ({q.get('scheme')}, {q.get('bits')}-bit)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("size", f"{q['size_bytes'] / 1e6:.2f} MB ({q['size_ratio']:.2f}x fp32)"),
            *([("latency vs fp32", f"{q['latency_ratio']:.2f}x")] if q.get("latency_ratio") else []),
            *([("memory when loaded", f"{q['memory_bytes'] / 1e6:.2f} MB")] if q.get("memory_bytes") else []),
            ("max abs logit diff", f"{parity['max_abs_logit_diff']:.4f}")]
    for key in ("token_agreement", "mean_kl", "greedy_token_agreement", "label_agreement", "perplexity_delta_ratio"):
        if key in parity:
            rows.append((key.replace("_", " "), f"{parity[key]:.4f}"))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if not parity.get("passed", True):
        console.print(f"[yellow]warning:[/] parity outside tolerance {parity.get('tolerance')}; see manifest metrics")


def _list_schemes() -> None:
    from rich.table import Table

    from training.quantize import all_schemes

    table = Table(title="quantization / export schemes")
    for column in ("scheme", "kind", "bits", "calibration", "what"):
        table.add_column(column)
    for name, scheme in sorted(all_schemes().items()):
        table.add_row(name, scheme.kind, str(scheme.bits), "required" if scheme.needs_calibration else "optional",
                      scheme.description)
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        source: Optional[str] = typer.Argument(None, help="Base ref/dir, merged/full-model artifact, or adapter artifact."),
        args: Optional[list[str]] = typer.Argument(None, help="[CONFIG.yaml] [key=value ...]"),
        scheme: Optional[str] = typer.Option(None, "--scheme", "-s", help="Scheme (see --list); default torch-int8."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output artifact directory."),
        merge: bool = typer.Option(False, "--merge", help="Merge a LoRA adapter into its base before quantizing."),
        calibration: Optional[Path] = typer.Option(None, "--calibration", help="Prepared dataset dir, .jsonl or .txt."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output artifact."),
        list_schemes: bool = typer.Option(False, "--list", help="List the schemes and exit."),
    ) -> None:
        """Post-training quantization (or QAT) of a model into a quantized-model / onnx-model artifact."""
        if list_schemes:
            return _list_schemes()
        source, out = _require(source, out)
        overrides = [f"scheme={scheme}"] if scheme else []
        overrides += ["merge=true"] if merge else []
        overrides += [f"calibration={calibration}"] if calibration else []
        _run(source, out, overrides, args, overwrite, ("quantized-model", "onnx-model"))

    @app.command("export")
    def export_cmd(
        source: str = typer.Argument(..., help="Base ref/dir, merged/full-model artifact, or adapter artifact."),
        args: Optional[list[str]] = typer.Argument(None, help="[CONFIG.yaml] [key=value ...]"),
        out: Path = typer.Option(..., "--out", "-o", help="Output artifact directory."),
        fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
        int8: str = typer.Option("none", "--int8", help="ONNX Runtime int8: none, dynamic or static."),
        opset: int = typer.Option(18, "--opset", help="ONNX opset."),
        merge: bool = typer.Option(False, "--merge", help="Merge a LoRA adapter into its base first."),
        calibration: Optional[Path] = typer.Option(None, "--calibration", help="Calibration data (static int8)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output artifact."),
    ) -> None:
        """Edge export (ONNX with KV cache for causal LMs, or classifiers), optionally int8, with a parity check."""
        from training.artifact.errors import ConfigError

        if fmt != "onnx":
            raise ConfigError(f"unknown export format {fmt!r}", "use --format onnx")
        if int8 not in ONNX_INT8:
            raise ConfigError(f"unknown --int8 mode {int8!r}", f"use one of: {', '.join(ONNX_INT8)}")
        overrides = [f"scheme={ONNX_INT8[int8]}", f"opset={opset}"] + (["merge=true"] if merge else [])
        overrides += [f"calibration={calibration}"] if calibration else []
        _run(source, out, overrides, args, overwrite, ("onnx-model",))


def _require(source: str | None, out: Path | None) -> tuple[str, Path]:
    from training.artifact.errors import ConfigError

    if source is None or out is None:
        raise ConfigError("quantize needs a SOURCE and --out", "e.g. tuneserve quantize tiny-llama --out artifacts/tiny-int8")
    return source, out
