"""Suspicious-activity detection: auth-failure bursts per address (→ temporary block), keys
used from many addresses, prompt-injection markers. Per replica, in memory, bounded.

    tracker = ActivityTracker(block_after=20, window_s=60, block_s=300)
    tracker.blocked_for("10.0.0.7")          # seconds left, 0.0 when not blocked
    tracker.auth_failed("10.0.0.7")          # True when this failure blocked the address
    tracker.key_used("3fa2c1", "10.0.0.7")   # distinct addresses of the key in the window
    injection_markers("Ignore all previous instructions and ...")   # ["ignore previous instructions"]
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict, deque

MAX_TRACKED = 10_000  # addresses/keys remembered; the oldest are forgotten first
MAX_ADDRESSES_PER_KEY = 1_000  # addresses remembered per key; the least recently seen are forgotten first

INJECTION_PATTERNS = {
    "ignore previous instructions": r"\b(ignore|disregard|forget)\b.{0,30}\b(previous|prior|above|earlier)\b.{0,20}"
                                    r"\b(instructions?|prompts?|rules?)\b",
    "reveal system prompt": r"\b(reveal|print|show|repeat|leak)\b.{0,30}\bsystem\s+prompt\b",
    "role override": r"\byou\s+are\s+now\b.{0,40}\b(dan|jailbroken|unrestricted|developer\s+mode)\b",
    "fake system turn": r"(^|\n)\s*(<\|?system\|?>|###\s*system\s*:|\[system\])",
}
_COMPILED = {name: re.compile(pattern, re.IGNORECASE | re.DOTALL) for name, pattern in INJECTION_PATTERNS.items()}


def injection_markers(text: str, limit: int = 20_000) -> list[str]:
    """Names of the prompt-injection heuristics `text` matches (first `limit` chars: stays cheap)."""
    head = text[:limit]
    return [name for name, pattern in _COMPILED.items() if pattern.search(head)]


class _Bounded(OrderedDict):
    def touch(self, key, factory):
        if key not in self:
            self[key] = factory()
            if len(self) > MAX_TRACKED:
                self.popitem(last=False)
        self.move_to_end(key)
        return self[key]


class ActivityTracker:
    def __init__(self, block_after: int = 20, window_s: float = 60.0, block_s: float = 300.0,
                 address_window_s: float = 3600.0, clock=time.monotonic) -> None:
        self.block_after, self.window_s, self.block_s = block_after, window_s, block_s
        self.address_window_s = address_window_s
        self.clock = clock
        self.failures: _Bounded = _Bounded()
        self.blocked: dict[str, float] = {}
        self.addresses: _Bounded = _Bounded()
        self.lock = threading.Lock()

    def blocked_for(self, address: str) -> float:
        with self.lock:
            until = self.blocked.get(address)
            if until is None:
                return 0.0
            left = until - self.clock()
            if left <= 0:
                del self.blocked[address]
                return 0.0
            return left

    def blocked_count(self) -> int:
        now = self.clock()
        with self.lock:
            for address in [a for a, until in self.blocked.items() if until <= now]:
                del self.blocked[address]
            return len(self.blocked)

    def auth_failed(self, address: str) -> bool:
        now = self.clock()
        with self.lock:
            times = self.failures.touch(address, deque)
            times.append(now)
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if self.block_s > 0 and len(times) >= self.block_after:
                self.blocked[address] = now + self.block_s
                times.clear()
                return True
        return False

    def key_used(self, key_id: str, address: str) -> int:
        now = self.clock()
        with self.lock:
            seen = self.addresses.touch(key_id, OrderedDict)  # address -> last seen, oldest first
            seen.pop(address, None)
            seen[address] = now
            while len(seen) > MAX_ADDRESSES_PER_KEY or next(iter(seen.values())) <= now - self.address_window_s:
                seen.popitem(last=False)
            return len(seen)
