"""Exact-match response cache for deterministic requests (temperature 0 or a fixed seed).

    cache = ResponseCache(size=1024, ttl_s=300)
    key = cache.key(model_id, version, prompt_ids, params)
    hit = cache.get(key)                # None on miss or expiry
    cache.put(key, result)

Keys include the adapter version, so a hot-swapped adapter never answers from the old
version's entries. Bounded by entry count (LRU) and time to live.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

from service.engine.types import SamplingParams


class ResponseCache:
    def __init__(self, size: int = 1024, ttl_s: float = 300.0, clock=time.monotonic) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self.clock = clock
        self.entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(model_id: str, version: str, prompt_ids: list[int], params: SamplingParams, n: int = 1) -> str:
        raw = json.dumps([model_id, version, prompt_ids, asdict(params), n], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self.entries.get(key)
            if item is None or self.clock() - item[0] > self.ttl_s:
                if item is not None:
                    del self.entries[key]
                self.misses += 1
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: str, value: Any) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self.entries[key] = (self.clock(), value)
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.entries), "hits": self.hits, "misses": self.misses}
