"""Ports of local servers (service/ports.py): free_port() is race-free, a busy port is refused with
the fix, a start recognises its own server by instance id, and a hung stop is bounded
(service/launcher.py: stop)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service import ports
from training.artifact.errors import Unavailable


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except OSError:
        return 32768


def test_free_port_never_repeats_and_stays_out_of_the_kernels_range():
    chosen = [ports.free_port() for _ in range(300)]
    assert len(set(chosen)) == len(chosen)
    assert max(chosen) < _ephemeral_low()  # the kernel never hands these to port-0 binds or outgoing connections


def _consecutive_free(n: int) -> int:
    """n consecutive ports nobody listens on and this process has not handed out: free_port() skips the ports it
    gave before (the test above alone reserves 300 random ones), so a port it holds would read as taken."""
    for low in range(ports.PORT_RANGE[0] + 5000, ports.PORT_RANGE[1] - n, n):
        if all(p not in ports._reserved and ports.bindable("127.0.0.1", p) for p in range(low, low + n)):
            return low
    raise AssertionError("no free ports")


def test_free_port_skips_ports_another_process_holds(tmp_path, monkeypatch):
    low = _consecutive_free(3)
    code = ("import sys, time; from pathlib import Path; from service import ports; "
            f"ports.LOCK_DIR = Path({str(tmp_path)!r}); ports.PORT_RANGE = ({low}, {low + 2}); "
            "print(sorted([ports.free_port(), ports.free_port()]), flush=True); time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == str([low, low + 1])
        monkeypatch.setattr(ports, "LOCK_DIR", tmp_path)
        monkeypatch.setattr(ports, "PORT_RANGE", (low, low + 3))
        assert ports.free_port() == low + 2  # the two the other process holds are skipped ...
        with pytest.raises(Unavailable, match="no free port"):
            ports.free_port()  # ... even when nothing else is left
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "so_reuseport"])
def test_ensure_free_names_the_busy_port_and_a_free_one(reuseport):
    with socket.socket() as listener:
        if reuseport:  # gRPC servers listen with SO_REUSEPORT: another one could silently share the port
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", ports.free_port()))
        listener.listen()
        busy = listener.getsockname()[1]
        with pytest.raises(Unavailable) as caught:
            ports.ensure_free("127.0.0.1", busy)
    assert str(busy) in caught.value.message and "in use" in caught.value.message
    assert "port=" in caught.value.hint
    ports.ensure_free("127.0.0.1", busy)  # free again once the listener is gone
    ports.ensure_free("127.0.0.1", 0)


class _Ready(ThreadingHTTPServer):
    """Answers GET /ready 200, with `instance` in the instance header when given."""

    def __init__(self, instance: str | None) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                self.send_response(200)
                if instance:
                    self.send_header(ports.INSTANCE_HEADER, instance)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.mark.parametrize("answered_by", ["someone-else", None])
def test_wait_owned_refuses_an_answer_from_another_server(answered_by):
    other = _Ready(answered_by)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="another server"):
            ports.wait_owned(other.url, "mine", timeout_s=30, foreign_grace_s=1)
        assert time.monotonic() - started < 10
    finally:
        other.shutdown()


def test_wait_owned_accepts_its_own_server():
    own = _Ready("mine")
    try:
        ports.wait_owned(own.url, "mine", timeout_s=10)
    finally:
        own.shutdown()


def test_instance_header_is_on_ready_only(monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    monkeypatch.setenv(ports.INSTANCE_ENV, "abc123")
    app = FastAPI()
    app.get("/ready")(lambda: {"status": "ok"})
    app.get("/v1/models")(lambda: {"data": []})
    app.add_middleware(ports.InstanceHeader)
    with TestClient(app) as client:
        assert client.get("/ready").headers[ports.INSTANCE_HEADER] == "abc123"
        assert ports.INSTANCE_HEADER not in client.get("/v1/models").headers


def test_stop_kills_its_ray_processes_when_serve_hangs(monkeypatch):
    import psutil
    import ray
    from ray import serve

    from service import launcher

    hung = threading.Event()
    # a "Ray node" process with a child of its own (as the raylet has workers)
    node = subprocess.Popen(["sh", "-c", "sleep 600 & wait"])
    deadline = time.monotonic() + 10
    while not psutil.Process(node.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = psutil.Process(node.pid).children()[0]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(serve, "shutdown", hung.wait)  # the controller never answers
    monkeypatch.setattr(launcher, "ray_processes", lambda: [psutil.Process(node.pid)])
    result = {}
    stopping = threading.Thread(target=lambda: result.update(clean=launcher.stop(timeout_s=1)), daemon=True)
    try:
        started = time.monotonic()
        stopping.start()
        stopping.join(20)
        assert not stopping.is_alive(), "stop() hung with Serve"
        assert result == {"clean": False} and time.monotonic() - started < 15
        assert node.wait(5) is not None and not worker.is_running()
    finally:
        hung.set()
        node.kill()
        node.wait()


def test_stop_puts_back_the_environment_start_exported(monkeypatch):
    """An in-process server's direct-ingress port must not leak into servers started later
    (a later start kept the old RAY_SERVE_DIRECT_INGRESS_* range: NoAvailablePortError)."""
    from service import launcher

    for name in launcher.LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_SERVE_PORT_QUARANTINE_S", "7")  # the user's own value wins and stays
    port = ports.free_port()
    config, settings = launcher.build_config(None, [f"port={port}", "grpc_port=null"])
    launcher.remember_env()
    assert launcher.use_direct_ingress(config, settings)
    ports.new_instance()
    assert launcher.os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == str(port)
    assert launcher.os.environ["RAY_SERVE_PORT_QUARANTINE_S"] == "7"
    child = launcher.user_env()  # what `spawn` hands a server it starts meanwhile
    assert "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT" not in child and ports.INSTANCE_ENV not in child
    assert launcher.stop() is True  # no Ray here: only the environment to put back
    for name in launcher.LAUNCHER_ENV:
        assert launcher.os.environ.get(name) == ("7" if name == "RAY_SERVE_PORT_QUARANTINE_S" else None), name


def test_a_failed_start_puts_back_the_environment(monkeypatch, tmp_path):
    """A start that fails after exporting its environment (Ray's GCS refused, the app never ran) must not
    leave PROMETHEUS_MULTIPROC_DIR or the direct-ingress ports set for later servers in this process."""
    from service import launcher

    for name in launcher.LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)

    def failing_init_ray(num_cpus=None):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
        raise RuntimeError("Failed to start GCS")

    monkeypatch.setattr(launcher, "init_ray", failing_init_ray)
    with pytest.raises(RuntimeError, match="GCS"):
        launcher.start(None, [f"port={ports.free_port()}", "grpc_port=null"])
    for name in launcher.LAUNCHER_ENV:
        assert name not in os.environ, name


def _asgi_listener(port: int):
    """Serve's replica-side start of its direct-ingress HTTP server on `port`, stopped again at once;
    (SO_REUSEADDR, SO_REUSEPORT) of its socket."""
    import asyncio

    from ray.serve._private import replica
    from ray.serve.config import HTTPOptions

    async def app(scope, receive, send):  # pragma: no cover - never called
        pass

    async def listen_and_stop() -> tuple[int, int]:
        task, server = await replica.start_asgi_http_server(app, HTTPOptions(host="127.0.0.1", port=port),
                                                            event_loop=asyncio.get_running_loop())
        while not server.started:
            await asyncio.sleep(0.01)
        sock = server.servers[0].sockets[0]
        options = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        server.should_exit = True
        await task
        return options

    return asyncio.run(listen_and_stop())


@pytest.fixture
def rebindable(monkeypatch):
    from ray.serve._private import http_util, replica

    from service.direct_ingress import allow_port_rebind

    monkeypatch.setattr(replica, "start_asgi_http_server", replica.start_asgi_http_server)  # put back afterwards
    real_reuse_port = http_util.set_socket_reuse_port
    assert allow_port_rebind() and allow_port_rebind()  # a second call keeps the one wrapper
    assert replica.start_asgi_http_server.rebinds_port
    yield
    assert http_util.set_socket_reuse_port is real_reuse_port  # swapped only around the bind


def test_the_direct_ingress_listener_rebinds_but_never_shares_its_port(rebindable):
    """A replacement Ingress replica must bind the public port beside a killed one's TIME_WAIT sockets
    (SO_REUSEADDR on every listener), and no second listener may join it (no SO_REUSEPORT)."""
    assert _asgi_listener(ports.free_port()) == (1, 0)


def test_a_port_still_listened_on_is_outwaited_briefly_then_refused(rebindable, monkeypatch):
    """Serve blocks a port for good after one failed bind: a listener that goes away within BUSY_WAIT_S is
    waited for; one that stays (another program) still fails the start, and nothing joins it meanwhile."""
    from service import direct_ingress

    monkeypatch.setattr(direct_ingress, "BUSY_WAIT_S", 5.0)
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a sharing-minded holder is not joined
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    threading.Timer(1.0, busy.close).start()
    started = time.monotonic()
    assert _asgi_listener(port) == (1, 0)
    assert 0.9 < time.monotonic() - started < 5.0

    monkeypatch.setattr(direct_ingress, "BUSY_WAIT_S", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as other:
        with pytest.raises(RuntimeError, match="Failed to bind"):
            _asgi_listener(other.getsockname()[1])
