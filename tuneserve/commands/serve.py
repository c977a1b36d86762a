"""`tuneserve serve [serve.yaml] [key=value ...]`: run the serving application on local Ray.

    tuneserve serve                                        # packaged config, artifacts in ./artifacts
    tuneserve serve service/configs/serve.yaml artifacts_dir=out port=8001 max_adapters=8

Overrides apply to the application's args (ServiceSettings). Without a keys file, one is
kept at `<tuneserve cache>/keys.json` and an admin key is created (printed once) when it
holds none; `--new-key` always mints another. A port already in use fails at once. Blocks until
Ctrl-C or SIGTERM, then shuts down within `stop_timeout_s` (a second signal: at once).
"""

from __future__ import annotations

from typing import Optional

import typer

from tuneserve.commands.common import console, split_config_and_overrides


def ensure_key(overrides: list[str], new_key: bool) -> tuple[list[str], str | None, str]:
    """Pick the keys file (override or cache default); create an admin key when needed."""
    from pathlib import Path

    from service.keys import add_key, create_key, read_keys
    from training.artifact import cache_dir

    given = [o.split("=", 1)[1] for o in overrides if o.startswith("keys_file=")]
    path = Path(given[-1]).expanduser() if given else cache_dir() / "keys.json"
    if not given:
        overrides = [*overrides, f"keys_file={path}"]
    plain = None
    if new_key or not read_keys(path):
        plain, record = create_key("local-admin", ["infer", "admin", "metrics"])
        add_key(path, record)
    return overrides, plain, str(path)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_command(
        args: Optional[list[str]] = typer.Argument(None, help="Serve config file (default: the packaged serve.yaml), then key=value overrides of the app args"),
        new_key: bool = typer.Option(False, "--new-key", help="Create (and print once) a new admin API key."),
    ) -> None:
        """Serve the base model and adapters over the OpenAI-compatible REST API on Ray Serve."""
        from service import launcher

        config, overrides = split_config_and_overrides(args)
        overrides, plain, keys_path = ensure_key(overrides, new_key)
        launcher.build_config(config, overrides)  # validate before starting Ray
        with console.status("starting Ray Serve and loading models…"):
            server = launcher.start(config, overrides)
        console.print(f"[bold green]serving[/] at {server.url}  (OpenAI base_url: {server.url}/v1)")
        console.print(f"{server.route}; keys file: {keys_path}")
        if plain:
            console.print(f"new admin API key (shown once): [bold]{plain}[/]")
        console.print(f"try: curl -H 'Authorization: Bearer <key>' {server.url}/v1/models   — Ctrl-C stops")
        launcher.serve_forever(server.settings.stop_timeout_s)
        console.print("stopped")
