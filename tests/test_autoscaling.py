"""Autoscaling on serving load: the Engine deployment goes from 1 to 2 replicas under concurrent
completions and back to 1 after the load stops. Ray Serve's autoscaler decides (on ongoing
requests per replica); the test runs a copy of `service/configs/serve.yaml` whose Engine
autoscaling has short delays and one CPU per replica, so two replicas fit on 2 cores.

    pytest -m slow tests/test_autoscaling.py        # about two minutes on 2 cores
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import yaml

from tests.service_fixtures import service_args

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

ENGINE_AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "metrics_interval_s": 0.5,
                      "look_back_period_s": 2, "upscale_delay_s": 1, "downscale_delay_s": 5}


def _engine_replicas(app_name: str) -> int:
    from ray import serve

    states = serve.status().applications[app_name].deployments["Engine"].replica_states
    return sum(n for state, n in states.items() if str(state).endswith("RUNNING"))


def _wait_for(what: str, check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _config(tmp_path) -> str:
    from service.launcher import default_config_path
    from training.artifact.config import read_yaml

    config = read_yaml(default_config_path())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Engine":
            deployment["autoscaling_config"] = dict(ENGINE_AUTOSCALING)
            deployment["ray_actor_options"] = {"num_cpus": 1}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_engine_scales_up_under_load_and_back_down(tiny_base_dir, service_artifacts, serve_keys, tmp_path,
                                                   monkeypatch):
    from service.launcher import start, stop
    from tests.service_fixtures import free_port

    monkeypatch.setenv("RAY_TMPDIR", "/tmp/ts-ray-autoscale")
    args = service_args(tiny_base_dir, service_artifacts, serve_keys[0], port=free_port(), grpc_port=None)
    overrides = [f"{k}={'null' if v is None else v}" for k, v in args.items()] + ["cache.enabled=false"]
    server = start(_config(tmp_path), overrides, num_cpus=2)
    headers = {"Authorization": f"Bearer {serve_keys[1]['infer']}"}
    stop_load = threading.Event()
    answered: list[int] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            while not stop_load.is_set():
                body = {"model": ("a1", "a2", "a3")[i % 3], "prompt": f"Request {i}: tell a story", "max_tokens": 48,
                        "temperature": 0.8, "seed": len(answered)}
                answered.append(http.post("/v1/completions", json=body).status_code)

    try:
        assert _engine_replicas(server.app_name) == 1
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(12)]
        for thread in threads:
            thread.start()
        try:
            _wait_for("a second Engine replica under load", lambda: _engine_replicas(server.app_name) == 2, 120)
        finally:
            stop_load.set()
            for thread in threads:
                thread.join(timeout=120)
        assert answered and set(answered) == {200}, sorted(set(answered))
        _wait_for("the Engine to scale back to one replica", lambda: _engine_replicas(server.app_name) == 1, 120)
    finally:
        stop()
