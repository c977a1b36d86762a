"""R9 on the real Ray Serve app: two Engine replicas follow the admin-set adapter state.

    flock /tmp/tuneserve-heavy.lock python -m pytest tests/test_fleet_integration.py   # ~2-3 min on 2 cores
"""

from __future__ import annotations

import pytest

from tests.fleet_support import r9_scenario, start_two_replicas
from tests.service_fixtures import make_adapter, service_args

pytestmark = pytest.mark.integration
GOAL_S = 5.0


def test_two_engine_replicas_load_unload_and_restart_with_the_admin_set_state(tiny_base_dir, service_artifacts,
                                                                              serve_keys, tmp_path, monkeypatch):
    from service.launcher import stop
    from tests.service_fixtures import free_port

    monkeypatch.setenv("RAY_TMPDIR", "/tmp/ts-ray-fleet")
    fresh = make_adapter(tiny_base_dir, tmp_path / "outside" / "fresh", "fresh", seed=11)
    server = start_two_replicas(tmp_path, service_args(tiny_base_dir, service_artifacts, serve_keys[0],
                                                       port=free_port(), grpc_port=None))
    try:
        out = r9_scenario(server.url, serve_keys[1], fresh)
    finally:
        stop()
    for reply in ("load_reply", "unload_reply"):  # answered once both replicas applied it
        assert out[reply]["status"] == 200 and len(out[reply]["fleet"]["applied"]) == 2, out[reply]
    assert out["load_s"] < GOAL_S and out["unload_s"] < GOAL_S, out
    # the replacement starts from the saved state: a1 stays unloaded although its directory is there
    assert out["after_restart"] == {"a1": [404], "fresh": [200]}, out
    assert out["killed"] not in [r["replica"] for r in out["replicas"]]
