"""Kubernetes manifests in k8s/ (base + overlays dev, prod, gpu), checked offline: generated
files are current, `kubectl kustomize` builds every overlay, every rendered document validates
against the CRD schemas (../shared/schemas/k8s/validate.py) and, for core kinds, against
kubernetes-validate's bundled schemas, and the pieces agree with each other and with deploy/
(serve config, rules, dashboards, metric ports, the keys secret), with no open door: Ray token
auth, a NetworkPolicy that opens only the API ports to everyone, non-root pods.
`kubectl apply --dry-run=client` is not used: it needs a reachable API server.
Run: pytest tests/test_k8s_manifests.py
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from deploy_support import DEPLOY, K8S, REPO_ROOT, load_script, load_yaml, rule_files, run_tool

VALIDATOR = REPO_ROOT.parent / "shared" / "schemas" / "k8s" / "validate.py"
OVERLAYS = ["dev", "prod", "gpu"]
GENERATOR = load_script("k8s/generate.py")


def _validate(*paths) -> subprocess.CompletedProcess:
    """validate.py --strict: CRs against the CRDs, core kinds with kubernetes-validate (a dev dependency)."""
    if not VALIDATOR.is_file():
        pytest.skip(f"k8s schema validator not found at {VALIDATOR}")
    import kubernetes_validate  # noqa: F401 - without it core kinds would only be SKIPped

    return subprocess.run([sys.executable, str(VALIDATOR), "--strict", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def rendered(overlay: str) -> str:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (it builds the kustomizations)")
    result = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def docs(overlay: str) -> list[dict]:
    return list(yaml.safe_load_all(rendered(overlay)))


def one(overlay: str, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs(overlay) if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{overlay}: {len(found)} {kind} {name or ''}"
    return found[0]


def templates(overlay: str) -> list[dict]:
    cluster = one(overlay, "RayService")["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"], *[g["template"] for g in cluster["workerGroupSpecs"]]]


def serve_config(overlay: str) -> dict:
    return yaml.safe_load(one(overlay, "RayService")["spec"]["serveConfigV2"])


def test_generated_manifests_are_up_to_date():
    for path, text in GENERATOR.render().items():
        assert path.read_text() == text, f"{path.name} is stale: run python k8s/generate.py"
    check = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_base_manifests_validate():
    files = [K8S / "base" / name for name in load_yaml(K8S / "base" / "kustomization.yaml")["resources"]]
    result = _validate(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed, 0 not checked" in result.stdout.splitlines()[-1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_every_document_validates(overlay, tmp_path):
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(rendered(overlay))
    result = _validate(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(docs(overlay))} ok, 0 failed, 0 not checked" in result.stdout
    namespaces = {d["metadata"].get("namespace") for d in docs(overlay) if d["kind"] != "Namespace"}
    assert namespaces == {one(overlay, "Namespace")["metadata"]["name"]}
    assert one(overlay, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayservice_runs_the_one_serve_config_with_both_autoscalers(overlay):
    config = serve_config(overlay)
    source = load_yaml(DEPLOY / "serve_config.yaml")
    if overlay == "gpu":  # the same config, with one GPU per Engine replica and the models on it in bfloat16
        engine = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Engine")
        assert engine["ray_actor_options"].pop("num_gpus") == 1
        args = config["applications"][0]["args"]
        assert (args.pop("device"), args.pop("dtype")) == ("cuda", "bfloat16")
    assert config == source
    spec = one(overlay, "RayService")["spec"]
    assert spec["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert all(d["autoscaling_config"]["max_replicas"] > d["autoscaling_config"]["min_replicas"]
               for d in config["applications"][0]["deployments"])
    app = config["applications"][0]
    assert app["import_path"] == "service.app:app_builder" and {"artifacts_dir", "keys_file"} <= set(app["args"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_token_auth_and_non_root_hardened_pods(overlay):
    cluster = one(overlay, "RayService")["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] is False
    for template in templates(overlay):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
            assert context["readOnlyRootFilesystem"] is True, container["name"]
        ray = pod["containers"][0]
        assert ray["resources"]["requests"] == ray["resources"]["limits"] and ray["resources"]["requests"]["cpu"]
        assert "local_raylet_healthz" in ray["livenessProbe"]["exec"]["command"][-1]
        mounts = {m["mountPath"] for m in ray["volumeMounts"]}
        assert {"/tmp", "/tmp/ray", "/home/ray", "/var/lib/tuneserve"} <= mounts  # writable despite the read-only root
    for group in cluster["workerGroupSpecs"]:  # a worker is ready once its Serve proxy is
        assert "8000/-/healthz" in group["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"][-1]


def _reachable(policy: dict) -> dict[str, list]:
    """Container port name -> the peers ('*' for anyone) the NetworkPolicy admits to it from
    outside the tuneserve pods."""
    reach: dict[str, list] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports") or rule.get("from"), "a rule with neither ports nor from opens every port"
        if "ports" not in rule:
            assert rule["from"] == [{"podSelector": policy["spec"]["podSelector"]}], "only Ray's own pods reach every port"
            continue
        for port in rule["ports"]:
            reach.setdefault(port["port"], []).extend(rule.get("from") or ["*"])
    return reach


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_opens_only_the_api_to_everyone(overlay):
    policy = one(overlay, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for template in templates(overlay):
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    reach = _reachable(policy)
    assert {port for port, peers in reach.items() if "*" in peers} == {"serve", "grpc"}
    assert reach["dashboard"] == [GENERATOR.OPERATOR_PEER]  # the job and Serve REST API: the operator only
    assert reach["metrics"] == [GENERATOR.PROMETHEUS_PEER]
    assert "gcs-server" not in reach and "client" not in reach
    head_ports = {p["name"] for p in templates(overlay)[0]["spec"]["containers"][0]["ports"]}
    assert set(reach) <= head_ports
    service_ports = {p["targetPort"] for p in one(overlay, "RayService")["spec"]["serveService"]["spec"]["ports"]}
    assert service_ports == {8000, 9000}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_select_ray_pods_with_an_integer_min_available(overlay):
    budgets = {d["metadata"]["name"]: d for d in docs(overlay) if d["kind"] == "PodDisruptionBudget"}
    expected = {"dev": set(), "prod": {"tuneserve-workers", "tuneserve-head"}, "gpu": {"tuneserve-workers", "tuneserve-head"}}
    assert set(budgets) == expected[overlay]
    labels = [t["metadata"]["labels"] for t in templates(overlay)]
    for budget in budgets.values():
        assert isinstance(budget["spec"]["minAvailable"], int) and "maxUnavailable" not in budget["spec"]
        assert any(budget["spec"]["selector"]["matchLabels"].items() <= lab.items() for lab in labels)
    if overlay != "dev":
        workers = one(overlay, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        assert sum(g["minReplicas"] for g in workers) > budgets["tuneserve-workers"]["spec"]["minAvailable"]


def test_upgrade_strategies():
    assert one("dev", "RayService")["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    assert one("prod", "RayService")["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    gpu = one("gpu", "RayService")["spec"]["upgradeStrategy"]
    assert gpu["type"] == "NewClusterWithIncrementalUpgrade"
    assert {"gatewayClassName", "stepSizePercent", "intervalSeconds"} <= set(gpu["clusterUpgradeOptions"])


def test_gpu_overlay_places_engines_on_gpus_and_syncs_artifacts_from_object_storage():
    assert not [d for d in docs("gpu") if d["kind"] == "PersistentVolumeClaim"]
    uri = one("gpu", "ConfigMap", "tuneserve-artifacts")["data"]["uri"]
    assert uri.startswith("s3://")
    groups = {g["groupName"]: g for g in one("gpu", "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    for group in groups.values():
        spec = group["template"]["spec"]
        assert spec["containers"][0]["name"] == "ray-worker" and spec["containers"][0]["image"].endswith("-cuda")
        data = next(v for v in spec["volumes"] if v["name"] == "data")
        assert "emptyDir" in data
        syncs = [c for c in spec["initContainers"] + spec["containers"][1:] if "aws s3 sync" in c["command"][-1]]
        assert len(syncs) == 2  # before Ray starts, then every SYNC_EVERY_S beside it
        assert all(c["env"][0]["valueFrom"]["configMapKeyRef"]["name"] == "tuneserve-artifacts" for c in syncs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_mount_the_keys_secret_where_the_service_reads_it(overlay):
    keys_file = serve_config(overlay)["applications"][0]["args"]["keys_file"]
    secret = one(overlay, "Secret", "tuneserve-api-keys")
    json.loads(secret["stringData"]["keys.json"])
    for template in templates(overlay):
        container = template["spec"]["containers"][0]
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mount = next(m for m in container["volumeMounts"] if volumes[m["name"]].get("secret"))
        assert volumes[mount["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
        assert f"{mount['mountPath']}/keys.json" == keys_file


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_podmonitor_selects_the_ray_pods_and_their_metric_ports(overlay):
    monitor = one(overlay, "PodMonitor")["spec"]
    selector = monitor["selector"]["matchLabels"]
    for template in templates(overlay):
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert labels[monitor["jobLabel"]] == "tuneserve"  # the job name the alert rules use
        ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert {e["port"] for e in monitor["podMetricsEndpoints"]} <= ports
    serve = next(e for e in monitor["podMetricsEndpoints"] if e["port"] == "serve")
    credentials = serve["authorization"]["credentials"]  # /metrics needs a `metrics`-scope key
    assert serve["authorization"]["type"] == "Bearer"
    assert credentials["key"] in one(overlay, "Secret", credentials["name"])["stringData"]


def test_prometheusrule_holds_exactly_the_rule_files(tmp_path):
    rule = load_yaml(K8S / "base" / "prometheusrule.yaml")
    groups = [g for path in rule_files() for g in load_yaml(path)["groups"]]
    assert rule["spec"]["groups"] == groups
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = run_tool("promtool", "check", "rules", extracted)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_configmap_holds_the_dashboard_json():
    configmap = load_yaml(K8S / "base" / "grafana-dashboards.yaml")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = {p.name: json.loads(p.read_text()) for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert {name: json.loads(text) for name, text in configmap["data"].items()} == committed
    size = len(json.dumps(configmap))
    assert size < 262144, "too big for kubectl's client-side apply annotation; split the ConfigMap"
