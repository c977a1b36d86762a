"""Kubernetes manifests in k8s/: generated files are up to date, every manifest validates
offline against the Kubernetes and CRD schemas (../shared/schemas/k8s/validate.py), the
kustomization renders, and the pieces agree with each other and with deploy/ (serve config,
rules, dashboards, metric ports, the keys secret).
`kubectl apply --dry-run=client` is not used: it needs a reachable API server.
Run: pytest tests/test_k8s_manifests.py
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from deploy_support import DEPLOY, K8S, REPO_ROOT, load_script, load_yaml, rule_files, run_tool

VALIDATOR = REPO_ROOT.parent / "shared" / "schemas" / "k8s" / "validate.py"
KUSTOMIZATION = load_yaml(K8S / "kustomization.yaml")
RESOURCES = [K8S / name for name in KUSTOMIZATION["resources"]]


ALL_DOCS = [doc for path in RESOURCES for doc in yaml.safe_load_all(path.read_text())]
DOCS = {}  # the first document of each kind (the keys Secret comes before the metrics-key Secret)
for _doc in ALL_DOCS:
    DOCS.setdefault(_doc["kind"], _doc)


def _validate(*paths) -> subprocess.CompletedProcess:
    if not VALIDATOR.is_file():
        pytest.skip(f"k8s schema validator not found at {VALIDATOR}")
    strict = ["--strict"] if importlib.util.find_spec("kubernetes_validate") else []
    return subprocess.run([sys.executable, str(VALIDATOR), *strict, *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_generated_manifests_are_up_to_date():
    for path, text in load_script("k8s/generate.py").render().items():
        assert path.read_text() == text, f"{path.name} is stale: run python k8s/generate.py"


def test_manifests_validate_against_schemas():
    result = _validate(*RESOURCES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALL_DOCS)} ok, 0 failed" in result.stdout


def test_kustomization_renders_and_validates(tmp_path):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = list(yaml.safe_load_all(rendered.stdout))
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"tuneserve"}
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered.stdout)
    result = _validate(out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rayservice_embeds_the_serve_config():
    spec = DOCS["RayService"]["spec"]
    assert yaml.safe_load(spec["serveConfigV2"]) == load_yaml(DEPLOY / "serve_config.yaml")
    app = yaml.safe_load(spec["serveConfigV2"])["applications"][0]
    assert app["import_path"] == "service.app:app_builder"
    assert {"artifacts_dir", "base_model", "keys_file"} <= set(app["args"])
    assert {d["name"] for d in app["deployments"]} == {"Engine", "Ingress"}


def _pod_templates() -> list[dict]:
    cluster = DOCS["RayService"]["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"], *[g["template"] for g in cluster["workerGroupSpecs"]]]


def test_pods_have_resources_and_mount_the_keys_secret_where_the_service_reads_it():
    keys_file = yaml.safe_load(DOCS["RayService"]["spec"]["serveConfigV2"])["applications"][0]["args"]["keys_file"]
    secret = DOCS["Secret"]
    assert "keys.json" in secret["stringData"]
    json.loads(secret["stringData"]["keys.json"])
    for template in _pod_templates():
        container = template["spec"]["containers"][0]
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mount = next(m for m in container["volumeMounts"] if volumes[m["name"]].get("secret"))
        assert volumes[mount["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
        assert f"{mount['mountPath']}/keys.json" == keys_file


def test_podmonitor_selects_the_ray_pods_and_their_metric_ports():
    monitor = DOCS["PodMonitor"]["spec"]
    selector = monitor["selector"]["matchLabels"]
    for template in _pod_templates():
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert labels[monitor["jobLabel"]] == "tuneserve"  # the job name the alert rules use
        ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert {e["port"] for e in monitor["podMetricsEndpoints"]} <= ports
    serve = next(e for e in monitor["podMetricsEndpoints"] if e["port"] == "serve")
    credentials = serve["authorization"]["credentials"]  # /metrics needs a `metrics`-scope key
    secrets = {d["metadata"]["name"]: d for d in ALL_DOCS if d["kind"] == "Secret"}
    assert serve["authorization"]["type"] == "Bearer" and credentials["key"] in secrets[credentials["name"]]["stringData"]


def test_prometheusrule_holds_exactly_the_rule_files(tmp_path):
    groups = [g for path in rule_files() for g in load_yaml(path)["groups"]]
    assert DOCS["PrometheusRule"]["spec"]["groups"] == groups
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": DOCS["PrometheusRule"]["spec"]["groups"]}))
    result = run_tool("promtool", "check", "rules", extracted)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_configmap_holds_the_dashboard_json():
    configmap = DOCS["ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = {p.name: json.loads(p.read_text()) for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert {name: json.loads(text) for name, text in configmap["data"].items()} == committed
    size = len(json.dumps(configmap))
    assert size < 262144, "too big for kubectl's client-side apply annotation; split the ConfigMap"
