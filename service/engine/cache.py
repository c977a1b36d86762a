"""Exact-match response cache for deterministic requests (temperature 0 or a fixed seed).

    cache = ResponseCache(size=1024, ttl_s=300, max_bytes=64 << 20)
    key = cache.key(model_id, version, prompt_ids, params, n, scope=principal.key_id)
    hit = cache.get(key)                # None on miss or expiry
    cache.put(key, result)              # its size estimated by approx_bytes (or pass nbytes=)

Keys include the adapter version, so a hot-swapped adapter never answers from the old
version's entries, and a scope (the API key), so one tenant can never tell from a reply's
timing what another tenant asked. Bounded by entry count and by the estimated bytes of the
entries (LRU; an entry larger than the whole budget is not kept) and by time to live.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

from service.engine.types import SamplingParams

OBJECT_OVERHEAD = 64  # rough bytes per Python object held (header, pointers)


def approx_bytes(value: Any) -> int:
    """A cheap estimate of the memory `value` holds: text and bytes by length, containers and
    dataclasses by their items, everything else a fixed overhead."""
    if isinstance(value, (str, bytes)):
        return OBJECT_OVERHEAD + len(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return OBJECT_OVERHEAD + sum(approx_bytes(v) for v in value)
    if isinstance(value, dict):
        return OBJECT_OVERHEAD + sum(approx_bytes(k) + approx_bytes(v) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return OBJECT_OVERHEAD + sum(approx_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return OBJECT_OVERHEAD


class ResponseCache:
    def __init__(self, size: int = 1024, ttl_s: float = 300.0, clock=time.monotonic, max_bytes: int = 64 << 20) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.entries: OrderedDict[str, tuple[float, Any, int]] = OrderedDict()  # key -> (stored at, value, bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(model_id: str, version: str, prompt_ids: list[int], params: SamplingParams, n: int = 1,
            scope: str | None = None) -> str:
        raw = json.dumps([scope, model_id, version, prompt_ids, asdict(params), n], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self.entries.get(key)
            if item is None or self.clock() - item[0] > self.ttl_s:
                if item is not None:
                    self._drop(key)
                self.misses += 1
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: str, value: Any, nbytes: int | None = None) -> None:
        nbytes = approx_bytes(value) if nbytes is None else nbytes
        if self.size <= 0 or nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self.entries:
                self._drop(key)
            self.entries[key] = (self.clock(), value, nbytes)
            self.bytes += nbytes
            while len(self.entries) > self.size or self.bytes > self.max_bytes:
                self._drop(next(iter(self.entries)))

    def _drop(self, key: str) -> None:
        self.bytes -= self.entries.pop(key)[2]

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
            self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.entries), "hits": self.hits, "misses": self.misses}
