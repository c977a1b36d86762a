"""The audit log: one JSON line per request and per admin action, rotated by size.

    audit = AuditLog(Path("audit.jsonl"), max_bytes=50 << 20, backups=10)
    audit.record(transport="http", route="/v1/completions", key_id="3fa2c1", adapter="a1",
                 status=200, prompt_tokens=12, completion_tokens=16, latency_s=0.21, client="10.0.0.7")

A line: `{"time", "transport", "route", "method", "key_id", "adapter", "status", "prompt_tokens",
"completion_tokens", "latency_ms", "client", "admin", "reason", "replica"}`. Never the key: only its id
(the part of `tsk_<id>_<secret>` before the secret, or `-` when authentication failed).
Admin routes are marked `"admin": true` and always logged. Without a path the lines go to the
`tuneserve.audit` logger (the replica log).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FIELDS = ("transport", "route", "method", "key_id", "adapter", "status", "prompt_tokens", "completion_tokens",
          "latency_ms", "client", "admin", "reason")


class AuditLog:
    def __init__(self, path: Path | None = None, max_bytes: int = 50 * 1024 * 1024, backups: int = 10) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.logger = logging.getLogger("tuneserve.audit")
        self.handler: logging.Handler | None = None
        self.replica = f"{socket.gethostname()}:{os.getpid()}"  # which process answered
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                                encoding="utf-8")

    def record(self, *, latency_s: float | None = None, **fields: Any) -> dict[str, Any]:
        line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        for name in FIELDS:
            line[name] = fields.get(name)
        if latency_s is not None:
            line["latency_ms"] = round(latency_s * 1000, 3)
        line["admin"] = bool(fields.get("admin"))
        line["replica"] = self.replica
        text = json.dumps(line, separators=(",", ":"))
        if self.handler is None:
            self.logger.info(text)
        else:
            record = logging.LogRecord("tuneserve.audit", logging.INFO, __file__, 0, text, None, None)
            with self.lock:
                self.handler.emit(record)
        return line

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()
