"""The engine thread: continuous batching of generation rows across models and adapters.

    sched = Scheduler(registry, BatchingSettings(max_batch_size=16))
    sched.start()
    sched.submit([row, ...])     # rows of one request; events arrive on row.stream
    sched.alive                  # the engine thread runs (the deployment's health check)
    sched.stop()

One thread owns all decoding. Each model target has one `DecodeBatch`; new rows join it at
the next step boundary (up to max_batch_size rows), so a long generation never blocks a
short one from starting. When the engine is idle, the first request waits for others so
they share one prefill and one full decode batch: as long as requests keep arriving less than
batch_wait_timeout_s apart, up to batch_max_wait_s in all (a burst of HTTP clients reaches the
engine spread over tens of ms; a fixed 10 ms window started most of them in small batches).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator

from service import metrics
from service.engine.decode import DecodeBatch
from service.engine.settings import BatchingSettings
from service.engine.types import Event, GenRow

log = logging.getLogger("tuneserve.service.scheduler")


class Scheduler:
    def __init__(self, registry, batching: BatchingSettings, prefix_cache=None) -> None:
        self.registry = registry
        self.prefix_cache = prefix_cache  # a PrefixCache every batch shares (None: off)
        self.max_batch_size = batching.max_batch_size
        self.batch_wait_timeout_s = batching.batch_wait_timeout_s
        self.batch_max_wait_s = max(batching.batch_max_wait_s, batching.batch_wait_timeout_s)
        self.join_wait_s = batching.join_wait_s
        self.join_min_rows = batching.join_min_rows
        self.inbox: queue.Queue[GenRow | None] = queue.Queue()
        self.waiting: list[GenRow] = []
        self.batches: dict[str, DecodeBatch] = {}
        self._thread: threading.Thread | None = None
        self._running = False

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="tuneserve-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self.inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, rows: list[GenRow]) -> None:
        for row in rows:
            row.queued_at = time.monotonic()
            self.inbox.put(row)

    @property
    def active_rows(self) -> int:
        return sum(len(b) for b in self.batches.values())

    def queue_depth(self) -> int:
        return len(self.waiting) + self.inbox.qsize()

    def _loop(self) -> None:
        while self._running:
            idle = self.active_rows == 0 and not self.waiting
            self._collect(block=idle)
            self._admit()
            for key, batch in list(self.batches.items()):
                if len(batch):
                    self._guarded(batch, batch.step)

    def _collect(self, block: bool) -> None:
        if block:
            first = self.inbox.get()
            if first is None:
                return
            self.waiting.append(first)
            collect_burst(self.inbox, self.waiting, len, self.max_batch_size, self.batch_wait_timeout_s,
                          self.batch_max_wait_s)
        self.waiting.extend(drained(self.inbox))

    def _joins_now(self, batch: DecodeBatch, waiting: int, oldest: float, now: float) -> bool:
        """Rows joining a running batch share one prefill pass, which the running rows wait for:
        let a few gather (up to join_wait_s) unless the batch is empty or the free slots are filled."""
        if not len(batch) or not self.join_wait_s:
            return True
        free = self.max_batch_size - len(batch)
        return waiting >= min(self.join_min_rows, free) or now - oldest >= self.join_wait_s

    def _admit(self) -> None:
        groups: dict[str, list[GenRow]] = {}
        still_waiting = []
        pending: dict[str, list[GenRow]] = {}
        for row in self.waiting:
            if row.stream.cancelled.is_set():
                row.release()
                continue
            pending.setdefault(row.target.key, []).append(row)
        now = time.monotonic()
        for key, rows in pending.items():
            batch = self._batch(key)
            if not self._joins_now(batch, len(rows), min(r.queued_at for r in rows), now):
                still_waiting.extend(rows)
                continue
            group = groups.setdefault(key, [])
            for row in rows:
                if len(batch) + len(group) < self.max_batch_size:
                    group.append(row)
                else:
                    still_waiting.append(row)
        self.waiting = still_waiting
        for key, rows in groups.items():
            if rows:
                metrics.batch_admitted(len(rows), len(self.batches[key]))
                now = time.monotonic()
                for row in rows:
                    metrics.queue_waited(row.model, now - row.queued_at)
                self._guarded(self.batches[key], lambda b=self.batches[key], r=rows: b.admit(r), rows)

    def _batch(self, key: str) -> DecodeBatch:
        batch = self.batches.get(key)
        if batch is None:
            target = self.registry.targets[key]
            batch = DecodeBatch(lambda k=key: self.registry.target(k), target.loaded.tokenizer, self.registry.model_lock,
                                self.prefix_cache)
            self.batches[key] = batch
        return batch

    @staticmethod
    def _guarded(batch: DecodeBatch, fn, new_rows: list[GenRow] | None = None) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a failing batch fails its requests, not the engine
            log.exception("decode step failed")
            if new_rows is None:
                batch.fail(exc)
                return
            for row in new_rows:  # a failed prefill changed nothing in the running batch
                row.stream.put(Event(index=row.index, error=exc))
                row.release()


def collect_burst(inbox: queue.Queue, items: list, size: Callable[[list], int], limit: int, gap_s: float,
                  max_wait_s: float) -> None:
    """Move what arrives on `inbox` into `items` while it arrives less than `gap_s` apart, for at most
    `max_wait_s` in all, until `size(items)` reaches `limit` (None, a stop signal, is skipped)."""
    deadline = time.monotonic() + max_wait_s
    while size(items) < limit:
        remaining = min(gap_s, deadline - time.monotonic())  # the gap, capped
        if remaining <= 0:
            return
        try:
            item = inbox.get(timeout=remaining)
        except queue.Empty:
            return
        if item is not None:
            items.append(item)


def drained(inbox: queue.Queue) -> Iterator:
    """What waits on `inbox` now, without blocking (None, a stop signal, is skipped)."""
    while True:
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            return
        if item is not None:
            yield item
