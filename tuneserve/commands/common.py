"""Helpers shared by the CLI commands: config loading with overrides, consoles, tables."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

M = TypeVar("M", bound=BaseModel)


def split_config_and_overrides(args: list[str] | None) -> tuple[Path | None, list[str]]:
    """`[config.yaml] [key=value ...]`: the first non key=value argument is the config file."""
    config: Path | None = None
    overrides: list[str] = []
    for item in args or []:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = Path(item)
        else:
            from training.artifact.errors import ConfigError

            raise ConfigError(f"unexpected argument {item!r}", "give at most one config file, then key=value overrides")
    return config, overrides


def load_cli_config(cls: type[M], args: list[str] | None, env_prefix: str) -> M:
    from training.artifact.config import load_config

    path, overrides = split_config_and_overrides(args)
    return load_config(cls, path, overrides, env_prefix=env_prefix)
