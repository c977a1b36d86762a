"""The `tuneserve` command line: wires each area's subcommands into one Typer app.

Each module in `tuneserve/commands/` defines `register(app)` and imports torch, ray and
transformers only inside its command functions, so `tuneserve --help` stays instant.
User errors (`TuneserveError`) print as one red message plus a hint, exit code 2; the
traceback goes to the log only with `--debug`.

    tuneserve --help
    tuneserve demo
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from training.artifact.errors import TuneserveError

COMMAND_MODULES = [
    "tuneserve.commands.base",
    "tuneserve.commands.train",
    "tuneserve.commands.quantize",
    "tuneserve.commands.merge",
    "tuneserve.commands.serve",
    "tuneserve.commands.demo",
    "tuneserve.commands.observe",
    "tuneserve.commands.evaluate",
    "tuneserve.commands.data",
    "tuneserve.commands.keys",
    "tuneserve.commands.search",
    "tuneserve.commands.rollout",
    "tuneserve.commands.baseline",
]

app = typer.Typer(
    name="tuneserve",
    help="Fine-tune LLMs (LoRA/PEFT, quantization) and serve them over OpenAI-compatible REST and gRPC.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs.")) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app.info_name = "tuneserve"
    _STATE["debug"] = debug


_STATE = {"debug": False}

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def run() -> None:
    """Entry point: run the app, turning user errors into a clean message."""
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n in this mode
    except TuneserveError as exc:
        from rich.console import Console

        if _STATE["debug"]:
            logging.exception("command failed")
        console = Console(stderr=True)
        # soft wrap: a path or command in the message stays whole, to copy and to grep
        console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        if exc.hint:
            console.print(f"[yellow]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    run()
