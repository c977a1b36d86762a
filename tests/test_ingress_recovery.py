"""The service comes back on its own port after the Ingress replica's process is SIGKILLed (issue 17, R2).

With direct ingress the Ingress replica's own HTTP server listens on the configured port (and the
gRPC server runs in the same process). A `kill -9` of that Ray worker while clients hold connections
must not leave the port dead: Serve starts a replacement Ingress replica, which has to bind the very
same port again (beside the killed connections' TIME_WAIT sockets), within RECOVERY_S. Checked over
HTTP (a completion with a key) and gRPC (the health check).

    flock /tmp/tuneserve-heavy.lock python -m pytest tests/test_ingress_recovery.py   # ~2 min on 2 cores
"""

from __future__ import annotations

import os
import signal
import time

import grpc
import httpx
import pytest

from tests.service_fixtures import service_args

pytestmark = pytest.mark.integration
RECOVERY_S = 30.0  # R2: back at full capacity within 30 s


def ingress_pids() -> list[int]:
    """Pids of the alive Ingress replica actors, from the GCS."""
    from ray._private import state

    return [info["Pid"] for info in state.actors().values()
            if info["State"] == "ALIVE" and info["Name"].startswith("SERVE_REPLICA") and "#Ingress#" in info["Name"]]


def completion_ok(url: str, key: str) -> bool:
    try:
        reply = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=10,
                           json={"model": "base", "prompt": "after the kill", "max_tokens": 1})
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


def grpc_serving(target: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def seconds_until(check, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(0.5)
    return None


def test_a_sigkilled_ingress_process_comes_back_on_the_same_ports(tiny_base_dir, service_artifacts, serve_keys,
                                                                  monkeypatch):
    from service.launcher import start, stop
    from tests.service_fixtures import free_port

    monkeypatch.setenv("RAY_TMPDIR", "/tmp/ts-ray-ingress-kill")
    port, grpc_port = free_port(), free_port()
    args = service_args(tiny_base_dir, service_artifacts, serve_keys[0], port=port, grpc_port=grpc_port,
                        **{"cache.enabled": False})
    server = start(None, [f"{k}={'null' if v is None else v}" for k, v in args.items()], num_cpus=2)
    key, target = serve_keys[1]["infer"], f"127.0.0.1:{grpc_port}"
    try:
        assert server.direct_ingress and server.url.endswith(f":{port}")
        assert completion_ok(server.url, key) and grpc_serving(target)
        [victim] = ingress_pids()
        # clients holding keep-alive connections, as under load: the kernel closes their server ends when
        # the process dies, and those sockets (TIME_WAIT) hold the port for a minute
        held = [httpx.Client(base_url=server.url, timeout=10) for _ in range(4)]
        assert all(client.get("/ready").status_code == 200 for client in held)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(0.5)
        for client in held:
            client.close()
        assert seconds_until(lambda: not completion_ok(server.url, key), 10) is not None, "the kill did not land"
        http_back = seconds_until(lambda: completion_ok(server.url, key), RECOVERY_S + 60)
        http_s = None if http_back is None else time.monotonic() - killed
        grpc_back = seconds_until(lambda: grpc_serving(target), RECOVERY_S + 60)
        grpc_s = None if grpc_back is None else time.monotonic() - killed
        new = ingress_pids()
    finally:
        stop()
    assert http_s is not None and http_s <= RECOVERY_S, f"HTTP on port {port} back after {http_s} s"
    assert grpc_s is not None and grpc_s <= RECOVERY_S, f"gRPC on port {grpc_port} back after {grpc_s} s"
    assert new and victim not in new, new
