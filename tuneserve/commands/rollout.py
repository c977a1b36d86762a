"""`tuneserve rollout set|status|promote|rollback|delete`: ship a new adapter version behind an alias,
over a running server's admin REST API (`/v1/admin/rollouts`, needs a key with the admin scope).

    tuneserve rollout set support-bot --stable support-bot-v3 --candidate support-bot-v4 --weight 0.1 --shadow 0.2
    tuneserve rollout status [support-bot] [--json]
    tuneserve rollout promote support-bot [--force]     # gated on online quality, error rate, latency
    tuneserve rollout rollback support-bot              # drop the candidate, or undo the last promote
    tuneserve rollout delete support-bot

The server is `--url` (default `$TUNESERVE_URL`, else http://127.0.0.1:8000), the key `--api-key` (default
`$TUNESERVE_API_KEY`). A refused promotion exits 1 with the gate's reasons; every decision is audited.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import typer

from tuneserve.commands.common import console

URL_OPTION = typer.Option(None, "--url", help="Server URL (default: $TUNESERVE_URL or http://127.0.0.1:8000).")
KEY_OPTION = typer.Option(None, "--api-key", help="Admin API key (default: $TUNESERVE_API_KEY).")
JSON_OPTION = typer.Option(False, "--json", help="Print the server's JSON reply.")


def call(method: str, path: str, url: Optional[str], api_key: Optional[str], **kwargs: Any) -> tuple[int, dict]:
    """(status, JSON body) of an admin call; connection problems become a clear error."""
    import httpx

    from training.artifact.errors import Unavailable

    base = (url or os.environ.get("TUNESERVE_URL") or "http://127.0.0.1:8000").rstrip("/")
    key = api_key or os.environ.get("TUNESERVE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, f"{base}/v1/admin/rollouts{path}", headers=headers, timeout=120, **kwargs)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach the server at {base}: {exc}",
                          "start it with `tuneserve serve`, or pass --url / set TUNESERVE_URL") from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:300]}}
    return response.status_code, body


def answer(status: int, body: dict, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(body))
    if status >= 400:
        error = body.get("error", {})
        console.print(f"[bold red]error ({status}):[/] {error.get('message', body)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if as_json:
        return
    decision = body.get("decision")
    if decision:
        console.print(f"gate: {'passed' if not decision['reasons'] else 'forced past: ' + '; '.join(decision['reasons'])}",
                      highlight=False, soft_wrap=True)
    for alias in body.get("aliases", []):
        show(alias)
    fleet = body.get("fleet")
    if fleet and (fleet.get("pending") or fleet.get("failed")):
        console.print(f"[yellow]saved; not yet on every replica:[/] pending {fleet['pending']}, failed {fleet['failed']}")


def show(alias: dict) -> None:
    from rich.table import Table

    split = f"{1 - alias['weight']:.0%}/{alias['weight']:.0%}" if alias.get("candidate") else "100%"
    console.print(f"[bold]{alias['alias']}[/]: stable {alias['stable']}, candidate {alias.get('candidate') or '-'} "
                  f"(canary {split}, shadow {alias['shadow']:.0%}, sticky by {alias['sticky']}, "
                  f"previous {alias.get('previous') or '-'}, shadow copies dropped {alias['shadow_dropped']})",
                  highlight=False, soft_wrap=True)
    table = Table("version", "requests", "error rate", "p50 s", "p95 s", "shadow", "agreement", "online quality")

    def num(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}"

    for v in alias.get("versions", []):
        quality = "-" if v.get("quality") is None else f"{v['quality_kind']} {v['quality']:.4f} (n={v['quality_n']})"
        table.add_row(v["version"], str(v["requests"]), num(v.get("error_rate")), num(v.get("p50_latency_s")),
                      num(v.get("p95_latency_s")), str(v["shadow_requests"]),
                      f"{num(v.get('agreement'), 3)} (n={v['agreement_n']})", quality)
    console.print(table)


def register(app: typer.Typer) -> None:
    rollout = typer.Typer(help="Aliases over adapter versions: weighted canary, shadow traffic, gated promotion.",
                          no_args_is_help=True)
    app.add_typer(rollout, name="rollout")

    @rollout.command("set")
    def set_alias(
        alias: str = typer.Argument(..., help="The name apps call (e.g. support-bot)."),
        stable: str = typer.Option(..., "--stable", help="Version most traffic gets (a loaded or catalogued adapter)."),
        candidate: Optional[str] = typer.Option(None, "--candidate", help="Version under test."),
        weight: float = typer.Option(0.0, "--weight", help="Share of callers sent to the candidate (0.1 = 90/10)."),
        shadow: float = typer.Option(0.0, "--shadow", help="Share of the stable's requests copied to the candidate."),
        sticky: str = typer.Option("key", "--sticky", help="key (API key), user (request `user` / X-Tuneserve-Sticky) or none."),
        url: Optional[str] = URL_OPTION, api_key: Optional[str] = KEY_OPTION, as_json: bool = JSON_OPTION,
    ) -> None:
        """Create or change an alias; reaches every Engine replica."""
        body = {"stable": stable, "candidate": candidate, "weight": weight, "shadow": shadow, "sticky": sticky}
        answer(*call("PUT", f"/{alias}", url, api_key, json=body), as_json)

    @rollout.command("status")
    def status(
        alias: Optional[str] = typer.Argument(None, help="One alias (default: all)."),
        url: Optional[str] = URL_OPTION, api_key: Optional[str] = KEY_OPTION, as_json: bool = JSON_OPTION,
    ) -> None:
        """The alias's versions, split, and per-version requests, errors, latency, shadow agreement, quality."""
        answer(*call("GET", f"/{alias}" if alias else "", url, api_key), as_json)

    @rollout.command("promote")
    def promote(
        alias: str = typer.Argument(...),
        force: bool = typer.Option(False, "--force", help="Promote even if the gate refuses (audited)."),
        url: Optional[str] = URL_OPTION, api_key: Optional[str] = KEY_OPTION, as_json: bool = JSON_OPTION,
    ) -> None:
        """Make the candidate the stable version if it is no worse in online quality, error rate and latency."""
        answer(*call("POST", f"/{alias}/promote", url, api_key, params={"force": force}), as_json)

    @rollout.command("rollback")
    def rollback(
        alias: str = typer.Argument(...),
        url: Optional[str] = URL_OPTION, api_key: Optional[str] = KEY_OPTION, as_json: bool = JSON_OPTION,
    ) -> None:
        """Drop the candidate (all traffic to the stable version), or return to the version the last promote replaced."""
        answer(*call("POST", f"/{alias}/rollback", url, api_key), as_json)

    @rollout.command("delete")
    def delete(
        alias: str = typer.Argument(...),
        url: Optional[str] = URL_OPTION, api_key: Optional[str] = KEY_OPTION, as_json: bool = JSON_OPTION,
    ) -> None:
        """Remove the alias (its versions stay loaded)."""
        answer(*call("DELETE", f"/{alias}", url, api_key), as_json)
