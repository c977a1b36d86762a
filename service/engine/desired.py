"""The admin-set adapter state every replica converges to, and how one registry applies it. No Ray here.

    state = DesiredState.model_validate_json(text)        # {"generation": 7, "adapters": {"a1": {...}}}
    registry.start(desired=lambda catalog: start_plan(state, catalog, resolve))   # before serving
    errors = reconcile(registry, state, since=applied, resolve=resolve)          # later generations

Each admin change (load, unload, pin) bumps `generation` and stamps the changed entry with it, so a
replica that applied generation g applies only the entries stamped after g. A `removed` entry is a
tombstone: the adapter is unloaded and left out of the catalog, so neither a directory scan on start
nor an on-demand load brings it back until an admin loads it again. `source` is what the admin
loaded (a local artifact dir or an `s3://` URI); `resolve` turns it into a local directory.

`aliases` are the rollouts (service/rollout.py): a stable name apps call, pointing at adapter versions
with a canary weight and a shadow fraction. They need nothing loaded or unloaded: a replica just takes
the new table. State files written before aliases existed load with none.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from service.engine.catalog import Catalog
    from service.engine.registry import ModelRegistry

log = logging.getLogger("tuneserve.service.desired")
Resolve = Callable[[str], Path]


class AdapterSpec(BaseModel):
    source: str | None = Field(None, description="artifact dir or s3:// URI; None: the one the catalog knows")
    pinned: bool = False
    removed: bool = False
    generation: int = Field(0, ge=0, description="the state generation that last changed this entry")


class AliasSpec(BaseModel):
    """What an alias serves: `stable` gets the traffic the canary does not; `candidate` gets `weight` of it
    (sticky per `sticky` id) and a copy of `shadow` of the stable's requests (answers scored, never returned)."""

    stable: str
    candidate: str | None = None
    weight: float = Field(0.0, ge=0.0, le=1.0, description="share of requests (sticky ids) routed to the candidate")
    shadow: float = Field(0.0, ge=0.0, le=1.0, description="share of the stable's requests copied to the candidate")
    sticky: Literal["key", "user", "none"] = Field("key", description="what keeps a caller on one version: its API "
                                                   "key id, the request's `user` (or X-Tuneserve-Sticky), or nothing")
    previous: str | None = Field(None, description="the version a rollback after a promote restores")
    generation: int = Field(0, ge=0, description="the state generation that last changed this alias")

    def versions(self) -> list[str]:
        return [v for v in (self.stable, self.candidate) if v]


class DesiredState(BaseModel):
    generation: int = Field(0, ge=0)
    adapters: dict[str, AdapterSpec] = Field(default_factory=dict)
    aliases: dict[str, AliasSpec] = Field(default_factory=dict)

    def changed_since(self, generation: int) -> dict[str, AdapterSpec]:
        return {name: spec for name, spec in self.adapters.items() if spec.generation > generation}


def start_plan(state: DesiredState, catalog: "Catalog", resolve: Resolve) -> dict[str, bool]:
    """Fold the state into a freshly discovered catalog: tombstoned adapters out, admin-set sources in.
    Returns the admin-set pins (name -> pinned), which win over the configured ones."""
    pins: dict[str, bool] = {}
    for name, spec in state.adapters.items():
        if spec.removed:
            catalog.adapters.pop(name, None)
            continue
        if spec.source is not None:
            try:
                catalog.adapters[name] = resolve(spec.source)
            except Exception as exc:  # noqa: BLE001 - one unreachable source must not stop the replica
                catalog.skipped[spec.source] = str(exc)
                log.warning("cannot fetch adapter %s from %s: %s", name, spec.source, exc)
                continue
        pins[name] = spec.pinned
    return pins


def reconcile(registry: "ModelRegistry", state: DesiredState, since: int, resolve: Resolve,
              retry: frozenset[str] = frozenset()) -> dict[str, str]:
    """Apply the entries changed after generation `since` (and those in `retry`) to `registry`.
    Returns the entries that failed here (name -> error); the others are applied."""
    errors: dict[str, str] = {}
    todo = state.changed_since(since) | {n: state.adapters[n] for n in retry if n in state.adapters}
    for name, spec in todo.items():
        try:
            _apply(registry, name, spec, resolve)
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator, retried later
            errors[name] = str(exc)
            log.warning("replica cannot apply adapter %s: %s", name, exc)
    return errors


def _apply(registry: "ModelRegistry", name: str, spec: AdapterSpec, resolve: Resolve) -> None:
    if spec.removed:
        registry.withdraw(name)
        return
    path = resolve(spec.source) if spec.source is not None else None
    entry = registry.adapters.get(name)
    if entry is None or (path is not None and entry.path.resolve() != path.resolve()):
        registry.load_adapter(name, path, pin=spec.pinned)
    elif entry.pinned != spec.pinned:
        registry.set_pinned(name, spec.pinned)
