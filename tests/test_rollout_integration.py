"""The rollout check of issue 20 on a real ServingCore (tiny base, two tiny LoRA versions) behind the REST
app, without Ray: traffic through an alias with a 50/50 canary, then a shadow (the shadowed version never
answers a client, its answers are scored), a candidate with worse online quality refused promotion (the
decision and its numbers in the audit log), and a rollback under load with no failed request.
Two replicas sharing one coordinator see every alias change.

    pytest tests/test_rollout_integration.py
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from service.core import ServingCore
from service.fleet import Coordinator
from service.rollout import OnlineQuality
from service.rollout_schemas import RolloutRequest
from service.schemas import CompletionRequest, LoadAdapterRequest
from service.security.audit import flush_audit_logs
from service.settings import load_settings
from tests.service_fixtures import in_process_server, make_adapter, service_args
from training.artifact.errors import Conflict

ALIAS = "support-bot"


class FeedbackStub:
    """Stands in for service.feedback.FeedbackStore: v2's online accuracy is worse than v1's."""

    def online_quality(self, model_id: str) -> OnlineQuality:
        return {"bot-v1": OnlineQuality("accuracy", 0.82, 60), "bot-v2": OnlineQuality("accuracy", 0.64, 60)}.get(
            model_id, OnlineQuality("none", None, 0))


@pytest.fixture(scope="module")
def versions(tiny_base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout-artifacts")
    for i, name in enumerate(("bot-v1", "bot-v2")):
        make_adapter(tiny_base_dir, root / name, name, seed=11 + i)
    return root


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from service.keys import add_key, create_key

    path = tmp_path_factory.mktemp("rollout-keys") / "keys.json"
    plain = {}
    for label, scopes, patterns in [("app", ["infer"], [ALIAS]), ("admin", ["infer", "admin"], ["*"])]:
        key, record = create_key(label, scopes, patterns)
        add_key(path, record)
        plain[label] = key
    return path, plain


@pytest.fixture
def server(tiny_base_dir, versions, keys, tmp_path):
    settings = load_settings(service_args(tiny_base_dir, versions, keys[0], **{
        "cache": {"enabled": False}, "security": {"audit_log": str(tmp_path / "audit.jsonl")},
        "rollout": {"min_requests": 5, "min_feedback": 20}}))
    with in_process_server(settings, keys[1]) as http:
        http.core.rollouts.quality = FeedbackStub()  # what the lead wires to service.feedback at merge
        http.audit = tmp_path / "audit.jsonl"
        yield http


def _ask(http, who: str | None = None, sticky: str | None = None, model: str = ALIAS):
    headers = {"Authorization": f"Bearer {http.keys['app']}"}
    if sticky:
        headers["X-Tuneserve-Sticky"] = sticky
    reply = http.post("/v1/completions", headers=headers,
                      json={"model": model, "prompt": "Where is my order?", "max_tokens": 3, "temperature": 0})
    return reply


def _admin(http, method: str, path: str, **kwargs):
    return http.request(method, f"/v1/admin/rollouts{path}", headers={"Authorization": f"Bearer {http.keys['admin']}"},
                        **kwargs)


def test_canary_then_shadow_then_a_refused_promotion_and_a_clean_rollback(server):
    http = server
    assert _admin(http, "PUT", f"/{ALIAS}", json={"stable": "bot-v1", "candidate": "bot-v2", "weight": 0.5,
                                                  "sticky": "user"}).status_code == 200
    # 50/50 canary, sticky per X-Tuneserve-Sticky: both versions answer, each caller always the same one
    served = {}
    for i in range(24):
        reply = _ask(http, sticky=f"user-{i}")
        assert reply.status_code == 200, reply.text
        served[i] = reply.json()["model"]
    assert set(served.values()) == {"bot-v1", "bot-v2"}
    assert all(_ask(http, sticky=f"user-{i}").json()["model"] == served[i] for i in range(6))
    assert _ask(http, model="bot-v1").status_code == 403  # the key may use the versions only through the alias
    listed = http.get("/v1/models", headers={"Authorization": f"Bearer {http.keys['app']}"}).json()["data"]
    assert [(m["id"], m["kind"]) for m in listed] == [(ALIAS, "alias")]  # the app's key sees the alias only

    # shadow: every request is answered by v1, a copy goes to v2 and is scored, never returned
    assert _admin(http, "PUT", f"/{ALIAS}", json={"stable": "bot-v1", "candidate": "bot-v2", "weight": 0.0,
                                                  "shadow": 1.0}).status_code == 200
    before = {v["version"]: v for v in _admin(http, "GET", f"/{ALIAS}").json()["aliases"][0]["versions"]}
    models = [_ask(http, sticky=f"user-{i}").json()["model"] for i in range(12)]
    assert models == ["bot-v1"] * 12
    assert http.core.rollouts.shadows.drain(30.0)
    status = _admin(http, "GET", f"/{ALIAS}").json()["aliases"][0]
    numbers = {v["version"]: v for v in status["versions"]}
    shadowed = numbers["bot-v2"]["shadow_requests"] - before["bot-v2"]["shadow_requests"]
    assert shadowed + status["shadow_dropped"] == 12 and shadowed > 0
    assert numbers["bot-v2"]["agreement_n"] == shadowed and 0.0 <= numbers["bot-v2"]["agreement"] <= 1.0
    assert numbers["bot-v2"]["shadow_errors"] == 0 and numbers["bot-v1"]["requests"] >= 12

    # v2's online accuracy is worse: promotion refused (409), nothing changes, the numbers are audited
    refused = _admin(http, "POST", f"/{ALIAS}/promote")
    assert refused.status_code == 409 and "below the stable's 0.8200" in refused.json()["error"]["message"]
    assert _admin(http, "GET", f"/{ALIAS}").json()["aliases"][0]["stable"] == "bot-v1"
    flush_audit_logs()
    lines = [json.loads(line) for line in http.audit.read_text().splitlines()]
    audited = [line for line in lines if line["route"] == "/v1/admin/rollouts/{alias}/promote"]
    assert audited[-1]["status"] == 409 and audited[-1]["reason"] == "rollout_refused"
    decision = audited[-1]["detail"]
    assert not decision["allowed"] and decision["candidate"]["quality"] == 0.64 and decision["stable"]["quality"] == 0.82

    # forced (audited), then rolled back while clients keep calling: no request fails
    forced = _admin(http, "POST", f"/{ALIAS}/promote", params={"force": True})
    assert forced.status_code == 200 and forced.json()["decision"]["forced"]
    assert forced.json()["aliases"][0]["stable"] == "bot-v2"
    flush_audit_logs()
    assert json.loads(http.audit.read_text().splitlines()[-1])["detail"]["forced"] is True
    failures, served_by, stop = [], [], threading.Event()

    def client(n: int) -> None:
        while not stop.is_set():
            reply = _ask(http, sticky=f"load-{n}")
            if reply.status_code != 200:
                failures.append(reply.text)
            else:
                served_by.append(reply.json()["model"])

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 30
        while len(served_by) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(3)  # clients are calling (on v2) when the rollback comes
        rolled = _admin(http, "POST", f"/{ALIAS}/rollback")
        assert rolled.status_code == 200 and rolled.json()["aliases"][0]["stable"] == "bot-v1"
        wait_for(len(served_by) + 6)  # and go on calling after it
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == [] and served_by[0] == "bot-v2" and served_by[-1] == "bot-v1"
    after = [_ask(http, sticky=f"after-{i}").json()["model"] for i in range(4)]
    assert after == ["bot-v1"] * 4
    assert "bot-v2" in http.core.registry.adapters  # rolled away from, still loaded (a later rollback is instant)


def test_two_replicas_route_alike_after_an_alias_change(tiny_base_dir, versions, keys, tmp_path):
    settings = load_settings(service_args(tiny_base_dir, versions, keys[0], **{
        "cache": {"enabled": False}, "fleet": {"state_file": str(tmp_path / "state.json"), "sync_interval_s": 0.2}}))
    coordinator = Coordinator(str(tmp_path / "state.json"), settings.fleet.replica_ttl_s)
    cores = []
    try:
        for name in ("r1", "r2"):
            cores.append(ServingCore(settings, coordinator=coordinator, replica_id=name))
            cores[-1].start()
        import asyncio

        reply = asyncio.run(cores[0].rollout(RolloutRequest(action="set", alias=ALIAS, stable="bot-v1",
                                                            candidate="bot-v2", weight=0.5)))
        assert reply.fleet.applied == ["r1", "r2"]
        with pytest.raises(Conflict, match="is a rollout alias"):  # an adapter may not hide behind an alias
            asyncio.run(cores[1].load_adapter(LoadAdapterRequest(name=ALIAS, path=str(versions / "bot-v1"))))

        def model(core, user):
            request = CompletionRequest(model=ALIAS, prompt="hi", max_tokens=2, temperature=0, user=user)
            return asyncio.run(core.complete(request, None)).model

        picks = [model(cores[0], f"u{i}") for i in range(8)]
        assert picks == [model(cores[1], f"u{i}") for i in range(8)] and len(set(picks)) == 2  # the same split
        asyncio.run(cores[1].rollout(RolloutRequest(action="promote", alias=ALIAS, force=True)))
        assert {model(cores[0], f"u{i}") for i in range(8)} == {"bot-v2"}
        cores[1].stop()
        again = ServingCore(settings, coordinator=Coordinator(str(tmp_path / "state.json"), 5.0), replica_id="r3")
        cores[1] = again
        again.start()  # a restarted replica reads the alias back from the state file
        assert again.rollouts.view(ALIAS).stable == "bot-v2" and model(again, "u1") == "bot-v2"

        # a streamed request through the alias: every chunk names the version; its shadow copy is scored
        asyncio.run(again.rollout(RolloutRequest(action="set", alias=ALIAS, stable="bot-v2", candidate="bot-v1",
                                                 shadow=1.0)))

        async def stream():
            request = CompletionRequest(model=ALIAS, prompt="hi", max_tokens=3, temperature=0, stream=True)
            return [chunk async for chunk in again.stream_complete(request, None)]

        chunks = asyncio.run(stream())
        assert chunks and {c["model"] for c in chunks} == {"bot-v2"}
        assert again.rollouts.shadows.drain(30.0)
        shadowed = again.rollouts.numbers("bot-v1")
        assert (shadowed.shadow_requests, shadowed.agreement_n, shadowed.requests) == (1, 1, 1)
    finally:
        for core in cores:
            core.stop()


def test_cli_and_grpc_drive_the_same_rollout(server, monkeypatch):
    """`tuneserve rollout` over REST (httpx routed into the in-process app) and `Admin.Rollout` over gRPC."""
    import httpx
    from typer.testing import CliRunner

    from service.auth import Authenticator
    from service.client import TuneserveClient
    from service.grpc.server import GrpcServer
    from tests.grpc_support import LoopThread
    from tuneserve.cli import app

    http = server
    monkeypatch.setattr(httpx, "request", lambda method, url, **kw: http.request(
        method, url.removeprefix("http://ts.test"), **{k: v for k, v in kw.items() if k != "timeout"}))
    cli = ["--url", "http://ts.test", "--api-key", http.keys["admin"]]
    runner = CliRunner()
    made = runner.invoke(app, ["rollout", "set", ALIAS, "--stable", "bot-v1", "--candidate", "bot-v2",
                               "--shadow", "0.5", *cli])
    assert made.exit_code == 0 and "stable bot-v1, candidate bot-v2" in made.output, made.output
    shown = runner.invoke(app, ["rollout", "status", ALIAS, "--json", *cli])
    assert shown.exit_code == 0 and json.loads(shown.output)["aliases"][0]["shadow"] == 0.5
    refused = runner.invoke(app, ["rollout", "promote", ALIAS, *cli])
    assert refused.exit_code == 1 and "promotion refused" in refused.output
    denied = runner.invoke(app, ["rollout", "status", "--url", "http://ts.test", "--api-key", http.keys["app"]])
    assert denied.exit_code == 1 and "403" in denied.output  # an inference key may not administer

    loop = LoopThread()
    grpc_server = loop.run(_grpc(lambda: GrpcServer(http.core, Authenticator.from_settings(http.core.settings),
                                                    "127.0.0.1", 0, health_interval_s=60)))
    try:
        with TuneserveClient(f"127.0.0.1:{grpc_server.port}", api_key=http.keys["admin"]) as client:
            status = client.rollout("status", ALIAS)
            assert status.aliases[0].candidate == "bot-v2" and status.aliases[0].shadow == 0.5
            with pytest.raises(Conflict, match="promotion refused"):
                client.rollout("promote", ALIAS)
            back = client.rollout("rollback", ALIAS)
            assert back.aliases[0].stable == "bot-v1" and not back.aliases[0].HasField("candidate")
            assert back.fleet.applied and client.rollout("list").aliases[0].alias == ALIAS
    finally:
        loop.run(grpc_server.stop(0))
        loop.close()


async def _grpc(make):
    server = make()  # on the loop that serves it
    await server.start()
    return server
