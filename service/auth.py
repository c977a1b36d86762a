"""API-key authentication and authorization for every transport.

    auth = Authenticator.from_settings(settings)
    principal = auth.authenticate(token)                  # raises Unauthenticated
    auth.authorize(principal, "infer", adapter="support-v2")   # raises PermissionDenied

Keys come from the keys file (`service.keys`, hashed, re-read when it changes) and/or an
environment variable with comma-separated plain keys (scopes infer+admin+metrics, all
adapters). Nothing is hard-coded; comparisons are constant-time (`hmac.compare_digest`).
With no key source configured every request is refused, unless auth is explicitly disabled.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path

from training.artifact.errors import ConfigError, PermissionDenied, Unauthenticated, Unavailable

from service.keys import KeyRecord, key_id_of, read_keys, rehash_like

ALL_SCOPES = ("infer", "admin", "metrics")
log = logging.getLogger("tuneserve.auth")


@dataclass(frozen=True)
class Principal:
    key_id: str
    owner: str
    scopes: tuple[str, ...] = ALL_SCOPES
    adapters: tuple[str, ...] = ("*",)
    requests_per_min: int | None = None  # None: the service default (service.security)
    tokens_per_min: int | None = None

    def may_use(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.adapters)


ANONYMOUS = Principal("anonymous", "anonymous")


@dataclass
class Authenticator:
    keys_file: Path | None = None
    env_keys: list[str] = field(default_factory=list)
    enabled: bool = True
    _records: dict[str, KeyRecord] = field(default_factory=dict)
    _stamp: tuple[int, int, int] | None = None  # (st_mtime_ns, st_ino, st_size) of the file last read
    _broken: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings) -> "Authenticator":
        env = os.environ.get(settings.api_keys_env or "", "") if settings.api_keys_env else ""
        keys = [k.strip() for k in env.split(",") if k.strip()]
        return cls(keys_file=settings.keys_file, env_keys=keys, enabled=settings.auth_enabled)

    def _reload(self) -> None:
        """Re-read the file when its (mtime_ns, inode, size) changed: an atomic replace within the
        mtime granularity still changes the inode. A malformed file refuses every file key (503)
        without showing its path to the client; the server log names it."""
        if self.keys_file is None:
            return
        try:
            info = self.keys_file.stat()
            stamp = (info.st_mtime_ns, info.st_ino, info.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._records = {r.id: r for r in read_keys(self.keys_file)} if stamp else {}
                    self._broken = False
                except ConfigError as exc:
                    self._records, self._broken = {}, True
                    log.error("cannot use the keys file: %s (%s)", exc.message, exc.hint)
        if self._broken:
            raise Unavailable("the server cannot read its API keys",
                              "retry later; an operator must fix the keys file (the server log names it)")

    def slow_check(self, token: str | None) -> bool:
        """True when checking `token` means a scrypt hash (~50 ms of CPU): callers on an event loop
        run `authenticate` in a worker thread then (SecurityGuard does)."""
        if not self.enabled or not token or self.keys_file is None:
            return False
        self._reload()
        record = self._records.get(key_id_of(token) or "")
        return record is not None and record.hash.startswith("scrypt:")

    def authenticate(self, token: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise Unauthenticated("no API key given",
                                  "send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')")
        for index, plain in enumerate(self.env_keys):
            if hmac.compare_digest(token.encode(), plain.encode()):
                return Principal(f"env-{index}", "env")
        self._reload()
        record = self._records.get(key_id_of(token) or "")
        if record is None or not hmac.compare_digest(rehash_like(token, record), record.hash):
            raise Unauthenticated("invalid API key", "check the key; ask an admin for a new one")
        if record.revoked:
            raise Unauthenticated(f"API key {record.id} was revoked", "ask an admin for a new key")
        expires = record.expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=timezone.utc)  # naive times in a keys file mean UTC
        if expires is not None and expires <= datetime.now(timezone.utc):
            raise Unauthenticated(f"API key {record.id} expired at {record.expires_at.isoformat()}",
                                  "ask an admin for a new key")
        return Principal(record.id, record.owner, tuple(record.scopes), tuple(record.adapters),
                         record.requests_per_min, record.tokens_per_min)

    @staticmethod
    def authorize(principal: Principal, scope: str, adapter: str | None = None) -> None:
        if scope not in principal.scopes:
            raise PermissionDenied(f"API key {principal.key_id} lacks the {scope!r} scope",
                                   f"use a key with scope {scope}")
        if adapter is not None and not principal.may_use(adapter):
            raise PermissionDenied(f"API key {principal.key_id} may not use model {adapter!r}",
                                   "use a key whose adapter patterns include this model")


def bearer_token(authorization: str | None, api_key_header: str | None = None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return api_key_header or None
