"""The admin-set adapter state across replicas without Ray: the state file, the coordinator's long
poll and acknowledgements, and two real ServingCores (tiny base, real LoRA adapters) that share one
coordinator the way Engine replicas share the cluster's actor."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.core import ServingCore
from service.engine.desired import AdapterSpec, DesiredState
from service.fleet import Coordinator, StateStore, admin_source
from service.schemas import CompletionRequest, LoadAdapterRequest
from service.settings import load_settings
from tests.service_fixtures import make_adapter, service_args
from training.artifact.errors import ConfigError, Conflict, InvalidRequest, NotFound, PermissionDenied


def run(coro):
    return asyncio.run(coro)


def test_state_file_is_replaced_atomically_and_counts_generations(tmp_path):
    store = StateStore(str(tmp_path / "state.json"))
    assert store.read() == DesiredState()
    assert store.update(lambda s: None).generation == 1
    state = store.update(lambda s: s.adapters.update(a1=AdapterSpec(source="/x", pinned=True)))
    assert state.generation == 2 and StateStore(str(tmp_path / "state.json")).read() == state
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    (tmp_path / "state.json").write_text('{"generation": "many"}')
    with pytest.raises(ConfigError, match="malformed"):
        store.read()


def test_coordinator_long_poll_wakes_on_a_change_and_counts_acknowledgements(tmp_path):
    coord = Coordinator(str(tmp_path / "state.json"), replica_ttl_s=0.5)
    assert coord.sync("r1", 0, {}, 0.0) is None and coord.sync("r2", 0, {}, 0.0) is None
    woke: list[float] = []

    def follower() -> None:
        started = time.monotonic()
        state = coord.sync("r2", 0, {}, 5.0)
        woke.append(time.monotonic() - started if state and state.generation == 1 else -1)

    thread = threading.Thread(target=follower)
    thread.start()
    time.sleep(0.1)
    generation = coord.change("a1", {"source": "/a1", "removed": False})
    thread.join(5)
    assert generation == 1 and 0 <= woke[0] < 1.0
    coord.sync("r1", 1, {}, 0.0)
    coord.sync("r2", 1, {"a1": "disk full"}, 0.0)
    assert coord.await_applied(1, "a1", 0.2) == {"generation": 1, "applied": ["r1"], "pending": [],
                                                 "failed": {"r2": "disk full"}}
    coord.change("a1", {"pinned": True})
    coord.sync("r1", 2, {}, 0.0)
    assert coord.await_applied(2, "a1", 0.1)["pending"] == ["r2"]  # r2 is live but has not applied it
    time.sleep(0.6)  # r2 stops heartbeating: it expires; r1 heartbeats on
    coord.sync("r1", 2, {}, 0.0)
    assert coord.await_applied(2, "a1", 0.1) == {"generation": 2, "applied": ["r1"], "pending": [], "failed": {}}
    assert [r["replica"] for r in coord.view()["replicas"]] == ["r1"]


def test_admin_sources_stay_inside_the_local_roots_and_s3_prefixes(tmp_path):
    (tmp_path / "a").mkdir()
    roots = [tmp_path]
    assert admin_source("a", roots, []) == str(tmp_path / "a") and admin_source(None, roots, []) is None
    assert admin_source("s3://models/team/a1", roots, ["s3://models/team/"]) == "s3://models/team/a1"
    for bad, error in [("s3://models/other/a1", PermissionDenied), ("s3://models/teamX/a1", PermissionDenied),
                       ("s3://models/team/../x", InvalidRequest), ("s3://models", InvalidRequest),
                       ("/etc", PermissionDenied)]:
        with pytest.raises(error):
            admin_source(bad, roots, ["s3://models/team"])


# ---- two replicas (real engines) sharing one coordinator ---------------------------------------
def _core(settings, coordinator, name: str) -> ServingCore:
    core = ServingCore(settings, coordinator=coordinator, replica_id=name)
    core.start()
    return core


def _answers(core: ServingCore, model: str) -> bool:
    try:
        run(core.complete(CompletionRequest(model=model, prompt="Hi", max_tokens=2, temperature=0), None))
        return True
    except NotFound:
        return False


def _within(seconds: float, check) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def two_replicas(tiny_base_dir, service_artifacts, serve_keys, tmp_path):
    settings = load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0],
                                          fleet={"state_file": str(tmp_path / "state.json"), "sync_interval_s": 0.2,
                                                 "ack_timeout_s": 5}))
    coordinator = Coordinator(str(tmp_path / "state.json"), settings.fleet.replica_ttl_s)
    cores = [_core(settings, coordinator, "r1"), _core(settings, coordinator, "r2")]
    yield settings, coordinator, cores
    for core in cores:
        core.stop()


def test_admin_changes_reach_every_replica_and_survive_a_restart(two_replicas, tiny_base_dir, tmp_path):
    settings, coordinator, (r1, r2) = two_replicas
    extra = make_adapter(tiny_base_dir, tmp_path / "outside" / "fresh", "fresh", seed=9)
    assert not _answers(r2, "fresh")
    info = run(r1.load_adapter(LoadAdapterRequest(name="fresh", path=str(extra))))
    assert info.fleet.applied == ["r1", "r2"] and info.fleet.complete  # answered once both applied it
    assert _answers(r2, "fresh") and r2.registry.adapters["fresh"].path == extra.resolve()

    reply = run(r2.unload_adapter("a1"))  # a directory adapter, unloaded through the other replica
    assert reply["fleet"]["applied"] == ["r1", "r2"]
    assert not _answers(r1, "a1") and not _answers(r2, "a1")
    pinned = run(r1.pin_adapter("fresh", True))
    assert pinned.fleet.complete and r2.registry.adapters["fresh"].pinned
    with pytest.raises(Conflict, match="pinned"):
        run(r2.unload_adapter("fresh"))

    r2.stop()  # a restart: a new replica, a new coordinator over the same file (the cluster came back)
    again = _core(settings, Coordinator(str(tmp_path / "state.json"), 5.0), "r3")
    try:
        assert "a1" not in again.registry.catalog.adapters and not _answers(again, "a1")  # not the directory's state
        assert again.registry.adapters["fresh"].pinned and _answers(again, "fresh")
        listed = run(again.list_adapters())
        assert listed.fleet.generation == 3 and [r.replica for r in listed.fleet.replicas] == ["r3"]
    finally:
        again.stop()


def test_a_replica_that_has_not_applied_is_reported_pending(two_replicas):
    settings, coordinator, (r1, r2) = two_replicas
    coordinator.sync("silent", coordinator.state().generation, {}, 0.0)  # live, but never applies anything
    r1.fleet.settings = settings.fleet.model_copy(update={"ack_timeout_s": 0.5})
    reply = run(r1.unload_adapter("a2"))
    assert reply["fleet"]["pending"] == ["silent"] and reply["fleet"]["applied"] == ["r1", "r2"]
    _within(5, lambda: not _answers(r2, "a2"))
    with pytest.raises(NotFound):
        run(r1.unload_adapter("never-heard-of"))


def test_rest_answers_200_when_every_replica_applied_and_202_otherwise(two_replicas, serve_keys):
    from fastapi.testclient import TestClient

    from service.auth import Authenticator
    from service.http import create_app

    settings, coordinator, (r1, r2) = two_replicas
    r1.fleet.settings = settings.fleet.model_copy(update={"ack_timeout_s": 0.5})
    headers = {"Authorization": f"Bearer {serve_keys[1]['admin']}"}
    with TestClient(create_app(r1, Authenticator.from_settings(settings), settings)) as http:
        done = http.post("/v1/admin/adapters/a3/pin", json={"pinned": True}, headers=headers)
        assert done.status_code == 200 and done.json()["fleet"]["applied"] == ["r1", "r2"]
        coordinator.sync("silent", coordinator.state().generation, {}, 0.0)
        partial = http.delete("/v1/admin/adapters/a3", params={"force": True}, headers=headers)
        assert partial.status_code == 202 and partial.json()["fleet"]["pending"] == ["silent"]
        listed = http.get("/v1/admin/adapters", headers=headers).json()
        assert "a3" not in [a["name"] for a in listed["data"]]
        assert {r["replica"]: r["applied"] for r in listed["fleet"]["replicas"]}["silent"] < listed["fleet"]["generation"]
