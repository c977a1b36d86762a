"""Unit tests of the service's small parts: error table, keys/auth, response cache, stop-string tracking."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from service.auth import Authenticator
from service.engine.cache import ResponseCache
from service.engine.text import TextTracker
from service.engine.types import SamplingParams
from service.errors import ERROR_TABLE, describe, from_wire, http_error, openai_error_body, to_wire
from service.keys import add_key, create_key, read_keys, write_keys
from training.artifact.errors import (
    ArtifactInvalid, BaseModelMismatch, Conflict, InvalidRequest, NotFound, PayloadTooLarge, PermissionDenied,
    RateLimited, TuneserveError, Unauthenticated, Unavailable,
)


@pytest.mark.parametrize("cls,status,code", [
    (InvalidRequest, 400, "INVALID_ARGUMENT"), (PayloadTooLarge, 413, "INVALID_ARGUMENT"),
    (Unauthenticated, 401, "UNAUTHENTICATED"), (PermissionDenied, 403, "PERMISSION_DENIED"),
    (NotFound, 404, "NOT_FOUND"), (Conflict, 409, "FAILED_PRECONDITION"), (RateLimited, 429, "RESOURCE_EXHAUSTED"),
    (Unavailable, 503, "UNAVAILABLE"), (ArtifactInvalid, 422, "FAILED_PRECONDITION"),
    (BaseModelMismatch, 422, "FAILED_PRECONDITION"),
])
def test_error_table_maps_each_class(cls, status, code):
    spec = describe(cls("m", "h"))
    assert (spec.http_status, spec.grpc_code) == (status, code)
    assert cls in ERROR_TABLE


def test_unknown_error_is_generic_500_without_details():
    status, body, _ = http_error(RuntimeError("secret path /etc/x"))
    assert status == 500
    assert body["error"]["type"] == "internal_error" and "secret" not in body["error"]["message"]


def test_error_body_and_wire_roundtrip_keep_message_hint_and_retry():
    exc = RateLimited("too many", "slow down", retry_after=7)
    body = openai_error_body(exc)["error"]
    assert body["message"] == "too many (slow down)" and body["code"] == "RateLimited"
    back = from_wire(to_wire(exc))
    assert isinstance(back, RateLimited) and back.hint == "slow down" and back.retry_after == 7
    assert http_error(exc)[2]["Retry-After"] == "7"


def test_the_resolved_model_of_an_error_crosses_the_wire():
    from service.errors import resolved_model, with_model

    assert resolved_model(from_wire(to_wire(with_model(InvalidRequest("bad", "fix"), "a1")))) == "a1"
    assert resolved_model(from_wire(to_wire(with_model(RuntimeError("boom"), "a2")))) == "a2"  # internal errors too
    assert resolved_model(from_wire(to_wire(NotFound("no such model")))) is None


def _auth(tmp_path, records, env=()):
    path = tmp_path / "keys.json"
    write_keys(path, records)
    return Authenticator(keys_file=path, env_keys=list(env))


def test_keys_file_authenticates_hashed_keys_and_never_stores_plain(tmp_path):
    plain, record = create_key("alice", ["infer"], ["support-*"])
    scrypt_plain, scrypt_record = create_key("bob", ["admin"], algorithm="scrypt")
    auth = _auth(tmp_path, [record, scrypt_record])
    assert plain not in (tmp_path / "keys.json").read_text()
    principal = auth.authenticate(plain)
    assert principal.owner == "alice"
    auth.authorize(principal, "infer", "support-v2")
    with pytest.raises(PermissionDenied):
        auth.authorize(principal, "infer", "other")
    with pytest.raises(PermissionDenied):
        auth.authorize(principal, "admin")
    assert auth.authenticate(scrypt_plain).scopes == ("admin",)
    for bad in (None, "", plain[:-1] + ("x" if plain[-1] != "x" else "y"), "tsk_nope_x", "random"):
        with pytest.raises(Unauthenticated):
            auth.authenticate(bad)


def test_revoked_and_expired_keys_are_refused_after_file_change(tmp_path):
    plain, record = create_key("carol")
    auth = _auth(tmp_path, [record])
    assert auth.authenticate(plain).owner == "carol"
    import os
    import time

    write_keys(tmp_path / "keys.json", [record.model_copy(update={"revoked": True})])
    os.utime(tmp_path / "keys.json", (time.time() + 5, time.time() + 5))
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.authenticate(plain)
    expired = record.model_copy(update={"expires_at": datetime.now(timezone.utc) - timedelta(seconds=1)})
    with pytest.raises(Unauthenticated, match="expired"):
        _auth(tmp_path, [expired]).authenticate(plain)


def test_env_keys_and_add_key(tmp_path):
    auth = _auth(tmp_path, [], env=["k-one", "k-two"])
    assert auth.authenticate("k-two").key_id == "env-1"
    _, record = create_key("dave")
    add_key(tmp_path / "keys.json", record)
    assert [r.owner for r in read_keys(tmp_path / "keys.json")] == ["dave"]


def test_response_cache_ttl_size_and_counts():
    now = [0.0]
    cache = ResponseCache(size=2, ttl_s=10, clock=lambda: now[0])
    params = SamplingParams(temperature=0)
    keys = [cache.key("m", "v", [i], params) for i in range(3)]
    assert cache.key("m", "v2", [0], params) != keys[0]
    for i, key in enumerate(keys):
        cache.put(key, i)
    assert cache.get(keys[0]) is None  # evicted by size
    assert cache.get(keys[2]) == 2
    now[0] = 11
    assert cache.get(keys[2]) is None  # expired
    assert cache.stats() == {"entries": 1, "hits": 1, "misses": 2}


class CharTokenizer:
    """One token per character: enough to test incremental detokenization."""

    def decode(self, ids, **_):
        return "".join(chr(i) for i in ids)


def test_text_tracker_holds_back_possible_stop_prefix():
    tracker = TextTracker(CharTokenizer(), stop=("END",))
    out = [tracker.push(ord(c)) for c in "abEN"]
    assert "".join(t for t, _ in out) == "ab"  # "EN" could start "END"
    text, stopped = tracker.push(ord("D"))
    assert (text, stopped, tracker.text) == ("", True, "ab")
    tracker = TextTracker(CharTokenizer(), stop=("END",))
    emitted = "".join(tracker.push(ord(c))[0] for c in "xENy") + tracker.flush()
    assert emitted == "xENy"


def test_sampling_params_determinism_flag():
    assert SamplingParams(temperature=0).deterministic and SamplingParams(temperature=1, seed=3).deterministic
    assert not SamplingParams(temperature=0.7).deterministic
    assert issubclass(PayloadTooLarge, TuneserveError)


def test_packaged_serve_config_validates_with_overrides(tmp_path, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from service.launcher import _check_cpus, build_config
    from training.artifact.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    config, settings = build_config(None, ["artifacts_dir=arts", "port=8011", "batching.max_batch_size=4"])
    schema = ServeDeploySchema.model_validate(config)
    app = schema.applications[0]
    assert app.import_path == "service.app:app_builder" and schema.http_options.port == 8011
    assert app.args["artifacts_dir"] == str(tmp_path / "arts") and app.args["batching"]["max_batch_size"] == 4
    assert settings.port == 8011
    _check_cpus(config, 2)
    with pytest.raises(ConfigError, match="CPUs"):
        _check_cpus(config, 1)
    with pytest.raises(ConfigError, match="max_adapters"):
        build_config(None, ["max_adapters=0"])
    with pytest.raises(ConfigError, match="unknown key"):
        build_config(None, ["bogus=1"])


def test_serve_command_creates_an_admin_key_once(tmp_path, monkeypatch):
    from tuneserve.commands.serve import ensure_key

    monkeypatch.setenv("TUNESERVE_CACHE", str(tmp_path))
    overrides, plain, path = ensure_key(["port=1"], new_key=False)
    assert plain and overrides[-1] == f"keys_file={tmp_path / 'keys.json'}"
    assert Authenticator(keys_file=tmp_path / "keys.json").authenticate(plain).scopes == ("infer", "admin", "metrics")
    assert ensure_key([], new_key=False)[1] is None  # a key exists: nothing new is printed
    assert ensure_key([], new_key=True)[1] not in (None, plain)


def test_idle_scheduler_collects_a_burst_while_arrivals_keep_coming():
    """An idle engine keeps collecting while requests arrive closer than batch_wait_timeout_s,
    up to batch_max_wait_s; a longer gap starts the batch."""
    import threading
    import time

    from service.engine.scheduler import Scheduler
    from service.engine.settings import BatchingSettings

    def feed(sched, gaps):
        for gap in gaps:
            time.sleep(gap)
            sched.inbox.put(object())

    burst = Scheduler(None, BatchingSettings(max_batch_size=16, batch_wait_timeout_s=0.05, batch_max_wait_s=1.0))
    burst.inbox.put(object())
    feeder = threading.Thread(target=feed, args=(burst, [0.01] * 6))  # 70 ms in all, gaps well under 50 ms
    feeder.start()
    burst._collect(block=True)
    feeder.join()
    assert len(burst.waiting) == 7

    sparse = Scheduler(None, BatchingSettings(max_batch_size=16, batch_wait_timeout_s=0.02, batch_max_wait_s=1.0))
    sparse.inbox.put(object())
    feeder = threading.Thread(target=feed, args=(sparse, [0.3]))
    feeder.start()
    sparse._collect(block=True)
    feeder.join()
    assert len(sparse.waiting) == 1


def test_running_batch_lets_joiners_gather_before_one_prefill():
    """A running batch admits waiting rows once join_min_rows wait (or the free slots are filled),
    or the oldest waited join_wait_s; an empty batch admits at once."""
    from service.engine.scheduler import Scheduler
    from service.engine.settings import BatchingSettings

    class Batch:
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return self.rows

    sched = Scheduler(None, BatchingSettings(max_batch_size=16, join_wait_s=0.03, join_min_rows=4))
    now = 100.0
    assert sched._joins_now(Batch(0), 1, now, now)              # nothing running: no one to hold up
    assert not sched._joins_now(Batch(10), 2, now - 0.01, now)  # two joiners, young: wait for more
    assert sched._joins_now(Batch(10), 4, now - 0.01, now)      # enough to share a prefill
    assert sched._joins_now(Batch(10), 2, now - 0.031, now)     # the oldest waited long enough
    assert sched._joins_now(Batch(14), 2, now - 0.01, now)      # they fill the free slots
    assert Scheduler(None, BatchingSettings(join_wait_s=0.0))._joins_now(Batch(10), 1, now, now)  # 0 turns it off


def test_direct_ingress_only_with_one_ingress_replica(monkeypatch):
    """`tuneserve serve` lets the single Ingress replica serve the public port (no proxy hop); with
    several Ingress replicas, or direct_ingress=false, Ray's proxy keeps the port."""
    import os

    from service.launcher import build_config, use_direct_ingress

    # a private copy: the launcher sets these with setdefault, and a later spawned server must not inherit them
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")})
    config, settings = build_config(None, ["port=18123"])
    use_direct_ingress(config, settings)
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "18123"
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and config["http_options"]["port"] != 18123
    for name in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"):
        del os.environ[name]
    config, settings = build_config(None, ["port=18123", "direct_ingress=false"])
    use_direct_ingress(config, settings)
    assert config["http_options"]["port"] == 18123 and "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
    config, settings = build_config(None, ["port=18123"])
    next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")["num_replicas"] = 2
    use_direct_ingress(config, settings)
    assert config["http_options"]["port"] == 18123 and "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ


def test_ray_env_gives_a_slow_proxy_time_to_start_unless_the_user_chose(monkeypatch):
    """Serve kills a proxy not ready within 5 s (serve.start then fails with ActorDiedError on a loaded box)."""
    import os

    from service.launcher import PROXY_READY_TIMEOUT_S, prepare_ray_env

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")})
    prepare_ray_env()
    assert float(os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]) == PROXY_READY_TIMEOUT_S >= 30
    os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] = "7"
    prepare_ray_env()
    assert os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "7"


def test_the_ray_token_is_made_once_even_when_two_processes_race_for_it(tmp_path, monkeypatch):
    """Two test workers (or two `tuneserve serve`) starting together: the one that finds the token missing
    but loses the race keeps the winner's token, whole, instead of failing or writing its own."""
    from pathlib import Path

    from training.artifact.local_ray import ray_auth_token_path

    token = tmp_path / "ray" / "auth_token"
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert ray_auth_token_path() == token and len(token.read_text()) == 64
    first = token.read_text()
    assert oct(token.stat().st_mode & 0o777) == "0o600"
    real_is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: False if self == token else real_is_file(self))
    assert ray_auth_token_path() == token  # saw no token, then found the other process's at link time
    assert token.read_text() == first and [p.name for p in token.parent.iterdir()] == ["auth_token"]


def test_discovery_skips_directories_a_writer_left_behind(tmp_path):
    from service.engine.catalog import discover
    from training.artifact import ArtifactWriter

    base = {"id": "tiny-llama", "sha256": "ab" * 32}
    (tmp_path / "artifacts").mkdir()
    for directory in ("a1", "a1.old-1f2e3d4c", "a1.tmp-5a6b7c8d", ".a1-backup"):
        with ArtifactWriter(tmp_path / "build" / directory, {"name": directory, "kind": "adapter", "base": base}) as w:
            (w.path / "adapter_config.json").write_text("{}")
        (tmp_path / "build" / directory).rename(tmp_path / "artifacts" / directory)
    catalog = discover(tmp_path / "artifacts", "ab" * 32)
    assert set(catalog.adapters) == {"a1"} and not catalog.skipped


def test_response_cache_is_bounded_by_bytes_and_scoped_per_key():
    from service.engine.cache import approx_bytes

    cache = ResponseCache(size=100, ttl_s=10, max_bytes=3000)
    params = SamplingParams(temperature=0)
    assert cache.key("m", "v", [1], params, scope="k1") != cache.key("m", "v", [1], params, scope="k2")
    keys = [cache.key("m", "v", [i], params) for i in range(4)]
    for key in keys:
        cache.put(key, ["x" * 1000])
    assert cache.get(keys[0]) is None and cache.get(keys[3]) == ["x" * 1000]  # the oldest went for bytes
    assert cache.bytes <= 3000 and cache.bytes == sum(approx_bytes(v) for _, v, _ in cache.entries.values())
    cache.put("huge", "y" * 5000)  # larger than the whole budget: never kept
    assert cache.get("huge") is None and len(cache.entries) == 2
    cache.put(keys[3], ["z"])  # replacing an entry frees its bytes
    assert cache.bytes == approx_bytes(["z"]) + approx_bytes(["x" * 1000])


def test_a_lost_engine_replica_is_a_retryable_503_not_a_500():
    """A request in flight on an Engine replica that dies (ray.kill, node lost) answers Unavailable."""
    from ray.exceptions import RayActorError

    from service.app import engine_queue
    from service.errors import describe
    from training.artifact.errors import Unavailable

    with pytest.raises(Unavailable) as caught:
        with engine_queue():
            raise RayActorError()
    assert describe(caught.value).http_status == 503 and describe(caught.value).grpc_code == "UNAVAILABLE"
