"""`python -m tuneserve` runs the CLI."""

from tuneserve.cli import run

run()
