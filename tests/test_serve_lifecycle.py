"""`tuneserve serve` owns its ports and stops when told, and overload is refused quickly.

- A port in use (HTTP, or gRPC whose SO_REUSEPORT would silently share it) fails at once,
  before Ray starts: "port N is in use", a free port to pass, exit code 2, never "serving at".
- The real server (tiny base, Engine limited to 1 running + 1 queued call, TLS from a self-signed
  cert): direct ingress serves HTTPS only, on the same cert settings as Ray's proxy; concurrent
  requests beyond that get HTTP 503 / gRPC RESOURCE_EXHAUSTED; a second start on its port fails at once;
  a SIGKILLed Ingress process (direct ingress: its own HTTP server holds the public port, and the
  gRPC server runs beside it) is replaced on the same ports within RECOVERY_S (issue 17, R2), while
  clients held connections to it; one SIGTERM then stops it within its stop_timeout_s plus a
  margin, frees its ports and leaves none of its processes (found by the instance id they inherit)
  running.

    pytest tests/test_serve_lifecycle.py                     # the busy-port checks only
    pytest -m integration tests/test_serve_lifecycle.py      # with the real server
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
import yaml
from train_support import is_loopback, without_ray_setup

from service.launcher import default_config_path
from service.ports import INSTANCE_ENV, INSTANCE_HEADER, bindable
from service.security.tls import self_signed_cert
from tests.service_fixtures import free_port  # noqa: F401

STOP_TIMEOUT_S = 20
RECOVERY_S = 30.0  # R2: back at full capacity within 30 s
SERVE_ENV = {"RAY_TMPDIR": "/tmp/ts-ray-lifecycle", "COLUMNS": "200"}


def _serve(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # (`tuneserve serve` must make the Ray settings conftest made here)
        return subprocess.Popen([sys.executable, "-m", "tuneserve", "serve", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=without_ray_setup(**SERVE_ENV), start_new_session=True)


def _refused_at_once(args: list[str], log: Path, busy: int) -> None:
    proc = _serve(args, log)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"`tuneserve serve` on busy port {busy} kept running:\n{log.read_text()[-2000:]}")
    text = log.read_text()
    assert proc.returncode == 2, text
    assert f"port {busy} is in use" in text and "serving at" not in text, text
    assert "hint:" in text, text


def _listening(reuseport: bool = False) -> socket.socket:
    sock = socket.socket()
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", free_port()))
    sock.listen()
    return sock


@pytest.mark.parametrize("which", ["port", "grpc_port"])
def test_serve_on_a_busy_port_fails_at_once(which, tmp_path):
    with _listening(reuseport=which == "grpc_port") as busy:
        number = busy.getsockname()[1]
        ports = {"port": free_port(), "grpc_port": free_port(), which: number}
        _refused_at_once([f"{k}={v}" for k, v in ports.items()] + [f"keys_file={tmp_path / 'keys.json'}",
                         "artifacts_dir=null"], tmp_path / "serve.log", number)


@pytest.fixture(scope="module")
def server(tiny_base_dir, serve_keys, tmp_path_factory):  # noqa: F811 - the fixture imported above
    work = tmp_path_factory.mktemp("lifecycle")
    config = yaml.safe_load(default_config_path().read_text())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Engine":  # one running call and one waiting: the rest is overload
            deployment.update(max_ongoing_requests=1, max_queued_requests=1)
    config_path = work / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cert, key = self_signed_cert(work / "tls")
    port, grpc_port = free_port(), free_port()
    args = [str(config_path), "host=0.0.0.0", f"base_model={tiny_base_dir}", f"keys_file={serve_keys[0]}", "artifacts_dir=null",
            "api_keys_env=null", "cache.enabled=false", f"port={port}", f"grpc_port={grpc_port}",
            f"stop_timeout_s={STOP_TIMEOUT_S}", f"security.tls_certfile={cert}", f"security.tls_keyfile={key}"]
    log = work / "serve.log"
    proc = _serve(args, log)
    deadline = time.monotonic() + 300
    while "serving at" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    url = f"https://127.0.0.1:{port}"
    instance = httpx.get(f"{url}/ready", timeout=10, verify=str(cert)).headers[INSTANCE_HEADER]
    yield {"proc": proc, "url": url, "port": port, "grpc_port": grpc_port, "args": args, "log": log,
           "instance": instance, "keys": serve_keys[1], "work": work, "verify": str(cert),
           "grpc_tls": grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _http_completion(url: str, verify: str, key: str, prompt: str, max_tokens: int = 48,
                     timeout: float = 120) -> tuple[int, float, str]:
    started = time.monotonic()
    reply = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                       verify=verify, json={"model": "base", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    return reply.status_code, time.monotonic() - started, reply.text


def _grpc_generate(target: str, tls: grpc.ChannelCredentials, key: str, i: int) -> tuple[grpc.StatusCode, float]:
    from service.grpc.gen.tuneserve.v1 import inference_pb2, inference_pb2_grpc

    started = time.monotonic()
    with grpc.secure_channel(target, tls) as channel:
        try:
            inference_pb2_grpc.InferenceStub(channel).Generate(
                inference_pb2.GenerateRequest(model="base", prompt=f"rpc {i}:", max_tokens=48, temperature=0),
                metadata=(("authorization", f"Bearer {key}"),), timeout=120)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
    return code, time.monotonic() - started


@pytest.mark.integration
@pytest.mark.ray
def test_direct_ingress_serves_https_only(server):
    """With one Ingress replica `tuneserve serve` lets that replica serve the public port itself
    (direct ingress): TLS holds there too, with the same cert settings as Ray's proxy."""
    assert "direct ingress: the Ingress replica serves this port" in server["log"].read_text()
    status, _, text = _http_completion(server["url"], server["verify"], server["keys"]["infer"], "Hi", max_tokens=2,
                                       timeout=60)
    assert status == 200, text
    with pytest.raises(httpx.HTTPError):
        httpx.get(server["url"].replace("https://", "http://") + "/health", timeout=5)
    with pytest.raises(httpx.HTTPError):  # the self-signed cert is not trusted by default
        httpx.get(server["url"] + "/health", timeout=5)
    assert _grpc_serving(f"127.0.0.1:{server['grpc_port']}", server["grpc_tls"])
    assert not _grpc_serving(f"127.0.0.1:{server['grpc_port']}", None), "plaintext gRPC must not be answered"


@pytest.mark.integration
@pytest.mark.ray
def test_overload_is_refused_quickly_over_http_and_grpc(server):
    key, target = server["keys"]["infer"], f"127.0.0.1:{server['grpc_port']}"
    with ThreadPoolExecutor(12) as pool:
        http = [pool.submit(_http_completion, server["url"], server["verify"], key, f"request {i}:") for i in range(8)]
        rpcs = [pool.submit(_grpc_generate, target, server["grpc_tls"], key, i) for i in range(4)]
        http, rpcs = [f.result() for f in http], [f.result() for f in rpcs]
    served = [h for h in http if h[0] == 200] + [r for r in rpcs if r[0] == grpc.StatusCode.OK]
    refused_http = [h for h in http if h[0] == 503]
    refused_rpc = [r for r in rpcs if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert served and refused_http and refused_rpc, (http, rpcs)
    assert len(served) + len(refused_http) + len(refused_rpc) == 12, (http, rpcs)
    assert all("engine is busy" in h[2] for h in refused_http), refused_http
    assert max(t for _, t, *_ in refused_http + refused_rpc) < max(t for _, t, *_ in served)  # not queued


@pytest.mark.integration
@pytest.mark.ray
def test_a_second_start_on_its_ports_fails_at_once(server):
    assert "serving at" in server["log"].read_text()
    _refused_at_once(server["args"], server["work"] / "second.log", server["port"])
    grpc_only = [a for a in server["args"] if not a.startswith("port=")] + [f"port={free_port()}"]
    _refused_at_once(grpc_only, server["work"] / "third.log", server["grpc_port"])
    assert httpx.get(f"{server['url']}/ready", timeout=10, verify=server["verify"]).headers[INSTANCE_HEADER] \
        == server["instance"]


def _processes_of(instance: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(INSTANCE_ENV) == instance:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


@pytest.mark.integration
@pytest.mark.ray
def test_nothing_beyond_loopback_answers_without_a_key_or_token(server):
    """Ray's own ports (GCS, raylet, workers, dashboard, its Prometheus exporters) listen on 127.0.0.1 only
    (training.artifact.local_ray). Beyond it: the API ports, which follow `host` (0.0.0.0 here), Serve's
    proxy (moved to an internal port by direct ingress: the same app, so the same keys) and each replica's
    inter-deployment gRPC server (Ray binds it to every interface; it demands Ray's token)."""
    listening: dict[int, tuple[str, str]] = {}
    for proc in _processes_of(server["instance"]):
        try:
            name, sockets = proc.name(), proc.net_connections("tcp")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        listening.update({s.laddr.port: (s.laddr.ip, name) for s in sockets if s.status == psutil.CONN_LISTEN})
    beyond = {port: name for port, (ip, name) in listening.items()
              if not is_loopback(ip)}
    names = {name for _, name in listening.values()}
    assert len(listening) >= 8 and {"gcs_server", "raylet"} <= names, listening
    assert {server["port"], server["grpc_port"]} <= set(beyond), beyond
    assert all(name.startswith(("ray::ServeReplica", "ray::ProxyActor")) for name in beyond.values()), beyond
    for port, name in beyond.items():
        if port in (server["port"], server["grpc_port"]):
            continue
        if name == "ray::ProxyActor":
            assert httpx.get(f"https://127.0.0.1:{port}/v1/models", timeout=10, verify=server["verify"]).status_code \
                == 401, port
            continue
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (port, name, refused.value)


def _completion_ok(url: str, verify: str, key: str) -> bool:
    try:
        return _http_completion(url, verify, key, "after the kill", max_tokens=1, timeout=10)[0] == 200
    except httpx.HTTPError:
        return False


def _grpc_serving(target: str, tls: grpc.ChannelCredentials | None) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with (grpc.secure_channel(target, tls) if tls else grpc.insecure_channel(target)) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def _ingress_pids(instance: str) -> list[int]:
    return [p.pid for p in _processes_of(instance) if "ServeReplica:tuneserve:Ingress" in " ".join(p.cmdline())]


@pytest.mark.integration
@pytest.mark.ray
def test_a_sigkilled_ingress_process_comes_back_on_the_same_ports(server):
    """A `kill -9` of the Ingress replica while clients hold connections must not leave the port dead:
    Serve starts a replacement, which binds the very same ports again beside the killed connections'
    TIME_WAIT sockets."""
    from benchmarks.load_faults import wait_for  # (the R2 benchmark's own wait: seconds until, or None)

    url, key, target = server["url"], server["keys"]["infer"], f"127.0.0.1:{server['grpc_port']}"
    verify, tls = server["verify"], server["grpc_tls"]
    assert _completion_ok(url, verify, key) and _grpc_serving(target, tls)
    [victim] = _ingress_pids(server["instance"])
    listening = {c.laddr.port for c in psutil.Process(victim).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert {server["port"], server["grpc_port"]} <= listening, "direct ingress: the replica itself holds both ports"
    # clients holding keep-alive connections, as under load: the kernel closes their server ends when
    # the process dies, and those sockets (TIME_WAIT) hold the port for a minute
    held = [httpx.Client(base_url=url, timeout=10, verify=verify) for _ in range(4)]
    assert all(client.get("/ready").status_code == 200 for client in held)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(0.5)
    for client in held:
        client.close()
    assert wait_for(lambda: not _completion_ok(url, verify, key), 10) is not None, "the kill did not land"
    http_back = wait_for(lambda: _completion_ok(url, verify, key), RECOVERY_S + 60)
    http_s = None if http_back is None else time.monotonic() - killed
    grpc_back = wait_for(lambda: _grpc_serving(target, tls), RECOVERY_S + 60)
    grpc_s = None if grpc_back is None else time.monotonic() - killed
    assert http_s is not None and http_s <= RECOVERY_S, f"HTTP on port {server['port']} back after {http_s} s"
    assert grpc_s is not None and grpc_s <= RECOVERY_S, f"gRPC on port {server['grpc_port']} back after {grpc_s} s"
    new = _ingress_pids(server["instance"])
    assert new and victim not in new, new


@pytest.mark.integration
@pytest.mark.ray
def test_one_sigterm_stops_the_server_and_frees_its_ports(server):
    assert _processes_of(server["instance"]), "the server's processes carry its instance id"
    started = time.monotonic()
    server["proc"].send_signal(signal.SIGTERM)
    try:
        server["proc"].wait(timeout=STOP_TIMEOUT_S + 40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"one SIGTERM did not stop the server:\n{server['log'].read_text()[-3000:]}")
    log = server["log"].read_text()
    assert server["proc"].returncode == 0 or "killed this server's Ray processes" in log, log[-3000:]
    deadline = time.monotonic() + 15
    while _processes_of(server["instance"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_of(server["instance"]), "processes of the stopped server still run"
    assert bindable("127.0.0.1", server["port"]) and bindable("127.0.0.1", server["grpc_port"])
    print(f"stopped in {time.monotonic() - started:.1f} s with exit code {server['proc'].returncode}")
