"""Hardening of the security layer (issue 16): admin operations honour the key's adapter globs,
blocking never refuses a valid key and trusts `X-Forwarded-For` only from configured proxies,
the rate-limit store survives its actor dying, checks before authentication stay cheap, and
only the status answers without a key (`/ready`; gRPC reflection needs one, like /openapi.json)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service.auth import Principal
from tests.security_support import bearer, http_app, make_keyring, rpc_code, stub_grpc_server
from training.artifact.errors import PermissionDenied


def run(coro):
    return asyncio.run(coro)


ADAPTER_INFO = {"path": "", "base": "b", "method": "lora", "task": "causal-lm", "pinned": False, "loaded_at": 0,
                "version": "1"}


def admin_core():
    from service.core import ServingCore
    from service.settings import load_settings

    done = []
    registry = SimpleNamespace(
        adapters={},
        catalog=SimpleNamespace(adapters={}),
        load_adapter=lambda name, path, pin: done.append(("load", name)) or {"name": name, **ADAPTER_INFO},
        unload_adapter=lambda name, force: done.append(("unload", name)),
        set_pinned=lambda name, pinned: done.append(("pin", name)) or {"name": name, **ADAPTER_INFO},
        list_adapters=lambda: [{"name": n, **ADAPTER_INFO} for n in ("team-a-prod", "team-b-prod")])
    core = ServingCore(load_settings({}), engine=SimpleNamespace(registry=registry))
    core.drift = SimpleNamespace(forget=lambda name: None)
    return core, done


def test_admin_operations_apply_the_keys_adapter_globs():
    from service.schemas import LoadAdapterRequest

    core, done = admin_core()
    team_a = Principal("k1", "team-a", scopes=("admin",), adapters=("team-a-*",))
    for refused in (core.unload_adapter("team-b-prod", False, team_a),
                    core.pin_adapter("team-b-prod", True, team_a),
                    core.load_adapter(LoadAdapterRequest(name="team-b-new"), team_a)):
        with pytest.raises(PermissionDenied, match="team-b"):
            run(refused)
    assert done == []
    run(core.unload_adapter("team-a-prod", False, team_a))
    run(core.pin_adapter("team-a-prod", True, team_a))
    run(core.load_adapter(LoadAdapterRequest(name="team-a-new"), team_a))
    assert done == [("unload", "team-a-prod"), ("pin", "team-a-prod"), ("load", "team-a-new")]
    assert [a.name for a in run(core.list_adapters(team_a)).data] == ["team-a-prod"]
    assert len(run(core.list_adapters(None)).data) == 2  # in-process callers: no principal, no filter


# ---- blocking and client addresses ------------------------------------------------------
@pytest.mark.parametrize("peer,forwarded,client", [
    ("10.0.0.5", "203.0.113.7", "203.0.113.7"),                 # from the ingress: its client
    ("10.0.0.5", "6.6.6.6, 203.0.113.7, 10.0.0.9", "203.0.113.7"),  # a client-written hop is never trusted
    ("10.0.0.5", "10.0.0.8, 10.0.0.9", "10.0.0.8"),             # all proxies: the farthest one
    ("10.0.0.5", "junk, 203.0.113.7", "203.0.113.7"),
    ("10.0.0.5", "203.0.113.7, junk", "10.0.0.5"),              # a garbled hop: stop at the proxy
    ("198.51.100.1", "203.0.113.7", "198.51.100.1"),            # not a proxy: its header is ignored
    ("10.0.0.5", None, "10.0.0.5"),
    ("testclient", "203.0.113.7", "testclient"),
])
def test_forwarded_for_is_trusted_only_from_configured_proxies(peer, forwarded, client):
    from service.security.clients import client_address

    assert client_address(peer, forwarded, ["10.0.0.0/8"]) == client
    assert client_address(peer, forwarded, []) == peer


def test_a_burst_of_keyless_requests_never_blocks_a_valid_key_over_http(tmp_path):
    client_from, keys = http_app(tmp_path)
    nat = client_from("192.0.2.10")
    for _ in range(3):
        assert nat.get("/v1/models").status_code == 401
    refused = nat.get("/v1/models", headers=bearer(keys["bad"]))
    assert refused.status_code == 403 and "blocked" in refused.json()["error"]["message"]
    assert nat.get("/v1/models").status_code == 403
    assert nat.get("/v1/models", headers=bearer(keys["good"])).status_code == 200  # same address, valid key


def test_clients_behind_a_trusted_proxy_are_blocked_one_by_one(tmp_path):
    client_from, keys = http_app(tmp_path, trusted_proxies=["10.0.0.0/8"])
    ingress = client_from("10.0.0.5")
    for _ in range(3):
        assert ingress.get("/v1/models", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 401
    assert ingress.get("/v1/models", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 403
    assert ingress.get("/v1/models", headers={"X-Forwarded-For": "203.0.113.8"}).status_code == 401  # not blocked
    spoofed = {"X-Forwarded-For": "203.0.113.8, 203.0.113.7"}  # the client cannot pick its address
    assert ingress.get("/v1/models", headers=spoofed).status_code == 403
    direct = client_from("198.51.100.1")  # no proxy: its header is ignored
    for _ in range(3):
        direct.get("/v1/models", headers={"X-Forwarded-For": "203.0.113.9"})
    assert ingress.get("/v1/models", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 401


def test_a_burst_of_keyless_calls_never_blocks_a_valid_key_over_grpc(tmp_path):
    import grpc

    from service.grpc.gen.tuneserve.v1 import inference_pb2, inference_pb2_grpc

    keys = make_keyring(tmp_path / "keys.json")
    with stub_grpc_server(tmp_path / "keys.json", block_after_failures=3) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        codes = [rpc_code(lambda: stub.ListModels(inference_pb2.ListModelsRequest(), metadata=(
                     (("authorization", f"Bearer {key}"),) if key else ())))
                 for key in (None, None, None, keys["bad"], None, keys["good"])]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.PERMISSION_DENIED] * 2 + [grpc.StatusCode.OK]


# ---- the shared rate-limit store ----------------------------------------------------------
class DeadActor:
    """An actor handle whose calls fail the way Ray's do once the actor died."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.take = self.charge = SimpleNamespace(remote=self._fail)

    async def _fail(self, *args):
        raise self.error


class LiveActor:
    def __init__(self) -> None:
        from service.security.ratelimit import Buckets

        self.buckets = Buckets()
        self.take = SimpleNamespace(remote=self._call("take"))
        self.charge = SimpleNamespace(remote=self._call("charge"))

    def _call(self, name):
        async def call(*args):
            return getattr(self.buckets, name)(*args)
        return call


def test_ray_buckets_refetch_the_actor_after_it_died():
    from ray.exceptions import ActorDiedError

    from service.security.ratelimit import RayBuckets

    handles = [DeadActor(ActorDiedError()), LiveActor()]
    store = RayBuckets(connect=lambda: handles.pop(0))
    assert run(store.take("k:requests", 1, 1)) == 0.0       # re-fetched, retried on the live actor
    assert run(store.take("k:requests", 1, 1)) > 0          # the live actor holds the bucket now
    assert handles == []


def test_ray_buckets_err_open_and_count_when_the_store_is_unreachable():
    from ray.exceptions import ActorUnavailableError

    from service.security import metrics
    from service.security.ratelimit import RayBuckets

    store = RayBuckets(connect=lambda: DeadActor(ActorUnavailableError("restarting", None)))
    before = metrics.RATE_LIMIT_STORE_ERRORS._value.get()
    assert run(store.take("k:requests", 1, 1)) == 0.0       # admitted: limits err open
    run(store.charge("k:tokens", 10, 5))                    # never raises
    assert metrics.RATE_LIMIT_STORE_ERRORS._value.get() == before + 2


def test_the_rate_limit_actor_restarts_after_dying():
    from service.security.ratelimit import actor_options

    assert actor_options()["max_restarts"] == -1


def test_the_audit_line_is_written_even_when_charging_fails(tmp_path):
    from service.auth import Authenticator
    from service.security import SecurityGuard, SecuritySettings
    from service.security.audit import AuditLog

    class BrokenStore:
        async def charge(self, *args):
            raise RuntimeError("store gone")

    audit = AuditLog(tmp_path / "audit.jsonl")
    guard = SecurityGuard(Authenticator(), SecuritySettings(tokens_per_min=10), store=BrokenStore(), audit=audit)
    principal = Principal("k1", "alice")
    usage = SimpleNamespace(prompt_tokens=3, completion_tokens=2)
    with pytest.raises(RuntimeError):
        run(guard.finish_call("http", "/v1/completions", "POST", principal, usage, "a1", 200, 0.0, "1.2.3.4", False))
    audit.close()
    assert '"key_id":"k1"' in (tmp_path / "audit.jsonl").read_text()


# ---- cheap checks before and around authentication ----------------------------------------
def reference_depth(raw: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 92, byte != 34)
        elif byte == 34:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def test_json_depth_matches_a_byte_scan_on_tricky_strings():
    import json
    import random

    from service.security.limits import json_depth

    texts = ['a\\"[', "\\\\", "x]{", '\\\\"', 'q\\\\\\"]]', "[[[[", "}}"]
    rng = random.Random(7)

    def document(level):
        roll = rng.random()
        if level > 6 or roll < 0.3:
            return rng.choice([*texts, 1, None])
        if roll < 0.65:
            return [document(level + 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}{rng.choice(texts)}": document(level + 1) for i in range(rng.randint(0, 3))}

    for _ in range(500):
        raw = json.dumps(document(0)).encode()
        assert json_depth(raw) == reference_depth(raw), raw
    assert json_depth(b"[" * 40 + b"]" * 40, cap=8) == 9 and json_depth(b"[[[", cap=8) == 3


def test_json_depth_check_of_a_large_body_costs_about_a_parse():
    import json
    import time

    from service.security.limits import check_json_depth

    def best(action) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            action()
            times.append(time.perf_counter() - started)
        return min(times)

    body = json.dumps({"model": "a1", "prompt": "Tell me a story. " * 64_000, "stop": [["a"]]}).encode()  # ~1 MiB
    parse = best(lambda: json.loads(body))
    assert best(lambda: check_json_depth(body, 32)) < 5 * parse + 0.002


def test_scrypt_keys_are_checked_off_the_event_loop(tmp_path):
    import threading

    from service.auth import Authenticator
    from service.keys import add_key, create_key
    from service.security import SecurityGuard, SecuritySettings

    path = tmp_path / "keys.json"
    plain, record = create_key("bob", ["infer"], algorithm="scrypt")
    fast, fast_record = create_key("carol", ["infer"])
    add_key(path, record)
    add_key(path, fast_record)
    auth = Authenticator(keys_file=path)
    threads = []
    real = auth.authenticate

    def spy(token):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(token)

    auth.authenticate = spy
    guard = SecurityGuard(auth, SecuritySettings(rate_limit_store="local"))
    assert run(guard.admit(plain, "1.2.3.4", "test", "infer")).key_id == record.id
    assert run(guard.admit(fast, "1.2.3.4", "test", "infer")).key_id == fast_record.id
    assert threads == [False, True]  # scrypt in a worker thread; sha256 inline (cheaper than a hop)


def test_the_per_key_address_map_is_bounded():
    from service.security.detect import MAX_ADDRESSES_PER_KEY, ActivityTracker

    tracker = ActivityTracker()
    counts = [tracker.key_used("k", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
              for i in range(MAX_ADDRESSES_PER_KEY + 50)]
    assert max(counts) == MAX_ADDRESSES_PER_KEY and len(tracker.addresses["k"]) == MAX_ADDRESSES_PER_KEY


# ---- what answers without a key -----------------------------------------------------------
def test_ready_without_a_key_says_only_the_status(tmp_path):
    client_from, keys = http_app(tmp_path)
    client = client_from("192.0.2.1")
    open_answer = client.get("/ready")
    assert open_answer.status_code == 200 and open_answer.json() == {"status": "ok"}  # probes: status only
    detailed = client.get("/ready", headers=bearer(keys["wrong_scope"]))             # any valid key: details
    assert detailed.status_code == 200 and detailed.json()["models"] == 2
    assert client.get("/ready", headers=bearer(keys["bad"])).status_code == 401


def reflection_names(port: int, metadata=()) -> set[str]:
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata)
        return {s.name for reply in replies for s in reply.list_services_response.service}


@pytest.mark.parametrize("public_docs", [False, True])
def test_grpc_reflection_needs_a_key_like_the_openapi_schema(tmp_path, public_docs):
    import grpc

    keys = make_keyring(tmp_path / "keys.json")
    with stub_grpc_server(tmp_path / "keys.json", public_docs=public_docs) as server:
        keyed = reflection_names(server.port, (("authorization", f"Bearer {keys['wrong_scope']}"),))
        assert "tuneserve.v1.Inference" in keyed  # any valid key
        keyless = rpc_code(lambda: reflection_names(server.port))
    assert keyless == (grpc.StatusCode.OK if public_docs else grpc.StatusCode.UNAUTHENTICATED)
