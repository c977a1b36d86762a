"""The audit log under junk traffic (issue 16): text fields are cut, keyless failures beyond a
per-address and global budget become summary lines, and lines are written off the event loop
(dropped and counted when the writer falls behind), so floods neither erase the history nor stall."""

from __future__ import annotations

import json

from tests.security_support import bearer, http_app


def audit_files(tmp_path):
    return [json.loads(line) for f in sorted(tmp_path.glob("audit.jsonl*")) for line in f.read_text().splitlines()]


def test_keyless_floods_are_aggregated_and_keep_the_audit_history(tmp_path):
    from service.security.audit import AuditLog

    audit = AuditLog(tmp_path / "audit.jsonl", max_bytes=16384, backups=1)
    audit.record(transport="http", route="/v1/admin/adapters", key_id="k1", status=200, admin=True, client="10.0.0.1")
    for i in range(500):
        audit.record(transport="grpc", route="/tuneserve.v1.Inference/Generate", key_id=None, status=401,
                     reason="missing", client="6.6.6.6", adapter="m" * 4000)
    audit.close()
    lines = audit_files(tmp_path)
    assert lines[0]["key_id"] == "k1" and lines[0]["admin"], "the flood rotated away the admin action"
    single = [line for line in lines if line["client"] == "6.6.6.6"]
    summary = [line for line in lines if line.get("count")]
    assert 0 < len(single) <= 20 and len(summary) == 1
    assert summary[0]["count"] + len(single) == 500 and summary[0]["reason"] == "missing"
    assert summary[0]["clients"] == 1 and summary[0]["status"] == 401
    assert all(len(line["adapter"] or "") <= 160 for line in lines)  # names are truncated


def test_the_failure_budget_is_per_address_and_global():
    from service.security.audit import FailureBudget

    clock = [0.0]
    budget = FailureBudget(per_client=2, total=5, window_s=60, clock=lambda: clock[0])
    line = {"transport": "http", "status": 401, "reason": "invalid"}
    assert [budget.admit({**line, "client": "a"}) for _ in range(3)] == [True, True, False]
    assert [budget.admit({**line, "client": c}) for c in "bcd"] == [True, True, True]
    assert not budget.admit({**line, "client": "e"})           # the global budget is spent
    assert budget.due() == []                                  # the window is still open
    clock[0] = 61
    (summary,) = budget.due()
    assert (summary["count"], summary["clients"], summary["reason"]) == (2, 2, "invalid")
    assert budget.admit({**line, "client": "a"})               # a new window


def test_audit_lines_are_written_off_the_event_loop_and_dropped_when_the_writer_lags(tmp_path):
    import threading
    import time

    from service.security import metrics
    from service.security.audit import AuditLog

    audit = AuditLog(tmp_path / "audit.jsonl", queue_size=5)
    release = threading.Event()
    real_emit = audit.handler.emit
    audit.handler.emit = lambda record: (release.wait(5), real_emit(record))
    before = metrics.AUDIT_DROPPED._value.get()
    started = time.perf_counter()
    for _ in range(20):
        audit.record(transport="http", route="/v1/models", key_id="k1", status=200, client="1.2.3.4")
    assert time.perf_counter() - started < 0.5           # the caller never waits for the disk
    assert metrics.AUDIT_DROPPED._value.get() - before >= 14
    writer = audit.writer
    assert writer is not None and writer is not threading.current_thread()
    release.set()
    audit.close()
    assert 1 <= len(audit_files(tmp_path)) <= 6
    assert not writer.is_alive() and audit.writer is None  # close() stops the writer thread



def test_keyless_404_floods_over_http_stay_small_in_the_audit_log(tmp_path):
    from service.security.audit import flush_audit_logs

    client_from, keys = http_app(tmp_path, audit_log=str(tmp_path / "audit.jsonl"), block_after_failures=1000)
    junk = client_from("203.0.113.50")
    for i in range(300):
        assert junk.get(f"/{i}/" + "x" * 2000).status_code == 404
    assert client_from("192.0.2.1").get("/v1/models", headers=bearer(keys["good"])).status_code == 200
    flush_audit_logs()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len(lines) <= 22 and max(len(line["route"]) for line in lines) < 160
    assert sum(line.get("count", 1) for line in lines if line["status"] == 404) == 300
    assert lines[-2]["key_id"] == keys["good"].split("_")[1] and lines[-1]["count"] == 280  # the summary last
