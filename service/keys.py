"""API keys: creation, hashing, and the keys file (JSON list of records).

    plain, record = create_key("alice", scopes=["infer"], adapters=["support-*"], expires_in_days=30)
    add_key(Path("keys.json"), record)     # the plain key is shown once and never stored
    with editing_keys(Path("keys.json")) as records:   # read-modify-write under an exclusive lock
        records[0].revoked = True

A record: `{id, owner, salt, hash, scopes, adapters, expires_at, revoked, created_at,
requests_per_min, tokens_per_min}` (limits: `create_key(..., requests_per_min=60)`);
`hash` is `sha256:<hex>` (default: keys are 256-bit random, so a fast hash is enough) or
`scrypt:<hex>` of salt + key. Plain keys look like `tsk_<id>_<secret>`, so a lookup hashes
once instead of trying every record. Every edit holds an exclusive `flock` on a sidecar
`.<name>.lock` file (the keys file itself is replaced on each write), so two `tuneserve keys`
runs at once cannot lose an update.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from training.artifact.errors import ConfigError

Scope = Literal["infer", "admin", "metrics"]
KEY_PREFIX = "tsk_"
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


class KeyRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    owner: str
    salt: str
    hash: str
    scopes: list[Scope] = Field(default_factory=lambda: ["infer"])
    adapters: list[str] = Field(default_factory=lambda: ["*"])
    expires_at: datetime | None = None
    revoked: bool = False
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    requests_per_min: int | None = Field(None, ge=1, description="rate limit (null: the service default)")
    tokens_per_min: int | None = Field(None, ge=1, description="prompt+completion tokens/min (null: the service default)")


def hash_key(plain: str, salt: str, algorithm: str = "sha256") -> str:
    data = (salt + plain).encode()
    if algorithm == "scrypt":
        return "scrypt:" + hashlib.scrypt(data, salt=salt.encode(), **SCRYPT).hex()
    if algorithm == "sha256":
        return "sha256:" + hashlib.sha256(data).hexdigest()
    raise ConfigError(f"unknown key hash algorithm {algorithm!r}", "use sha256 or scrypt")


def rehash_like(plain: str, record: KeyRecord) -> str:
    return hash_key(plain, record.salt, record.hash.split(":", 1)[0])


def key_id_of(plain: str) -> str | None:
    if not plain.startswith(KEY_PREFIX):
        return None
    parts = plain[len(KEY_PREFIX):].split("_", 1)
    return parts[0] if len(parts) == 2 else None


def create_key(owner: str, scopes: list[str] = ("infer",), adapters: list[str] = ("*",),
               expires_in_days: float | None = None, algorithm: str = "sha256",
               **limits: int | None) -> tuple[str, KeyRecord]:
    key_id = secrets.token_hex(6)
    plain = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_hex(16)
    expires = datetime.now(timezone.utc) + timedelta(days=expires_in_days) if expires_in_days else None
    record = KeyRecord(id=key_id, owner=owner, salt=salt, hash=hash_key(plain, salt, algorithm),
                       scopes=list(scopes), adapters=list(adapters), expires_at=expires, **limits)
    return plain, record


def read_keys(path: Path) -> list[KeyRecord]:
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8") or "[]")
        return [KeyRecord.model_validate(item) for item in raw]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"keys file {path} is malformed ({exc})",
                          "it must be a JSON list of key records; recreate it with `tuneserve keys`") from None


def write_keys(path: Path, records: list[KeyRecord]) -> None:
    """Write atomically with owner-only permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    data = json.dumps([r.model_dump(mode="json") for r in records], indent=2)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(data)
    os.replace(tmp, path)


@contextmanager
def editing_keys(path: Path) -> Iterator[list[KeyRecord]]:
    """The records, written back when the block ends without error; other edits wait meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        records = read_keys(path)
        yield records
        write_keys(path, records)
    finally:
        os.close(fd)  # releases the lock


def add_key(path: Path, record: KeyRecord) -> None:
    with editing_keys(path) as records:
        records.append(record)
