"""Adapter and rollout administration of the serving core: load (hot-swap), unload, pin, list, and the
rollout aliases. `ServingCore` inherits these; every change goes through the fleet (service/fleet.py),
so it reaches every Engine replica and survives a restart.

    info = await core.load_adapter(LoadAdapterRequest(name="support-v2", path="support-v2"), principal)
    await core.rollout(RolloutRequest(action="promote", alias="support"), principal)
"""

from __future__ import annotations

import asyncio

from training.artifact.errors import Conflict, TuneserveError

from service import metrics
from service.auth import Principal
from service.errors import with_param
from service.fleet import admin_source
from service.rollout_schemas import RolloutReply, RolloutRequest
from service.schemas import AdapterInfo, AdapterList, LoadAdapterRequest
from service.security.limits import check_adapter_name, relative_paths


class Administration:
    """The admin methods of `ServingCore` (it provides settings, fleet, registry, drift, rollouts and
    `_authorize`)."""

    async def load_adapter(self, request: LoadAdapterRequest, principal: Principal | None = None) -> AdapterInfo:
        self._authorize(principal, "admin", request.name)  # admin keys act only on adapters their globs match
        check_adapter_name(request.name, self.settings.security.adapter_name_pattern)
        if request.name in self.fleet.aliases:  # requests naming it would reach the alias, never this adapter
            raise with_param(Conflict(f"{request.name!r} is a rollout alias", "load the adapter under a version "
                                      "name and point the alias at it (tuneserve rollout set)"), "name")
        roots = [self.settings.artifacts_dir, *self.settings.security.adapter_roots]
        # adapters load only from the artifacts dir, the configured roots or S3 prefixes: no traversal
        source = admin_source(request.path, roots, self.settings.fleet.s3_roots)
        try:
            info, fleet = await asyncio.to_thread(self.fleet.load, request.name, source, request.pin)
        except TuneserveError as exc:  # name the artifact, not the server's directories
            raise relative_paths(exc, roots) from None
        self.drift.forget(request.name)  # a new version brings its own reference profile
        return AdapterInfo(**info, fleet=fleet)

    async def unload_adapter(self, name: str, force: bool = False, principal: Principal | None = None) -> dict:
        self._authorize(principal, "admin", name)
        fleet = await asyncio.to_thread(self.fleet.unload, name, force)
        metrics.adapter_event(name, "unloaded")
        self.drift.forget(name)
        return {"name": name, "unloaded": True, "fleet": fleet.model_dump()}

    async def pin_adapter(self, name: str, pinned: bool, principal: Principal | None = None) -> AdapterInfo:
        self._authorize(principal, "admin", name)
        info, fleet = await asyncio.to_thread(self.fleet.pin, name, pinned)
        return AdapterInfo(**info, fleet=fleet)

    async def list_adapters(self, principal: Principal | None = None) -> AdapterList:
        self._authorize(principal, "admin")
        rows = [a for a in self.registry.list_adapters() if principal is None or principal.may_use(a["name"])]
        return AdapterList(data=[AdapterInfo(**a) for a in rows], fleet=await asyncio.to_thread(self.fleet.view))

    async def rollout(self, request: RolloutRequest, principal: Principal | None = None) -> RolloutReply:
        """Aliases: list, status, set, promote (gated), rollback, delete (service/rollout.py)."""
        self._authorize(principal, "admin")
        if request.action == "set" and request.alias:
            check_adapter_name(request.alias, self.settings.security.adapter_name_pattern)
        return await asyncio.to_thread(self.rollouts.admin, request, principal)
