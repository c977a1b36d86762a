"""One adapter set across all Engine replicas: a durable admin-set state, a coordinator that hands it
out and collects acknowledgements, and the member in each replica that converges to it.

    coordinator = Coordinator(state_file, replica_ttl_s=5)          # in process; in Ray: ray_coordinator()
    member = FleetMember(engine.registry, coordinator, "replica-1", settings.fleet, settings.adapters)
    engine.start(desired=member.plan)       # before serving: tombstoned adapters stay out, admin sources in
    member.start()                          # heartbeat + long poll; applies every new generation
    info, status = member.load("a1", "s3://models/a1/v2", pin=None)   # status: FleetStatus

Why a file: the state sits next to the artifacts (`<artifacts_dir>/.tuneserve-state.json`, on the
shared ReadWriteMany volume in k8s), so it outlives Ray clusters (a RayService upgrade builds a new
cluster, and Ray's GCS KV dies with the old one unless backed by external Redis). It is written
atomically (temp file + rename) under an flock. Why a coordinator: acknowledgements and liveness
are cluster-wide and short-lived; in Ray one named, detached, threaded actor holds them (and the
state's in-memory copy), replicas long-poll it (a change reaches them at once, no change costs one
call per `sync_interval_s`) and a replica not heard from for `replica_ttl_s` no longer counts as live.
An admin call applies the change on its own replica first (a failed load changes nothing), writes
the next generation, then waits up to `ack_timeout_s` for every live replica to report it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, ValidationError

from training.artifact.config import StrictModel
from training.artifact.errors import Conflict, ConfigError, PermissionDenied
from training.artifact.paths import cache_dir
from training.artifact.remote import fetch_artifact, is_remote, split_uri

from service.engine.desired import AdapterSpec, AliasSpec, DesiredState, reconcile, start_plan
from service.errors import with_param
from service.schemas import FleetStatus, FleetView

log = logging.getLogger("tuneserve.service.fleet")
STATE_NAME = ".tuneserve-state.json"


class FleetSettings(StrictModel):
    state_file: Path | None = Field(None, description=f"the admin-set adapter state; default <artifacts_dir>/{STATE_NAME}")
    sync_interval_s: float = Field(1.0, gt=0, le=30, description="replicas check the state's generation this often")
    ack_timeout_s: float = Field(10.0, ge=0, le=300, description="admin calls wait this long for every replica")
    replica_ttl_s: float = Field(5.0, gt=0, description="a replica not heard from for this long is no longer live")
    retry_s: float = Field(10.0, gt=0, description="a replica retries a change it failed to apply this often")
    s3_roots: list[str] = Field(default_factory=list, description="s3:// prefixes admin loads may name (none: no S3)")
    s3_cache_dir: Path | None = Field(None, description="local copies of s3:// artifacts; default <cache>/s3")


def state_path(fleet: FleetSettings, artifacts_dir: Path | None) -> str | None:
    path = fleet.state_file or (artifacts_dir / STATE_NAME if artifacts_dir else None)
    return str(path) if path else None


class StateStore:
    """The desired state as a JSON file, replaced atomically; in memory when there is no path."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._memory = DesiredState()

    def read(self) -> DesiredState:
        if self.path is None or not self.path.is_file():
            return self._memory.model_copy(deep=True)
        try:
            return DesiredState.model_validate_json(self.path.read_bytes())
        except ValidationError as exc:
            raise ConfigError(f"the adapter state file {self.path} is malformed ({exc.error_count()} errors)",
                              "restore it from a backup, or delete it to fall back to the artifacts directory") from None

    def update(self, change) -> DesiredState:
        """Read, apply `change(state)`, bump the generation and write back, under an exclusive lock."""
        if self.path is None:
            change(self._memory)
            self._memory.generation += 1
            return self._memory.model_copy(deep=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read()
            change(state)
            state.generation += 1
            tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(state.model_dump(), indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
            return state


class Coordinator:
    """The state's one writer and the replicas' meeting point (thread-safe; a threaded Ray actor in Ray)."""

    def __init__(self, state_file: str | None, replica_ttl_s: float = 5.0) -> None:
        self.store = StateStore(state_file)
        self.ttl = replica_ttl_s
        self._state = self.store.read()
        self._cond = threading.Condition()
        self._replicas: dict[str, tuple[int, dict[str, str], float]] = {}  # id -> (applied, errors, last seen)
        self._tallies: dict[str, dict] = {}  # id -> its rollout numbers per version (service/rollout.py)

    def state(self) -> DesiredState:
        with self._cond:
            return self._state.model_copy(deep=True)

    def change(self, name: str, fields: dict[str, Any], new_source: str | None = None) -> int:
        """Merge `fields` into adapter `name`'s entry (a new entry takes `new_source`); the new generation."""
        def edit(state: DesiredState) -> None:
            spec = state.adapters.get(name) or AdapterSpec(source=new_source)
            state.adapters[name] = spec.model_copy(update={**fields, "generation": state.generation + 1})

        with self._cond:
            self._state = self.store.update(edit)
            self._cond.notify_all()
            return self._state.generation

    def set_alias(self, name: str, spec: dict[str, Any] | None, expect: int | None = None) -> int:
        """Write alias `name` (None: remove it); refused when `expect` is not its current generation (another
        admin changed it since the caller read it; -1: it must not exist yet). The new generation."""
        def edit(state: DesiredState) -> None:
            current = state.aliases.get(name)
            if expect is not None and (current.generation if current else -1) != expect:
                raise Conflict(f"alias {name!r} was changed by another admin call meanwhile",
                               "check `tuneserve rollout status` and try again")
            if spec is None:
                state.aliases.pop(name, None)
            else:
                state.aliases[name] = AliasSpec.model_validate({**spec, "generation": state.generation + 1})

        with self._cond:
            self._state = self.store.update(edit)
            self._cond.notify_all()
            return self._state.generation

    def sync(self, replica: str, applied: int, errors: dict[str, str], wait_s: float = 0.0) -> DesiredState | None:
        """Heartbeat with what `replica` applied; the state once newer than that (waits up to `wait_s`)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._replicas[replica] = (applied, dict(errors), time.monotonic())
            self._cond.notify_all()
            while self._state.generation <= applied:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._state.model_copy(deep=True)

    def leave(self, replica: str) -> None:
        with self._cond:
            self._replicas.pop(replica, None)
            self._tallies.pop(replica, None)
            self._cond.notify_all()

    def report_tallies(self, replica: str, tallies: dict) -> None:
        """`replica`'s rollout numbers (Rollouts.snapshot), sent with its heartbeats."""
        with self._cond:
            self._tallies[replica] = tallies

    def tallies(self, exclude: str | None = None) -> list[dict]:
        """The rollout numbers the live replicas other than `exclude` last reported."""
        with self._cond:
            live = self._live()
            return [t for r, t in self._tallies.items() if r in live and r != exclude]

    def await_applied(self, generation: int, name: str, timeout_s: float) -> dict[str, Any]:
        """Wait until every live replica applied `generation`; who did, who has not, who failed on `name`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                live = self._live()
                pending = sorted(r for r, (applied, _, _) in live.items() if applied < generation)
                left = deadline - time.monotonic()
                if not pending or left <= 0:
                    break
                self._cond.wait(min(left, self.ttl))
            failed = {r: errors[name] for r, (_, errors, _) in live.items() if r not in pending and name in errors}
            applied = sorted(r for r in live if r not in pending and r not in failed)
            return {"generation": generation, "applied": applied, "pending": pending, "failed": failed}

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._cond:
            rows = [{"replica": r, "applied": a, "errors": e, "seen_s_ago": round(now - seen, 3)}
                    for r, (a, e, seen) in sorted(self._live().items())]
            return {"generation": self._state.generation, "replicas": rows}

    def _live(self) -> dict[str, tuple[int, dict[str, str], float]]:
        now = time.monotonic()
        return {r: v for r, v in self._replicas.items() if now - v[2] <= self.ttl}


class FleetMember:
    """One replica's side: start from the state, follow it, and publish this replica's admin changes."""

    def __init__(self, registry, coordinator, replica_id: str, settings: FleetSettings,
                 config_adapters: dict[str, str] | None = None) -> None:
        self.registry, self.coordinator, self.replica, self.settings = registry, coordinator, replica_id, settings
        self.config_adapters = dict(config_adapters or {})
        self.cache_root = settings.s3_cache_dir or cache_dir() / "s3"
        self.lock = threading.RLock()  # one apply or admin change at a time in this replica
        self.applied, self.errors = 0, {}
        self.aliases: dict[str, AliasSpec] = {}  # replaced whole on each generation (readers take no lock)
        self._start_state = DesiredState()
        self._stop, self._dirty = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_try = 0.0
        self.tallies: Callable[[], dict] | None = None  # this replica's rollout numbers, reported each heartbeat

    def resolve(self, source: str) -> Path:
        return fetch_artifact(source, self.cache_root) if is_remote(source) else Path(source)

    def plan(self, catalog) -> dict[str, bool]:
        """registry.start's `desired`: remote configured adapters fetched, then the admin-set state folded in."""
        for name, source in self.config_adapters.items():
            if is_remote(source):
                try:
                    catalog.adapters[name] = self.resolve(source)
                except Exception as exc:  # noqa: BLE001 - one unreachable source must not stop the replica
                    catalog.skipped[source] = str(exc)
        self._start_state = self.coordinator.state()
        self.aliases = dict(self._start_state.aliases)
        return start_plan(self._start_state, catalog, self.resolve)

    def start(self) -> None:
        self.applied = self._start_state.generation
        self._report()
        for target in (self._follow, self._apply_loop):
            thread = threading.Thread(target=target, name=f"fleet-{target.__name__[1:]}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        for thread in self._threads:  # a heartbeat after leave() would count this replica live again
            thread.join(self.settings.sync_interval_s + 2.0)
        try:
            self.coordinator.leave(self.replica)
        except Exception as exc:  # noqa: BLE001 - the coordinator may be gone already; the replica expires
            log.debug("leaving the fleet: %s", exc)

    # ---- admin changes (called off the event loop) -----------------------------------------
    def load(self, name: str, source: str | None, pin: bool | None) -> tuple[dict[str, Any], FleetStatus]:
        with self.lock:
            info = self.registry.load_adapter(name, self.resolve(source) if source and is_remote(source) else source, pin)
            generation = self._publish(name, {"source": source or info["path"], "pinned": info["pinned"],
                                              "removed": False})
        return info, self._await(generation, name)

    def unload(self, name: str, force: bool) -> FleetStatus:
        with self.lock:
            spec = self.coordinator.state().adapters.get(name)
            wanted = spec is not None and not spec.removed
            if wanted and spec.pinned and not force:
                raise Conflict(f"adapter {name!r} is pinned", "unpin it first, or unload with force=true")
            if name in self.registry.adapters or not (wanted or name in self.registry.catalog.adapters):
                self.registry.unload_adapter(name, force)  # NotFound when unknown, Conflict when pinned here
            else:
                self.registry.withdraw(name)  # wanted, but not resident on this replica just now
            generation = self._publish(name, {"removed": True, "pinned": False})
        return self._await(generation, name)

    def pin(self, name: str, pinned: bool) -> tuple[dict[str, Any], FleetStatus]:
        with self.lock:
            info = self.registry.set_pinned(name, pinned)
            generation = self._publish(name, {"pinned": pinned, "removed": False}, new_source=info["path"])
        return info, self._await(generation, name)

    def set_alias(self, name: str, spec: AliasSpec | None, expect: int | None) -> FleetStatus:
        """Write alias `name` (None: remove it) for every replica; see Coordinator.set_alias for `expect`."""
        with self.lock:
            data = None if spec is None else spec.model_dump(exclude={"generation"})
            try:
                generation = self._publish(name, write=lambda: self.coordinator.set_alias(name, data, expect))
            except Conflict:  # from the actor it arrives wrapped by Ray: hand on a plain one
                raise Conflict(f"alias {name!r} was changed by another admin call meanwhile",
                               "check `tuneserve rollout status` and try again") from None
        return self._await(generation, name)

    def view(self) -> FleetView:
        return FleetView(**self.coordinator.view())

    def _publish(self, name: str, fields: dict[str, Any] | None = None, new_source: str | None = None,
                 write=None) -> int:
        """Write a change this replica has just applied itself; catch up first if others wrote in between."""
        before = self.applied
        generation = write() if write is not None else self.coordinator.change(name, fields, new_source)
        if write is not None and generation == before + 1:
            self.aliases = dict(self.coordinator.state().aliases)
        if generation == before + 1:
            self.applied = generation
            self.errors = {n: e for n, e in self.errors.items() if n != name}  # replaced: _follow may be reading it
            self._report()
        else:
            self.apply_latest()
        return generation

    def _await(self, generation: int, name: str) -> FleetStatus:
        return FleetStatus(**self.coordinator.await_applied(generation, name, self.settings.ack_timeout_s))

    # ---- following the state --------------------------------------------------------------
    def apply_latest(self) -> None:
        with self.lock:
            state = self.coordinator.state()
            if state.generation <= self.applied and not self.errors:
                return
            self._last_try = time.monotonic()
            self.errors = reconcile(self.registry, state, self.applied, self.resolve, frozenset(self.errors))
            self.aliases = dict(state.aliases)
            self.applied = state.generation
        self._report()

    def _report(self) -> None:
        self.coordinator.sync(self.replica, self.applied, self.errors, 0.0)

    def _report_tallies(self) -> None:
        if self.tallies is not None:
            try:
                self.coordinator.report_tallies(self.replica, self.tallies())
            except Exception as exc:  # noqa: BLE001 - e.g. an older coordinator: the gate then counts this replica only
                log.debug("replica %s cannot report its rollout numbers: %s", self.replica, exc)

    def peer_tallies(self) -> list[dict]:
        """The other live replicas' rollout numbers (empty when the coordinator cannot say)."""
        try:
            return self.coordinator.tallies(self.replica)
        except Exception as exc:  # noqa: BLE001
            log.warning("replica %s cannot read the fleet's rollout numbers: %s", self.replica, exc)
            return []

    def _follow(self) -> None:
        """Heartbeat and long poll: a new generation (or a failed change due for a retry) wakes the applier."""
        while not self._stop.is_set():
            self._report_tallies()
            try:
                newer = self.coordinator.sync(self.replica, self.applied, self.errors, self.settings.sync_interval_s)
            except Exception as exc:  # noqa: BLE001 - coordinator restarting: keep serving, try again
                log.warning("replica %s cannot reach the fleet coordinator: %s", self.replica, exc)
                self._stop.wait(self.settings.sync_interval_s)
                continue
            if newer is not None or (self.errors and time.monotonic() - self._last_try >= self.settings.retry_s):
                self._dirty.set()

    def _apply_loop(self) -> None:
        while not self._stop.is_set():
            if not self._dirty.wait(self.settings.sync_interval_s):
                continue
            self._dirty.clear()
            if self._stop.is_set():
                return
            try:
                self.apply_latest()
            except Exception as exc:  # noqa: BLE001 - e.g. the coordinator is briefly away: next tick
                log.warning("replica %s cannot apply the adapter state: %s", self.replica, exc)


def admin_source(path: str | None, local_roots: list[Path | None], s3_roots: list[str]) -> str | None:
    """An admin load's `path`, checked: a local path inside the roots, or an s3:// URI under `s3_roots`."""
    if path is None or not is_remote(path):
        from service.security.limits import confined_path

        return None if path is None else str(confined_path(local_roots, path))
    split_uri(path)
    if not any(path == root.rstrip("/") or path.startswith(root.rstrip("/") + "/") for root in s3_roots):
        raise with_param(PermissionDenied(f"adapter source {path!r} is outside the allowed object storage prefixes",
                                          "add its prefix to fleet.s3_roots in the server config"), "path")
    return path


def local_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def ray_coordinator(settings: FleetSettings, artifacts_dir: Path | None):
    """The cluster's coordinator actor (created by the first replica, shared by all), behind the
    Coordinator's method names. Detached so a replica's death does not take it along."""
    import hashlib

    import ray

    path = state_path(settings, artifacts_dir)
    name = "tuneserve-fleet-" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    actor = ray.remote(Coordinator).options(
        name=name, namespace="tuneserve", lifetime="detached", get_if_exists=True, num_cpus=0,
        max_concurrency=64, max_restarts=-1, max_task_retries=-1).remote(path, settings.replica_ttl_s)
    return RemoteCoordinator(actor, settings)


class RemoteCoordinator:
    """Calls a coordinator actor and waits for the answer (members call it from their own threads)."""

    def __init__(self, actor, settings: FleetSettings) -> None:
        self.actor, self.slack = actor, 30.0 + settings.ack_timeout_s

    def __getattr__(self, method: str):
        import ray

        remote = getattr(self.actor, method)
        return lambda *args: ray.get(remote.remote(*args), timeout=self.slack)

    def leave(self, replica: str) -> None:  # a stopping replica does not wait (the actor may be gone too)
        self.actor.leave.remote(replica)
