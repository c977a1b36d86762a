"""Helpers for the deploy/k8s tests: load the generator scripts by path (deploy/ is not a
package), find Prometheus tools, read YAML, and list the alert rules."""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
K8S = REPO_ROOT / "k8s"
APT_HINT = "install with: apt-get install -y prometheus prometheus-alertmanager"


def load_script(relative: str) -> ModuleType:
    """Import a script such as `deploy/grafana/generate.py` by its path."""
    path = REPO_ROOT / relative
    name = "deploy_" + "_".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed ({APT_HINT})")
    return path


def run_tool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [require_tool(str(args[0])), *map(str, args[1:])]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def alert_rules() -> list[dict]:
    return [rule for path in rule_files() for group in load_yaml(path)["groups"]
            for rule in group["rules"] if "alert" in rule]

# The metric contract the service exports (docs/observability.md); histograms add _bucket/_sum/_count.
CONTRACT_COUNTERS_GAUGES = {
    "tuneserve_requests_total", "tuneserve_prompt_tokens_total", "tuneserve_completion_tokens_total",
    "tuneserve_queue_depth", "tuneserve_queue_capacity", "tuneserve_cache_requests_total",
    "tuneserve_adapter_loads_total", "tuneserve_adapter_evictions_total", "tuneserve_adapters_loaded",
    "tuneserve_model_load_seconds", "tuneserve_auth_failures_total", "tuneserve_rate_limited_total",
    "tuneserve_blocked_clients", "tuneserve_key_client_addresses", "tuneserve_prompt_injection_suspected_total",
    "tuneserve_drift_score", "tuneserve_drift_threshold", "tuneserve_drift_window_samples",
    "tuneserve_process_resident_memory_bytes", "tuneserve_online_quality", "tuneserve_online_quality_samples",
    "tuneserve_feedback_total",
}
CONTRACT_HISTOGRAMS = {
    "tuneserve_request_duration_seconds", "tuneserve_time_to_first_token_seconds",
    "tuneserve_inter_token_latency_seconds", "tuneserve_queue_wait_seconds", "tuneserve_batch_size",
    "tuneserve_prefill_seconds", "tuneserve_decode_seconds",
}


def contract_metric_names() -> set[str]:
    histogram_series = {f"{h}_{s}" for h in CONTRACT_HISTOGRAMS for s in ("bucket", "sum", "count")}
    return CONTRACT_COUNTERS_GAUGES | histogram_series


@functools.lru_cache(maxsize=1)
def recorded_names() -> frozenset[str]:
    return frozenset(rule["record"] for path in rule_files() for group in load_yaml(path)["groups"]
                     for rule in group["rules"] if "record" in rule)


def unknown_metrics(expr: str) -> set[str]:
    """Names in `expr` that are neither in the metric contract nor recording rules."""
    names = set(re.findall(r"\btuneserve[_:][a-z0-9_:]*", expr))
    return names - contract_metric_names() - recorded_names()


def promql_parse_errors(exprs: list[str], tmp_path: Path) -> str:
    """Parse every expression with `promtool check rules` (as recording rules); '' when all parse."""
    rules = {"groups": [{"name": "parse", "rules": [{"record": f"q_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run_tool("promtool", "check", "rules", path)
    return "" if result.returncode == 0 else result.stdout + result.stderr
