"""`tuneserve keys create|list|revoke|rotate`: manage the API keys of the serving app.

    tuneserve keys create alice --scope infer --adapter 'support-*' --expires-days 30 --rpm 60 --tpm 20000
    tuneserve keys list [--json]
    tuneserve keys revoke 3fa2c1d04e5b
    tuneserve keys rotate 3fa2c1d04e5b [--grace-hours 24]      # refused for a revoked key

The keys file (default `<tuneserve cache>/keys.json`, or `--keys-file`, or
`TUNESERVE_SERVE__KEYS_FILE`) is a JSON list of records holding only salted hashes; a new
key is printed once. Edits hold a lock on the file (`service.keys.editing_keys`), so runs at
once lose no update. Running services re-read the file when it changes (no restart). For
Kubernetes, create the file here and store it as a Secret mounted at `keys_file`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from tuneserve.commands.common import console

KEYS_FILE_OPTION = typer.Option(None, "--keys-file", help="Keys file (default: $TUNESERVE_SERVE__KEYS_FILE or <cache>/keys.json).")


def keys_path(given: Optional[Path]) -> Path:
    if given is not None:
        return given.expanduser()
    env = os.environ.get("TUNESERVE_SERVE__KEYS_FILE")
    if env:
        return Path(env).expanduser()
    from training.artifact import cache_dir

    return cache_dir() / "keys.json"


def find_record(records: list, key_id: str):
    for record in records:
        if record.id == key_id:
            return record
    from training.artifact.errors import NotFound

    raise NotFound(f"no key with id {key_id!r}", "`tuneserve keys list` shows the ids")


def show_new_key(plain: str, record, path: Path, out: Path | None = None) -> None:
    console.print(f"key id {record.id} (owner {record.owner}, scopes {','.join(record.scopes)}) added to {path}")
    if out is None:
        console.print(f"API key (shown once, store it now): [bold]{plain}[/]", soft_wrap=True, highlight=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # owner-only from the first byte
    with os.fdopen(fd, "w") as handle:
        handle.write(plain)
    console.print(f"API key written to {out} (mode 600; e.g. Prometheus' credentials_file)")


def create(
    owner: str = typer.Argument(..., help="Who the key is for (shown in the audit log by key id)."),
    scope: list[str] = typer.Option(["infer"], "--scope", help="infer, admin, metrics (repeatable)."),
    adapter: list[str] = typer.Option(["*"], "--adapter", help="Allowed adapter/model glob (repeatable)."),
    expires_days: Optional[float] = typer.Option(None, "--expires-days", help="Expire after this many days."),
    rpm: Optional[int] = typer.Option(None, "--rpm", help="Requests per minute (default: the service's)."),
    tpm: Optional[int] = typer.Option(None, "--tpm", help="Tokens per minute (default: the service's)."),
    algorithm: str = typer.Option("sha256", "--hash", help="sha256 (fast; keys are 256-bit random) or scrypt."),
    keys_file: Optional[Path] = KEYS_FILE_OPTION,
    key_out: Optional[Path] = typer.Option(None, "--key-out", help="Write the key to this file (mode 600) "
                                                                    "instead of printing it."),
) -> None:
    """Create a key; prints it once (or writes it to --key-out)."""
    from pydantic import ValidationError

    from service.keys import add_key, create_key
    from training.artifact.errors import ConfigError

    path = keys_path(keys_file)
    try:
        plain, record = create_key(owner, scope, adapter, expires_days, algorithm,
                                   requests_per_min=rpm, tokens_per_min=tpm)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"invalid key option {'.'.join(map(str, first['loc']))}: {first['msg']}",
                          "scopes are infer, admin, metrics; limits are positive integers") from None
    add_key(path, record)
    show_new_key(plain, record, path, key_out)


def list_keys(as_json: bool = typer.Option(False, "--json", help="Print records (without hashes) as JSON."),
              keys_file: Optional[Path] = KEYS_FILE_OPTION) -> None:
    """List keys: id, owner, scopes, adapters, limits, expiry, state. Never hashes or secrets."""
    import json
    from datetime import datetime, timezone

    from rich.table import Table

    from service.keys import read_keys

    records = read_keys(keys_path(keys_file))
    rows = [r.model_dump(mode="json", exclude={"salt", "hash"}) for r in records]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("id", "owner", "scopes", "adapters", "rpm", "tpm", "expires", "state")
    now = datetime.now(timezone.utc)
    for r in records:
        expires = r.expires_at.replace(tzinfo=r.expires_at.tzinfo or timezone.utc) if r.expires_at else None
        state = "revoked" if r.revoked else "expired" if expires and expires <= now else "active"
        table.add_row(r.id, r.owner, ",".join(r.scopes), ",".join(r.adapters), str(r.requests_per_min or "-"),
                      str(r.tokens_per_min or "-"), expires.isoformat(timespec="minutes") if expires else "never", state)
    console.print(table)


def revoke(key_id: str = typer.Argument(..., help="Key id (from `tuneserve keys list`)."),
           keys_file: Optional[Path] = KEYS_FILE_OPTION) -> None:
    """Revoke a key; services refuse it as soon as they see the changed file."""
    from service.keys import editing_keys

    path = keys_path(keys_file)
    with editing_keys(path) as records:
        find_record(records, key_id).revoked = True
    console.print(f"key {key_id} revoked in {path}")


def rotate(key_id: str = typer.Argument(..., help="Key id to replace."),
           grace_hours: float = typer.Option(0.0, "--grace-hours", min=0,
                                             help="Let the old key work this long (0: revoke it now)."),
           keys_file: Optional[Path] = KEYS_FILE_OPTION) -> None:
    """Mint a new key with the same owner, scopes, adapters and limits; retire the old one."""
    from datetime import datetime, timedelta, timezone

    from service.keys import create_key, editing_keys
    from training.artifact.errors import Conflict

    path = keys_path(keys_file)
    with editing_keys(path) as records:
        old = find_record(records, key_id)
        if old.revoked:
            raise Conflict(f"key {key_id} is revoked; rotating it would issue a working key",
                           "create a new key with `tuneserve keys create` if the owner still needs one")
        algorithm = old.hash.split(":", 1)[0]
        plain, record = create_key(old.owner, old.scopes, old.adapters, None, algorithm,
                                   requests_per_min=old.requests_per_min, tokens_per_min=old.tokens_per_min)
        record.expires_at = old.expires_at
        if grace_hours > 0:
            grace_end = datetime.now(timezone.utc) + timedelta(hours=grace_hours)
            old.expires_at = min(filter(None, [old.expires_at, grace_end]),
                                 key=lambda t: t if t.tzinfo else t.replace(tzinfo=timezone.utc))
        else:
            old.revoked = True
        records.append(record)
    show_new_key(plain, record, path)
    console.print(f"old key {key_id} " + (f"works until {old.expires_at.isoformat(timespec='minutes')}"
                                          if grace_hours > 0 else "revoked"))


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="Create, list, revoke and rotate API keys (stored as salted hashes).",
                           no_args_is_help=True)
    app.add_typer(keys_app, name="keys")
    keys_app.command("create")(create)
    keys_app.command("list")(list_keys)
    keys_app.command("revoke")(revoke)
    keys_app.command("rotate")(rotate)
