"""Shadow traffic's isolation: copies of live requests run on a thread with its own event loop, at most
`capacity` queued or running (more are dropped and counted by the caller), `concurrency` at once.

    runner = ShadowRunner(capacity=32, concurrency=2)
    accepted = runner.submit(lambda: run_copy())   # a coroutine factory; never blocks, never raises
    runner.drain(5.0)                              # tests: wait until every accepted copy finished
    runner.stop()

A client's request never waits for, shares a loop with, or sees an error of its shadow copy: the copy is
started after the client's answer is complete, on another loop, and whatever it raises stays here.
`agreement(a, b)` scores a shadow's answers against the primary's (1.0: the same texts).
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import threading
import time
from typing import Any, Awaitable, Callable

log = logging.getLogger("tuneserve.service.shadow")


def agreement(primary: list[str], shadow: list[str]) -> float:
    """Mean over answers of the word-level similarity (difflib ratio): 1.0 equal, 0.0 nothing shared.
    A missing or extra answer scores 0."""
    count = max(len(primary), len(shadow))
    if count == 0:
        return 1.0
    total = 0.0
    for a, b in zip(primary, shadow):
        words_a, words_b = (a or "").split(), (b or "").split()
        total += 1.0 if words_a == words_b else difflib.SequenceMatcher(None, words_a, words_b).ratio()
    return total / count


class ShadowRunner:
    def __init__(self, capacity: int, concurrency: int) -> None:
        self.capacity, self.concurrency = capacity, concurrency
        self.pending = 0
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.gate: asyncio.Semaphore | None = None

    def submit(self, factory: Callable[[], Awaitable[Any]]) -> bool:
        with self.lock:
            if self.pending >= self.capacity:
                return False
            self.pending += 1
            loop = self._started()
        try:
            asyncio.run_coroutine_threadsafe(self._run(factory), loop)
        except RuntimeError:  # the loop closed under us (stopping): count it as dropped
            self._done()
            return False
        return True

    def drain(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.idle:
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.idle.wait(left)
        return True

    def stop(self) -> None:
        with self.lock:
            loop, thread, self.loop, self.thread = self.loop, self.thread, None, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5.0)

    def _started(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:  # lock held
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def main() -> None:
                asyncio.set_event_loop(loop)
                self.gate = asyncio.Semaphore(self.concurrency)
                loop.call_soon(ready.set)
                loop.run_forever()
                loop.close()

            self.thread = threading.Thread(target=main, name="tuneserve-shadow", daemon=True)
            self.thread.start()
            ready.wait(5.0)
            self.loop = loop
        return self.loop

    async def _run(self, factory: Callable[[], Awaitable[Any]]) -> None:
        try:
            async with self.gate:
                await factory()
        except Exception:  # noqa: BLE001 - a shadow copy's failure never leaves this loop
            log.exception("shadow copy failed")
        finally:
            self._done()

    def _done(self) -> None:
        with self.idle:
            self.pending -= 1
            self.idle.notify_all()
