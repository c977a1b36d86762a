"""docker-compose stack, Dockerfile, entrypoint and the Ray Serve config, checked offline
(Docker cannot run here): services and mounts exist, hosts and ports agree between the compose
file, prometheus.yml and Grafana provisioning, torch is installed from the CPU index before
the project, and the serve config validates against Ray Serve's schema and ServiceSettings.
Run: pytest tests/test_deploy_compose.py
"""

from __future__ import annotations

import re
import subprocess

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
