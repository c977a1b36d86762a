"""Rollout units without a model: alias resolution, canary weights and stickiness, the shadow runner's
isolation, the promotion gate with an injected quality source, and the alias state's persistence.

    pytest tests/test_rollout.py
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from types import SimpleNamespace

import pytest

from service.auth import Principal
from service.engine.desired import AliasSpec, DesiredState
from service.fleet import Coordinator, StateStore
from service.rollout import OnlineQuality, Rollouts, RolloutSettings, bucket, decide, pick
from service.rollout_schemas import RolloutRequest, VersionNumbers
from service.shadow import ShadowRunner, agreement
from training.artifact.errors import Conflict, NotFound, PermissionDenied


class FakeFleet:
    """The FleetMember surface Rollouts uses, over a real in-memory coordinator."""

    def __init__(self, coordinator: Coordinator | None = None, replica: str = "here") -> None:
        self.coordinator = coordinator or Coordinator(None)
        self.replica = replica
        self.aliases = dict(self.coordinator.state().aliases)
        self.tallies = None

    def heartbeat(self) -> None:  # what FleetMember._follow does each sync interval
        self.coordinator.sync(self.replica, 0, {}, 0.0)
        self.coordinator.report_tallies(self.replica, self.tallies())
        self.aliases = dict(self.coordinator.state().aliases)

    def peer_tallies(self):
        return self.coordinator.tallies(self.replica)

    def set_alias(self, name, spec, expect):
        data = None if spec is None else spec.model_dump(exclude={"generation"})
        generation = self.coordinator.set_alias(name, data, expect)
        self.aliases = dict(self.coordinator.state().aliases)
        return {"generation": generation, "applied": ["here"], "pending": [], "failed": {}}


class Quality:
    def __init__(self, **values: tuple[float, int]) -> None:
        self.values = values

    def online_quality(self, model_id: str) -> OnlineQuality:
        value, n = self.values.get(model_id.replace("-", "_"), (None, 0))
        return OnlineQuality("accuracy", value, n)


def rollouts(quality=None, **settings) -> Rollouts:
    return Rollouts(RolloutSettings(**settings), FakeFleet(), lambda name: name in {"v1", "v2", "v3", "base-model"},
                    quality)


def key(i: int) -> Principal:
    return Principal(f"key{i}", "t", ("infer",), ("bot",))


def test_weights_split_callers_within_tolerance_and_each_caller_sticks():
    spec = AliasSpec(stable="v1", candidate="v2", weight=0.1)
    rng = random.Random(0)
    picks = [pick("bot", spec, f"key{i}", rng) for i in range(5000)]
    share = picks.count("v2") / len(picks)
    assert 0.085 < share < 0.115  # 10 % within 1.5 points over 5000 callers
    assert all(pick("bot", spec, f"key{i}", rng) == picks[i] for i in range(200))  # the same caller, the same version
    wider = spec.model_copy(update={"weight": 0.3})  # raising the weight only moves callers to the candidate
    assert all(pick("bot", wider, f"key{i}", rng) == "v2" for i in range(5000) if picks[i] == "v2")
    half = AliasSpec(stable="v1", candidate="v2", weight=0.5)
    unsticky = [pick("bot", half, None, rng) for _ in range(2000)]
    assert 0.45 < unsticky.count("v2") / 2000 < 0.55
    assert bucket("bot", "key1") != bucket("other", "key1")  # per alias: one caller is not always the canary


def test_an_alias_resolves_once_and_a_key_allowed_the_alias_may_use_its_versions():
    r = rollouts()
    r.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", weight=0.5))
    seen = {}
    for i in range(200):
        route = r.route("bot", key(i), None)
        assert route.principal.may_use(route.version) and not key(i).may_use(route.version)
        seen.setdefault(route.version, 0)
        seen[route.version] += 1
        assert r.route("bot", key(i), None).version == route.version  # sticky per key
    assert set(seen) == {"v1", "v2"} and 60 < seen["v2"] < 140
    assert r.route("v1", key(0), None) is None  # a version is not an alias
    with pytest.raises(PermissionDenied):
        r.route("bot", Principal("k", "t", ("infer",), ("other-*",)), None)
    by_user = r.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", weight=0.5,
                                     sticky="user"))
    assert by_user.aliases[0].sticky == "user"
    versions = {r.route("bot", key(0), f"user{i}").version for i in range(50)}
    assert versions == {"v1", "v2"}  # the same key, different end users
    assert len({r.route("bot", key(i), "user7").version for i in range(50)}) == 1


def test_set_checks_names_versions_and_concurrent_changes():
    r = rollouts()
    with pytest.raises(NotFound, match="neither loaded"):
        r.admin(RolloutRequest(action="set", alias="bot", stable="nope"))
    with pytest.raises(Conflict, match="already a model"):
        r.admin(RolloutRequest(action="set", alias="v1", stable="v2"))
    with pytest.raises(Conflict, match="candidate is the stable"):
        r.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v1"))
    with pytest.raises(PermissionDenied):
        r.admin(RolloutRequest(action="set", alias="bot", stable="v1"), Principal("k", "t", ("admin",), ("bot",)))
    r.admin(RolloutRequest(action="set", alias="bot", stable="v1"))
    with pytest.raises(Conflict, match="another admin"):
        r.fleet.set_alias("bot", AliasSpec(stable="v2"), expect=-1)  # written meanwhile by someone else
    with pytest.raises(NotFound):
        r.admin(RolloutRequest(action="promote", alias="ghost"))


def _serve(r: Rollouts, n: int, version_latency: dict[str, float], fail: set[str] = frozenset()) -> None:
    for i in range(n):
        route = r.route("bot", key(i), None)

        async def call(v=route.version):
            if v in fail:
                raise RuntimeError("boom")
            return {"choices": [{"text": "ok"}]}

        try:
            asyncio.run(r.serve(route, call))
        except RuntimeError:
            pass
        # the latency the counters keep is measured; make it differ by version without sleeping
        r.stats[route.version].live.latencies[-1] = version_latency[route.version]


def test_promotion_gate_refuses_worse_quality_missing_feedback_errors_and_latency():
    settings = dict(min_requests=10, min_feedback=5)
    better = rollouts(Quality(v1=(0.80, 50), v2=(0.85, 50)), **settings)
    better.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", weight=0.5))
    _serve(better, 200, {"v1": 0.1, "v2": 0.11})
    reply = better.admin(RolloutRequest(action="promote", alias="bot"))
    assert reply.decision.allowed and reply.aliases[0].stable == "v2" and reply.aliases[0].previous == "v1"
    assert reply.decision.candidate.requests > 50 and reply.decision.candidate.quality == 0.85

    worse = rollouts(Quality(v1=(0.80, 50), v2=(0.70, 50)), **settings)
    worse.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", weight=0.5))
    _serve(worse, 200, {"v1": 0.1, "v2": 0.1})
    refused = worse.admin(RolloutRequest(action="promote", alias="bot"))
    assert not refused.decision.allowed and "below the stable's 0.8000" in refused.decision.reasons[0]
    assert refused.aliases[0].stable == "v1" and refused.aliases[0].candidate == "v2"  # nothing changed
    forced = worse.admin(RolloutRequest(action="promote", alias="bot", force=True))
    assert forced.decision.allowed and forced.decision.forced and forced.aliases[0].stable == "v2"

    silent = rollouts(**settings)  # the default source: no feedback at all
    silent.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", weight=0.5))
    _serve(silent, 200, {"v1": 0.1, "v2": 0.5}, fail={"v2"})
    reasons = silent.admin(RolloutRequest(action="promote", alias="bot")).decision.reasons
    assert any("not enough online feedback" in r for r in reasons)
    assert any("error rate" in r for r in reasons) and any("p95 latency" in r for r in reasons)

    lenient = rollouts(require_feedback=False, **settings)
    lenient.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", weight=0.5))
    assert "not enough traffic" in lenient.admin(RolloutRequest(action="promote", alias="bot")).decision.reasons[0]
    _serve(lenient, 200, {"v1": 0.1, "v2": 0.1})
    assert lenient.admin(RolloutRequest(action="promote", alias="bot")).decision.allowed


def test_decide_is_a_pure_function_of_the_numbers():
    s = RolloutSettings(min_requests=1, min_feedback=1, max_quality_drop=0.02)
    stable = VersionNumbers(version="v1", requests=10, error_rate=0.0, p95_latency_s=1.0, quality=0.9, quality_n=10)
    close = stable.model_copy(update={"version": "v2", "quality": 0.89})
    assert decide(s, stable, close, force=False).allowed  # within max_quality_drop
    assert not decide(s, stable, close.model_copy(update={"quality": 0.87}), force=False).allowed


def test_rollback_drops_the_candidate_then_returns_to_the_previous_version():
    r = rollouts(require_feedback=False, min_requests=0)
    r.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", weight=0.5))
    back = r.admin(RolloutRequest(action="rollback", alias="bot")).aliases[0]
    assert (back.stable, back.candidate, back.weight) == ("v1", None, 0.0)
    r.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", weight=0.2))
    assert r.admin(RolloutRequest(action="promote", alias="bot")).aliases[0].stable == "v2"
    restored = r.admin(RolloutRequest(action="rollback", alias="bot")).aliases[0]
    assert (restored.stable, restored.previous) == ("v1", "v2")
    assert all(r.route("bot", key(i), None).version == "v1" for i in range(50))
    r.admin(RolloutRequest(action="delete", alias="bot"))
    assert r.route("bot", key(0), None) is None
    with pytest.raises(Conflict, match="nothing to roll back"):
        r.admin(RolloutRequest(action="set", alias="bot", stable="v3"))
        r.admin(RolloutRequest(action="rollback", alias="bot"))


def test_shadow_runner_isolates_failures_bounds_its_queue_and_scores():
    runner = ShadowRunner(capacity=2, concurrency=1)
    release = threading.Event()
    done: list[str] = []

    async def slow():
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        done.append("slow")

    async def failing():
        raise RuntimeError("the candidate crashed")

    try:
        assert runner.submit(slow) and runner.submit(failing)
        assert not runner.submit(slow)  # full: dropped, the caller counts it
        release.set()
        assert runner.drain(5.0) and done == ["slow"]
        assert runner.submit(lambda: asyncio.sleep(0)) and runner.drain(5.0)  # a failure did not stop the runner
    finally:
        runner.stop()
    assert agreement(["a b c"], ["a b c"]) == 1.0 and agreement(["a b c"], ["x y z"]) == 0.0
    assert 0.0 < agreement(["a b c d"], ["a b c e"]) < 1.0 and agreement(["a"], []) == 0.0


def test_a_failing_shadow_never_reaches_the_client_and_full_queues_are_counted():
    r = rollouts(shadow_queue=1, shadow_concurrency=1)
    r.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", shadow=1.0))
    route = r.route("bot", key(1), None)
    assert route.version == "v1" and route.shadow == "v2"
    gate = threading.Event()

    async def broken():
        await asyncio.get_running_loop().run_in_executor(None, gate.wait)
        raise RuntimeError("shadow exploded")

    try:
        assert r.shadow_copy(route, broken, ["ok"], lambda reply: [])  # returns at once, raises nothing
        assert not r.shadow_copy(route, broken, ["ok"], lambda reply: [])  # queue full: dropped
        gate.set()
        assert r.shadows.drain(5.0)
        view = r.view("bot")
        assert view.shadow_dropped == 1
        cand = next(v for v in view.versions if v.version == "v2")
        assert (cand.shadow_requests, cand.shadow_errors, cand.agreement_n) == (1, 1, 0)

        async def answer():
            return {"choices": [{"text": "ok then"}]}

        r.shadow_copy(route, answer, ["ok then"], lambda reply: [c["text"] for c in reply["choices"]])
        assert r.shadows.drain(5.0) and r.numbers("v2").agreement == 1.0
    finally:
        r.stop()


def test_alias_state_persists_and_old_state_files_still_load(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"generation": 4, "adapters": {"a1": {"source": "/x", "pinned": True,
                                                                     "removed": False, "generation": 3}}}))
    old = StateStore(str(path)).read()  # written before aliases existed
    assert old.generation == 4 and old.aliases == {} and old.adapters["a1"].pinned
    coordinator = Coordinator(str(path))
    generation = coordinator.set_alias("bot", {"stable": "v1", "candidate": "v2", "weight": 0.25}, expect=-1)
    assert generation == 5
    again = Coordinator(str(path)).state()  # a restart reads it back
    assert again.aliases["bot"] == AliasSpec(stable="v1", candidate="v2", weight=0.25, generation=5)
    assert again.adapters["a1"].pinned and DesiredState.model_validate_json(path.read_text()) == again
    with pytest.raises(Conflict):
        coordinator.set_alias("bot", {"stable": "v2"}, expect=4)
    assert coordinator.set_alias("bot", None, expect=5) == 6 and "bot" not in Coordinator(str(path)).state().aliases


def test_the_member_follows_alias_changes_written_by_another_replica(tmp_path):
    from service.fleet import FleetMember, FleetSettings

    coordinator = Coordinator(str(tmp_path / "state.json"), replica_ttl_s=5)
    registry = SimpleNamespace(adapters={}, catalog=SimpleNamespace(adapters={}, skipped={}))
    settings = FleetSettings(sync_interval_s=0.1, ack_timeout_s=2)
    members = [FleetMember(registry, coordinator, f"r{i}", settings) for i in (1, 2)]
    for member in members:
        member.plan(registry.catalog)
        member.start()
    try:
        status = members[0].set_alias("bot", AliasSpec(stable="v1", candidate="v2", weight=0.5), expect=-1)
        assert status.applied == ["r1", "r2"] and status.complete  # answered once both had it
        assert members[1].aliases["bot"].candidate == "v2"
        members[1].set_alias("bot", None, expect=status.generation)
        deadline = time.monotonic() + 3
        while "bot" in members[0].aliases and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "bot" not in members[0].aliases
    finally:
        for member in members:
            member.stop()


def test_each_replica_gates_on_the_whole_fleets_traffic():
    coordinator = Coordinator(None)
    replicas = []
    for name in ("ra", "rb"):
        fleet = FakeFleet(coordinator, name)
        replicas.append(Rollouts(RolloutSettings(min_requests=10, require_feedback=False), fleet,
                                 lambda n: n in {"v1", "v2"}))
        fleet.tallies = replicas[-1].snapshot
    a, b = replicas
    a.admin(RolloutRequest(action="set", alias="bot", stable="v1", candidate="v2", weight=0.5))
    for replica, slow in ((a, 0.1), (b, 0.3)):  # each replica alone saw 6 requests per version, under min_requests
        for i in range(6):
            replica.record("bot", "v1", "primary", True, 0.1)
            replica.record("bot", "v2", "shadow" if i % 2 else "primary", True, slow)
    assert a.numbers("v1").requests == 6  # no heartbeat yet: only its own
    for replica in replicas:
        replica.fleet.heartbeat()
    for replica in replicas:  # any replica sees the fleet's numbers: counts summed, latencies pooled
        v1, v2 = replica.numbers("v1"), replica.numbers("v2")
        assert (v1.requests, v2.requests, v2.shadow_requests) == (12, 12, 6)
        assert v2.p50_latency_s == pytest.approx(0.3) and v1.p95_latency_s == pytest.approx(0.1)
    decision = a.admin(RolloutRequest(action="promote", alias="bot")).decision
    assert not any("requests" in reason for reason in decision.reasons), decision.reasons  # 12 >= 10 each
    coordinator.leave("rb")  # a replica that left no longer counts
    assert a.numbers("v1").requests == 6
