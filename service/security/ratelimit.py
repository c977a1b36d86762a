"""Per-key token buckets for requests/min and tokens/min, shared by every replica.

    store = bucket_store("auto")                  # RayBuckets inside Ray, LocalBuckets otherwise
    wait = await store.take("key1:requests", per_min=60, amount=1)     # 0.0 = admitted
    wait = await store.take("key1:tokens", per_min=10_000, amount=0)   # admitted while not in debt
    wait = await store.take("key1:tokens", per_min=10_000, amount=600) # a generation's estimate, reserved
    await store.charge("key1:tokens", per_min=10_000, amount=-279)     # after the reply: settle (may go negative)

A bucket holds up to `per_min` units and refills at `per_min / 60` units per second. Requests
take one unit up front. A generation reserves its estimated tokens up front and settles to the
tokens used after the reply, so a bucket can go into debt (a reply longer than estimated); the
next request is refused until the debt is refilled, and `Retry-After` says when. Shared state: one named, detached Ray actor (`tuneserve-ratelimits`)
holds every bucket, so limits hold across Ingress replicas and nodes; each check is one actor
call (~1 ms). Outside Ray (tests, the in-process app) the same buckets live in the process.

If the actor dies, Ray restarts it (`max_restarts=-1`; its buckets start full); a replica whose
handle fails with a Ray actor error re-fetches the handle by name (re-creating the actor if it
is gone for good) and retries once. A store that still fails or does not answer within
`STORE_TIMEOUT_S` **errs open**: the request is admitted, nothing is charged, and
`tuneserve_rate_limit_store_errors_total` counts it (an alert signal): limits protect fairness,
not access, so an outage of the limiter must not become an outage of the API.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from service.security import metrics

ACTOR_NAME = "tuneserve-ratelimits"
ACTOR_NAMESPACE = "tuneserve"
STORE_TIMEOUT_S = 2.0
log = logging.getLogger("tuneserve.security.ratelimit")


@dataclass
class Bucket:
    level: float
    stamp: float


class Buckets:
    """The bucket arithmetic (thread-safe); `clock` is injectable for tests."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, Bucket] = {}
        self.lock = threading.Lock()

    def _refilled(self, name: str, per_min: float) -> Bucket:
        now = self.clock()
        bucket = self.buckets.setdefault(name, Bucket(float(per_min), now))
        bucket.level = min(float(per_min), bucket.level + (now - bucket.stamp) * per_min / 60.0)
        bucket.stamp = now
        return bucket

    def take(self, name: str, per_min: float, amount: float) -> float:
        """Take `amount` if the bucket holds it (amount 0: if it is not in debt); else seconds to wait."""
        with self.lock:
            bucket = self._refilled(name, per_min)
            if (bucket.level > 0) if amount == 0 else (bucket.level >= amount):
                bucket.level -= amount
                return 0.0
            return (max(amount, 1.0) - bucket.level) * 60.0 / per_min

    def charge(self, name: str, per_min: float, amount: float) -> None:
        """Charge `amount` (may go into debt); a negative amount refunds, up to a full bucket."""
        with self.lock:
            bucket = self._refilled(name, per_min)
            bucket.level = min(float(per_min), bucket.level - amount)


class LocalBuckets:
    """Buckets in this process (one replica, tests)."""

    def __init__(self, buckets: Buckets | None = None) -> None:
        self.buckets = buckets or Buckets()

    async def take(self, name: str, per_min: float, amount: float) -> float:
        return self.buckets.take(name, per_min, amount)

    async def charge(self, name: str, per_min: float, amount: float) -> None:
        self.buckets.charge(name, per_min, amount)


def actor_options() -> dict[str, Any]:
    return {"num_cpus": 0, "max_concurrency": 64, "max_restarts": -1}


def connect_actor() -> Any:
    """The handle of the shared bucket actor, created when missing (or dead for good)."""
    import ray

    actor_class = ray.remote(**actor_options())(Buckets)
    return actor_class.options(name=ACTOR_NAME, namespace=ACTOR_NAMESPACE, get_if_exists=True,
                               lifetime="detached").remote()


def _actor_gone(exc: BaseException) -> bool:
    try:
        from ray.exceptions import RayActorError
    except ImportError:
        return False
    return isinstance(exc, RayActorError)


class RayBuckets:
    """Buckets in one named Ray actor shared by all replicas of the cluster."""

    def __init__(self, connect: Callable[[], Any] = connect_actor, timeout_s: float = STORE_TIMEOUT_S) -> None:
        self.connect, self.timeout_s = connect, timeout_s
        self.actor = connect()

    async def _call(self, method: str, *args: Any) -> Any:
        """The actor's answer, or None when the store is unreachable (counted; the caller errs open)."""
        for attempt in (1, 2):
            try:
                return await asyncio.wait_for(getattr(self.actor, method).remote(*args), self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - any store failure errs open
                if attempt == 1 and _actor_gone(exc):
                    try:
                        self.actor = self.connect()
                        continue
                    except Exception as again:  # noqa: BLE001
                        exc = again
                metrics.RATE_LIMIT_STORE_ERRORS.inc()
                log.warning("rate-limit store %s failed (%s: %s); admitting without a limit",
                            method, type(exc).__name__, exc)
                return None
        return None

    async def take(self, name: str, per_min: float, amount: float) -> float:
        wait = await self._call("take", name, per_min, amount)
        return 0.0 if wait is None else wait

    async def charge(self, name: str, per_min: float, amount: float) -> None:
        await self._call("charge", name, per_min, amount)


def bucket_store(kind: str = "auto") -> LocalBuckets | RayBuckets:
    if kind == "local":
        return LocalBuckets()
    if kind == "ray":
        return RayBuckets()
    try:
        import ray

        inside_ray = ray.is_initialized()
    except ImportError:
        inside_ray = False
    return RayBuckets() if inside_ray else LocalBuckets()
