"""`AdapterLoader`: adapter loads off the event loop, on their own bounded pool, rate-limited.

    loader = AdapterLoader(registry, AdapterLoadLimits(workers=1, max_pending=4, per_min=20, per_key_per_min=4))
    lease = await loader.acquire("support-v2", key_id="3fa2c1d04e5b")   # resident: at once; else it loads first
    info = await loader.load("support-v2", path, pin=None)             # admin loads: same pool, no rate limit
    loader.stop()

Policy (docs/security.md, "Adapter loading"): a request naming a catalogued adapter that is not
loaded loads it on demand. A load verifies the artifact (sha256 of every file) and attaches it
under the model lock, so decoding pauses; any inference key could otherwise cycle through more
adapters than `max_adapters` and keep the engine loading. Hence:
- loads run on `workers` threads of their own (never the default pool the event loop uses);
  at most `max_pending` loads run or wait at once, more answer 503 Unavailable;
- on-demand loads take one unit from a per-key bucket (`per_key_per_min`) and then from a
  global one (`per_min`), both refilling continuously; an empty bucket answers 429 RateLimited
  with Retry-After. Requests for an adapter whose load is already under way join that load
  without paying. Admin loads (`POST /v1/admin/adapters`) are not rate-limited;
- the load never holds a lease: the caller takes one after the load, on the event loop, so a
  caller cancelled during the load (client gone) leaves nothing behind.
Buckets live in this replica: a load costs this replica, so its limit is per replica.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from training.artifact.errors import RateLimited, Unavailable

from service.engine.registry import Lease, ModelRegistry
from service.security.ratelimit import Buckets
from service.settings import AdapterLoadLimits

RESOLVE_ATTEMPTS = 3  # a just-loaded adapter can be evicted by a concurrent load before the caller leases it


class AdapterLoader:
    def __init__(self, registry: ModelRegistry, limits: AdapterLoadLimits, buckets: Buckets | None = None) -> None:
        self.registry = registry
        self.limits = limits
        self.buckets = buckets or Buckets()
        self.pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="tuneserve-load")
        self._lock = threading.RLock()  # a done callback may run at once, in the submitting thread
        self._pending = 0
        self._loading: dict[str, Future] = {}  # adapter name -> its on-demand load under way

    async def acquire(self, model_id: str, key_id: str | None = None,
                      visible: Callable[[str], bool] | None = None) -> Lease:
        """A lease on `model_id`, loading a catalogued adapter first (rate-limited per key and in all);
        a NotFound's hint names only models `visible` allows (the caller's key)."""
        for _ in range(RESOLVE_ATTEMPTS):
            lease = self.registry.acquire_resident(model_id)
            if lease is not None:
                return lease
            if model_id not in self.registry.catalog.adapters:
                return self.registry.acquire(model_id, visible)  # nothing to load: the registry's NotFound
            await _joined(self._on_demand(model_id, key_id))
        raise Unavailable(f"adapter {model_id!r} was evicted by other loads right after loading",
                          "retry in a moment, or raise max_adapters")

    async def load(self, name: str, path: str | None = None, pin: bool | None = None) -> dict[str, Any]:
        """An admin load or hot swap (not rate-limited; bounded like every load)."""
        with self._lock:
            future = self._submit(self.registry.load_adapter, name, path, pin)
        return await _joined(future)

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _on_demand(self, name: str, key_id: str | None) -> Future:
        with self._lock:
            running = self._loading.get(name)
            if running is not None:
                return running
            self._take(f"key:{key_id}", self.limits.per_key_per_min, f"API key {key_id}")
            self._take("all", self.limits.per_min, "this replica")
            future = self._loading[name] = self._submit(self.registry.load_on_demand, name)
        future.add_done_callback(lambda _, n=name: self._forget(n))
        return future

    def _take(self, bucket: str, per_min: int | None, who: str) -> None:
        if per_min is None:
            return
        wait = self.buckets.take(bucket, per_min, 1)
        if wait > 0:
            raise RateLimited(f"{who} reached its limit of {per_min} on-demand adapter loads per minute",
                              f"retry after {wait:.1f} s, use an adapter that is loaded (GET /v1/models), "
                              "or ask an admin to pin the adapters you need", retry_after=wait)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue a load (lock held); refused when `max_pending` loads already run or wait."""
        if self._pending >= self.limits.max_pending:
            raise Unavailable(f"{self._pending} adapter loads are already running or queued "
                              f"(limits.adapter_loads.max_pending)", "retry in a few seconds")
        self._pending += 1
        future = self.pool.submit(fn, *args)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    def _forget(self, name: str) -> None:
        with self._lock:
            self._loading.pop(name, None)


async def _joined(future: Future) -> Any:
    """Await a pool future without cancelling it when this caller is cancelled (others may share it)."""
    return await asyncio.shield(asyncio.wrap_future(future))
