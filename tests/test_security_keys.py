"""The keys file under concurrent edits and reloads: `tuneserve keys` edits hold a lock (no lost
update, a revocation included), revoked keys cannot be rotated, services reload on any change of
(mtime_ns, inode, size), and a malformed file's path is never shown to clients."""

from __future__ import annotations

import os
import threading
import time

import pytest

from service import keys as keys_module
from service.auth import Authenticator
from service.keys import add_key, create_key, read_keys, write_keys
from training.artifact.errors import Conflict, Unauthenticated, Unavailable


def slow_writes(monkeypatch, delay_s: float = 0.2) -> None:
    """Widen the read-modify-write window: every write of the keys file waits first."""
    real = keys_module.write_keys

    def slow(path, records):
        time.sleep(delay_s)
        real(path, records)

    monkeypatch.setattr(keys_module, "write_keys", slow)


def run_together(*actions) -> None:
    threads = [threading.Thread(target=action) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_key_edits_lose_no_update(tmp_path, monkeypatch):
    from tuneserve.commands.keys import revoke

    path = tmp_path / "keys.json"
    plain, victim = create_key("victim")
    add_key(path, victim)
    slow_writes(monkeypatch)
    _, first = create_key("first")
    _, second = create_key("second")
    run_together(lambda: add_key(path, first), lambda: add_key(path, second),
                 lambda: revoke(victim.id, keys_file=path))
    records = {r.id: r for r in read_keys(path)}
    assert set(records) == {victim.id, first.id, second.id}
    assert records[victim.id].revoked, "a concurrent edit undid the revocation"
    with pytest.raises(Unauthenticated, match="revoked"):
        Authenticator(keys_file=path).authenticate(plain)


def test_rotating_a_revoked_key_is_refused(tmp_path):
    from tuneserve.commands.keys import rotate

    path = tmp_path / "keys.json"
    _, record = create_key("mallory")
    record.revoked = True
    add_key(path, record)
    with pytest.raises(Conflict, match="revoked"):
        rotate(record.id, grace_hours=0.0, keys_file=path)
    assert [r.id for r in read_keys(path)] == [record.id]  # no new key was issued


def test_keys_file_reloads_when_replaced_with_the_same_mtime(tmp_path):
    path = tmp_path / "keys.json"
    plain, record = create_key("alice")
    add_key(path, record)
    auth = Authenticator(keys_file=path)
    assert auth.authenticate(plain).key_id == record.id
    stamp = path.stat().st_mtime_ns
    record.revoked = True
    write_keys(path, [record])  # a new inode (atomic replace), the same size class
    os.utime(path, ns=(stamp, stamp))  # coarse-mtime filesystems: the change keeps the old mtime
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.authenticate(plain)


def test_malformed_keys_file_hides_its_path_from_clients(tmp_path, caplog):
    path = tmp_path / "secret-dir" / "keys.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(Unavailable) as info:
        Authenticator(keys_file=path).authenticate("tsk_abc_def")
    shown = f"{info.value.message} {info.value.hint}"
    assert "secret-dir" not in shown and str(path) not in shown
    assert str(path) in caplog.text  # the operator finds it in the server log
