"""The load tooling: shapes and the summary (unit), and `loadtests/run.sh` end to end against a
the session's served tiny-base app with REST and gRPC users on two adapters (integration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.shapes import shape_tick
from loadtests.summary import summarize

ROOT = Path(__file__).resolve().parents[1]


def test_soak_holds_the_users_until_the_end():
    tick = shape_tick("soak", users=8, duration_s=60)
    assert tick(0.0)[0] == tick(59.9)[0] == 8
    assert tick(60.0) is None


def test_burst_steps_up_and_back_down():
    tick = shape_tick("burst", users=16, duration_s=200, period_s=20)
    assert [tick(t)[0] for t in (0, 19, 20, 29, 30, 49, 50)] == [4, 4, 16, 16, 4, 4, 16]
    assert shape_tick("burst", users=2, duration_s=10)(0)[0] == 1
    with pytest.raises(ValueError, match="soak, burst"):
        shape_tick("ramp", users=1, duration_s=1)


def test_summary_counts_designed_refusals_apart_from_failures(tmp_path):
    header = "Type,Name,Request Count,Failure Count,Median Response Time,95%,Requests/s\n"
    (tmp_path / "load_stats.csv").write_text(
        header + "POST,completions,90,2,40,90,3.0\nPOST,completions [429],10,0,2,3,0.3\n"
        "grpc,Generate,50,0,30,60,1.5\nSSE,TTFT,7,0,10,20,0.2\n,Aggregated,157,2,30,80,5.0\n")
    (tmp_path / "load_failures.csv").write_text("Method,Name,Error,Occurrences\nPOST,completions,HTTP 503,2\n")
    summary = summarize(tmp_path / "load")
    assert (summary["requests"], summary["failures"], summary["rate_limited"]) == (150, 2, 10)
    assert summary["failed_pct"] == pytest.approx(1.333, abs=1e-3)
    assert summary["failure_kinds"] == [{"name": "POST completions", "error": "HTTP 503", "count": 2}]


@pytest.mark.integration
def test_run_sh_drives_rest_and_grpc_users_without_failures(served_app, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "RESULTS": str(tmp_path / "results"),
           "TUNESERVE_GRPC": served_app["grpc"], "TUNESERVE_MODELS": "a1,a2",
           "TUNESERVE_API_KEY": served_app["keys"]["infer"], "TUNESERVE_MAX_TOKENS": "8"}
    done = subprocess.run([str(ROOT / "loadtests" / "run.sh"), served_app["url"], "4", "10s", "soak"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tmp_path / "results"
    assert (results / "load.html").stat().st_size > 0
    summary = summarize(results / "load")
    assert json.loads(done.stdout) == summary
    assert summary["failures"] == 0 and summary["requests"] > 0
    kinds = {name.split(" ")[0] for name in summary["entries"]}
    assert {"POST", "grpc"} <= kinds, summary["entries"]
