"""k8s/rayjob-train.yaml: valid against the RayJob CRD and Kubernetes schemas, its training config
(the ConfigMap plus the entrypoint's flags) is a valid multi-GPU Ray Train config, and its cluster wants
Ray's token and runs as non-root like the RayService's."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = REPO_ROOT / "k8s" / "rayjob-train.yaml"
VALIDATOR = REPO_ROOT.parent / "shared" / "schemas" / "k8s" / "validate.py"


def _validate(path: Path) -> subprocess.CompletedProcess:
    if not VALIDATOR.is_file():
        pytest.skip(f"schema validator not found at {VALIDATOR}")
    return subprocess.run([sys.executable, str(VALIDATOR), "--strict", str(path)], capture_output=True, text=True,
                          timeout=120)


def _documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8"))}


def test_rayjob_manifest_passes_the_crd_schema():
    result = _validate(MANIFEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RayJob/tuneserve-train" in result.stdout and "0 failed" in result.stdout


def test_a_misspelt_rayjob_field_fails_the_same_check(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(MANIFEST.read_text(encoding="utf-8").replace("shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
                      encoding="utf-8")
    result = _validate(broken)
    assert result.returncode == 1 and "shutdownAfterJobFinish" in result.stdout


def test_the_job_trains_its_configmap_on_one_gpu_per_worker(tmp_path):
    from training.artifact.config import load_config
    from training.train.config import TrainConfig
    from tuneserve.commands.train import distributed_overrides

    docs = _documents()
    config = tmp_path / "train.yaml"
    config.write_text(docs["ConfigMap"]["data"]["train.yaml"], encoding="utf-8")
    argv = shlex.split(docs["RayJob"]["spec"]["entrypoint"])
    assert argv[:3] == ["tuneserve", "train", "/etc/tuneserve-train/train.yaml"]
    rest = [a for a in argv[3:] if a != "--use-gpu"]
    flags = dict(zip(rest[::2], rest[1::2]))
    cfg = load_config(TrainConfig, config, distributed_overrides(flags["--backend"], int(flags["--workers"]),
                                                                  "--use-gpu" in argv, flags["--address"]))
    assert (cfg.distributed.backend, cfg.distributed.use_gpu, cfg.distributed.address) == ("ray", True, "auto")
    workers = docs["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = workers["replicas"] * int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert cfg.distributed.workers == gpus, "one Ray Train worker per GPU of the worker group"
    mounts = {m["mountPath"] for m in workers["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert cfg.output.startswith(tuple(mounts)) and cfg.distributed.storage.startswith(tuple(mounts)), \
        "artifact and checkpoints land on the shared volume the workers mount"


def test_the_job_is_submitted_from_inside_the_head_pod():
    """The NetworkPolicy admits only tuneserve pods to the head's job API; a submitter Job's pod is not one."""
    job = _documents()["RayJob"]["spec"]
    assert job["submissionMode"] == "SidecarMode"
    assert job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["restartPolicy"] == "Never"
    policy = yaml.safe_load((REPO_ROOT / "k8s" / "base" / "networkpolicy.yaml").read_text(encoding="utf-8"))
    dashboard_from = [rule["from"] for rule in policy["spec"]["ingress"]
                      if {"port": "dashboard", "protocol": "TCP"} in rule.get("ports", [])]
    assert dashboard_from and all("namespaceSelector" in peer for peers in dashboard_from for peer in peers), \
        "the job API is closed to other pods, so a K8sJobMode submitter could not reach it"


def test_the_training_cluster_wants_rays_token_and_runs_hardened():
    cluster = _documents()["RayJob"]["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}, "its dashboard (job API) listens on the pod network"
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
