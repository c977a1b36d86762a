"""The audit log: one JSON line per request and per admin action, rotated by size, written by a
background thread so the event loop never waits for the disk.

    audit = AuditLog(Path("audit.jsonl"), max_bytes=50 << 20, backups=10)
    audit.record(transport="http", route="/v1/completions", key_id="3fa2c1", adapter="a1",
                 status=200, prompt_tokens=12, completion_tokens=16, latency_s=0.21, client="10.0.0.7")
    audit.flush()     # wait until queued lines are written (tests, shutdown); audit.close() also stops

A line: `{"time", "transport", "route", "method", "key_id", "adapter", "status", "prompt_tokens",
"completion_tokens", "latency_ms", "client", "admin", "reason", "replica"}`, plus `detail` when the call
has one (a rollout promotion's gate decision with its numbers). Never the key: only its id
(the part of `tsk_<id>_<secret>` before the secret, or null when authentication failed).
Admin routes are marked `"admin": true` and always logged. Without a path the lines go to the
`tuneserve.audit` logger (the replica log).

Junk traffic stays cheap and cannot rotate the history away: text fields are cut to
`MAX_FIELD` characters; failed calls without a valid key get individual lines only within a
`FailureBudget` (per address and in total, per window), the rest become one summary line per
(transport, status, reason) and window with `count` and `clients`; lines wait in a bounded queue
(`queue_size`) and are dropped, counted in `tuneserve_audit_lines_dropped_total`, when the
writer falls behind. The writer thread starts with the first line and ends when idle.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import socket
import threading
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from service.security import metrics

FIELDS = ("transport", "route", "method", "key_id", "adapter", "status", "prompt_tokens", "completion_tokens",
          "latency_ms", "client", "admin", "reason")
MAX_FIELD = 128
MAX_CLIENTS = 10_000  # addresses a budget window remembers; more are summarised at once
IDLE_S = 0.5          # the writer thread ends after this long without lines
_LOGS: "weakref.WeakSet[AuditLog]" = weakref.WeakSet()


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        return f"{value[:MAX_FIELD]}…(+{len(value) - MAX_FIELD})"
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class FailureBudget:
    """Which failed calls without a valid key get a line of their own: `per_client` per address
    and `total` in all per `window_s`; the others are counted into summaries, released by `due()`
    once their window ended (or at once with `force`)."""

    def __init__(self, per_client: int = 20, total: int = 120, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_client, self.total, self.window_s, self.clock = per_client, total, window_s, clock
        self.lock = threading.Lock()
        self.started = clock()
        self.used: dict[str, int] = {}
        self.used_total = 0
        self.suppressed: dict[tuple, list] = {}  # (transport, status, reason) -> [count, clients]
        self.pending: list[dict[str, Any]] = []

    def _roll(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.started < self.window_s:
            return
        for (transport, status, reason), (count, clients) in self.suppressed.items():
            self.pending.append({"transport": transport, "route": "*", "status": status, "reason": reason,
                                 "client": "*", "count": count, "clients": len(clients),
                                 "window_s": round(now - self.started, 3)})
        self.started, self.used, self.used_total, self.suppressed = now, {}, 0, {}

    def admit(self, line: dict[str, Any]) -> bool:
        client = str(line.get("client"))
        with self.lock:
            self._roll()
            used = self.used.get(client, 0)
            if self.used_total < self.total and used < self.per_client and (used or len(self.used) < MAX_CLIENTS):
                self.used[client] = used + 1
                self.used_total += 1
                return True
            entry = self.suppressed.setdefault((line.get("transport"), line.get("status"), line.get("reason")),
                                               [0, set()])
            entry[0] += 1
            if len(entry[1]) < MAX_CLIENTS:
                entry[1].add(client)
            return False

    def due(self, force: bool = False) -> list[dict[str, Any]]:
        with self.lock:
            self._roll(force)
            out, self.pending = self.pending, []
            return out

    @property
    def holding(self) -> bool:
        return bool(self.suppressed)


class AuditLog:
    def __init__(self, path: Path | None = None, max_bytes: int = 50 * 1024 * 1024, backups: int = 10,
                 queue_size: int = 10_000, budget: FailureBudget | None = None) -> None:
        self.path = path
        self.logger = logging.getLogger("tuneserve.audit")
        self.handler: logging.Handler | None = None
        self.replica = f"{socket.gethostname()}:{os.getpid()}"  # which process answered
        self.budget = budget or FailureBudget()
        self.queue: queue.Queue[str | None] = queue.Queue(maxsize=queue_size)
        self.lock = threading.Lock()
        self.writer: threading.Thread | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                                encoding="utf-8")
        _LOGS.add(self)

    def line(self, *, latency_s: float | None = None, **fields: Any) -> dict[str, Any]:
        line = {"time": _now(), **{name: _bounded(fields.get(name)) for name in FIELDS}}
        if latency_s is not None:
            line["latency_ms"] = round(latency_s * 1000, 3)
        line["admin"] = bool(fields.get("admin"))
        line["replica"] = self.replica
        if fields.get("detail") is not None:
            line["detail"] = fields["detail"]
        return line

    def record(self, *, latency_s: float | None = None, **fields: Any) -> dict[str, Any]:
        """Queue the call's line (never blocks); a keyless failure past the budget only counts."""
        line = self.line(latency_s=latency_s, **fields)
        unauthenticated = line["key_id"] is None and isinstance(line["status"], int) and line["status"] >= 400
        if not unauthenticated or self.budget.admit(line):
            self._put(line)
        self._put_summaries()
        return line

    def _put_summaries(self, force: bool = False) -> None:
        for summary in self.budget.due(force):
            self._put({**self.line(**summary), "count": summary["count"], "clients": summary["clients"],
                       "window_s": summary["window_s"]})

    def _put(self, line: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(json.dumps(line, separators=(",", ":")))
        except queue.Full:
            metrics.AUDIT_DROPPED.inc()
            return
        with self.lock:
            if self.writer is None:
                self.writer = threading.Thread(target=self._write, name="tuneserve-audit", daemon=True)
                self.writer.start()

    def _write(self) -> None:
        while True:
            try:
                text = self.queue.get(timeout=IDLE_S)
            except queue.Empty:
                self._put_summaries()
                with self.lock:
                    if self.queue.empty() and not self.budget.holding:
                        self.writer = None
                        return
                continue
            if text is None:  # close()
                self.queue.task_done()
                return
            try:
                self._emit(text)
            except Exception:  # noqa: BLE001 - a failing disk must not kill the writer
                logging.getLogger("tuneserve.security").exception("cannot write an audit line")
            finally:
                self.queue.task_done()

    def _emit(self, text: str) -> None:
        if self.handler is None:
            self.logger.info(text)
        else:
            self.handler.emit(logging.LogRecord("tuneserve.audit", logging.INFO, __file__, 0, text, None, None))

    def flush(self, timeout_s: float = 10.0) -> None:
        """Write the pending summaries and wait until every queued line is written."""
        self._put_summaries(force=True)
        deadline = time.monotonic() + timeout_s
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.002)

    def close(self) -> None:
        """Flush, stop the writer thread and close the file."""
        self.flush()
        with self.lock:
            writer, self.writer = self.writer, None
            if writer is not None:
                self.queue.put(None, timeout=IDLE_S)
        if writer is not None:
            writer.join(IDLE_S * 4)
        if self.handler is not None:
            self.handler.close()


def flush_audit_logs() -> None:
    """Flush every audit log of this process (at exit, and for tests that read the files)."""
    for log in list(_LOGS):
        log.flush()


atexit.register(flush_audit_logs)
