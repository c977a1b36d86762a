"""docker-compose stack, Dockerfile, entrypoint and the Ray Serve config, checked offline
(Docker cannot run here): services and mounts exist, hosts and ports agree between the compose
file, prometheus.yml and Grafana provisioning, torch is installed from the CPU index before
the project, only the API ports are published and Ray runs with token auth and a local-only
dashboard (the entrypoint runs against stand-in `ray`/`serve` commands), and the serve config
validates against Ray Serve's schema and ServiceSettings.
Run: pytest tests/test_deploy_compose.py
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import DEPLOY, REPO_ROOT, load_yaml

COMPOSE = load_yaml(DEPLOY / "docker-compose.yml")


def test_compose_has_service_and_observability_stack():
    assert set(COMPOSE["services"]) == {"tuneserve", "prometheus", "alertmanager", "grafana"}
    build = COMPOSE["services"]["tuneserve"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO_ROOT and (context / build["dockerfile"]).is_file()


def test_compose_bind_mounts_and_named_volumes_exist():
    named = set(COMPOSE["volumes"])
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} not declared"
    for secret in COMPOSE["services"]["tuneserve"]["secrets"]:
        assert secret["source"] in COMPOSE["secrets"]
        assert secret["target"] == "/etc/tuneserve/keys.json"
    assert "keys.json" in (DEPLOY / ".gitignore").read_text().split()
    scrape_key = COMPOSE["services"]["prometheus"]["secrets"]  # /metrics needs a `metrics` key
    assert [(s["source"], s["target"]) for s in scrape_key] == [("metrics-key", "/etc/prometheus/metrics.key")]
    assert COMPOSE["secrets"]["metrics-key"]["file"] == "./metrics.key"
    assert "metrics.key" in (DEPLOY / ".gitignore").read_text().split()


def test_prometheus_and_grafana_point_at_compose_services():
    hosts = set(COMPOSE["services"])
    prom = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "tuneserve")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert {t.split(":")[0] for t in targets} == {"tuneserve"}
    assert "tuneserve:8000" in targets
    alertmanager = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    assert alertmanager.split(":")[0] in hosts
    sources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "tuneserve.yml")["datasources"]
    for source in sources:
        assert re.match(r"http://([a-z-]+):\d+", source["url"]).group(1) in hosts
    mounts = COMPOSE["services"]["prometheus"]["volumes"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in mounts
    assert all(rule.startswith("rules/") for rule in prom["rule_files"])


def test_dockerfile_installs_cpu_torch_before_the_project():
    text = (DEPLOY / "Dockerfile").read_text()
    torch_at = re.search(r'^RUN pip install --index-url "\$\{TORCH_INDEX_URL\}" "torch==', text, flags=re.M)
    project_at = re.search(r"^RUN pip install \. ", text, flags=re.M)
    assert torch_at and project_at and torch_at.start() < project_at.start()
    assert "whl/cpu" in text
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+)", text, flags=re.M):
        assert (REPO_ROOT / source).exists(), f"COPY source {source} missing"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert "!deploy/entrypoint.sh" in ignore and "!service/**" in ignore


def test_entrypoint_is_valid_shell():
    subprocess.run(["sh", "-n", str(DEPLOY / "entrypoint.sh")], check=True)
    text = (DEPLOY / "entrypoint.sh").read_text()
    assert "--metrics-export-port" in text and "serve run" in text


def test_only_the_api_ports_are_published():
    published = {name: service.get("ports", []) for name, service in COMPOSE["services"].items()}
    assert published["tuneserve"] == ["8000:8000", "9000:9000"]  # REST (and /metrics), gRPC
    for name, ports in published.items():
        if name != "tuneserve":  # observability UIs: this host only
            assert ports and all(p.startswith("127.0.0.1:") for p in ports), (name, ports)
    text = (DEPLOY / "docker-compose.yml").read_text() + (DEPLOY / "Dockerfile").read_text()
    for ray_port in ("8265", "6379", "10001"):  # dashboard and job API, GCS, Ray client
        assert ray_port not in text
    assert re.search(r"^\s+RAY_AUTH_MODE=token", (DEPLOY / "Dockerfile").read_text(), flags=re.M)


def test_grafana_has_no_default_password():
    password = COMPOSE["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password  # compose refuses to start unset
    assert COMPOSE["services"]["grafana"]["environment"]["GF_USERS_ALLOW_SIGN_UP"] == "false"


def _run_entrypoint(tmp_path, **env) -> tuple[subprocess.CompletedProcess, str]:
    """The entrypoint with stand-in `ray` and `serve` that record their arguments and auth env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    for tool in ("ray", "serve"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $* mode=$RAY_AUTH_MODE path=${{RAY_AUTH_TOKEN_PATH:-}}" >> {log}\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    python_dir = Path(sys.executable).parent  # the image's `python` is the project's
    base.update(PATH=f"{bin_dir}:{python_dir}:{os.environ['PATH']}", TUNESERVE_CACHE=str(tmp_path / "cache"), **env)
    result = subprocess.run(["sh", str(DEPLOY / "entrypoint.sh"), "--name", "x"], capture_output=True, text=True,
                            env=base, timeout=60)
    return result, log.read_text() if log.exists() else ""


def test_entrypoint_refuses_ray_without_token_auth(tmp_path):
    for mode in ({}, {"RAY_AUTH_MODE": "disabled"}):
        result, calls = _run_entrypoint(tmp_path, **mode)
        assert result.returncode == 2 and "RAY_AUTH_MODE must be 'token'" in result.stderr
        assert calls == ""


def test_entrypoint_starts_ray_with_a_private_token_and_a_local_dashboard(tmp_path):
    result, calls = _run_entrypoint(tmp_path, RAY_AUTH_MODE="token")
    assert result.returncode == 0, result.stderr
    ray_call, serve_call = calls.splitlines()
    token = tmp_path / "cache" / "ray" / "auth_token"  # service.launcher's convention
    assert ray_call.startswith("ray start --head") and "--dashboard-host=127.0.0.1" in ray_call
    assert f"mode=token path={token}" in ray_call and f"path={token}" in serve_call
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) >= 32
    assert serve_call.startswith("serve run --address=auto --name x /etc/tuneserve/serve_config.yaml")
    first = token.read_text()
    _run_entrypoint(tmp_path, RAY_AUTH_MODE="token")  # a restart keeps the token on the volume
    assert token.read_text() == first
    result, calls = _run_entrypoint(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="given")
    assert calls.splitlines()[-2].endswith("mode=token path=")  # a given token is used as it is


def test_serve_config_validates_against_ray_serve_and_service_settings():
    pytest.importorskip("ray.serve")
    from ray.serve.schema import ServeDeploySchema

    from service.settings import ServiceSettings

    config = load_yaml(DEPLOY / "serve_config.yaml")
    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    app = schema.applications[0]
    assert app.import_path == "service.app:app_builder"
    assert {d.name for d in app.deployments} == {"Engine", "Ingress"}
    assert all(d.autoscaling_config and d.ray_actor_options for d in app.deployments)
    settings = ServiceSettings.model_validate(config["applications"][0]["args"])
    assert str(settings.keys_file) == "/etc/tuneserve/keys.json"


@pytest.mark.parametrize("path", [DEPLOY / "serve_config.yaml", REPO_ROOT / "service" / "configs" / "serve.yaml"])
def test_shipped_serve_configs_find_a_dead_replica_within_two_seconds(path):
    """Serve replaces a replica whose process died only after its next health check fails: at Ray's 10 s
    period a killed Ingress left the port dead ~11 s, at 2 s ~6 s (service/configs/serve.yaml)."""
    deployments = load_yaml(path)["applications"][0]["deployments"]
    assert {d["name"] for d in deployments} == {"Engine", "Ingress"}
    for deployment in deployments:
        assert deployment.get("health_check_period_s", 10) <= 2, (path.name, deployment["name"])
        assert deployment.get("health_check_timeout_s", 30) >= 30, "a slow (not dead) replica keeps its time"
