"""Per-key token buckets for requests/min and tokens/min, shared by every replica.

    store = bucket_store("auto")                  # RayBuckets inside Ray, LocalBuckets otherwise
    wait = await store.take("key1:requests", per_min=60, amount=1)     # 0.0 = admitted
    wait = await store.take("key1:tokens", per_min=10_000, amount=0)   # admitted while not in debt
    await store.charge("key1:tokens", per_min=10_000, amount=321)      # after the reply: may go negative

A bucket holds up to `per_min` units and refills at `per_min / 60` units per second. Requests
take one unit up front. Tokens are charged after the reply (their count is unknown before), so
a bucket can go into debt; the next request is refused until the debt is refilled, and
`Retry-After` says when. Shared state: one named, detached Ray actor (`tuneserve-ratelimits`)
holds every bucket, so limits hold across Ingress replicas and nodes; each check is one actor
call (~1 ms). Outside Ray (tests, the in-process app) the same buckets live in the process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

ACTOR_NAME = "tuneserve-ratelimits"
ACTOR_NAMESPACE = "tuneserve"


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
        with self.lock:
            self._refilled(name, per_min).level -= amount


class LocalBuckets:
    """Buckets in this process (one replica, tests)."""

    def __init__(self, buckets: Buckets | None = None) -> None:
        self.buckets = buckets or Buckets()

    async def take(self, name: str, per_min: float, amount: float) -> float:
        return self.buckets.take(name, per_min, amount)

    async def charge(self, name: str, per_min: float, amount: float) -> None:
        self.buckets.charge(name, per_min, amount)


class RayBuckets:
    """Buckets in one named Ray actor shared by all replicas of the cluster."""

    def __init__(self) -> None:
        import ray

        actor_class = ray.remote(num_cpus=0, max_concurrency=64)(Buckets)
        self.actor = actor_class.options(name=ACTOR_NAME, namespace=ACTOR_NAMESPACE, get_if_exists=True,
                                         lifetime="detached").remote()

    async def take(self, name: str, per_min: float, amount: float) -> float:
        return await self.actor.take.remote(name, per_min, amount)

    async def charge(self, name: str, per_min: float, amount: float) -> None:
        await self.actor.charge.remote(name, per_min, amount)


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
