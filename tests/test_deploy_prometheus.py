"""Prometheus rules, Prometheus config and Alertmanager config: static checks with promtool and
amtool, the rules' unit tests (`promtool test rules`), alert metadata and runbook anchors, and
that the generated SLO rules are up to date.  Run: pytest tests/test_deploy_prometheus.py
"""

from __future__ import annotations

import re

import pytest
import yaml
from deploy_support import (
    DEPLOY, REPO_ROOT, alert_rules, load_script, load_yaml, rule_files, run_tool, unknown_metrics,
)

PROM_DIR = DEPLOY / "prometheus"
AM_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"


def test_rule_files_pass_promtool_check():
    result = run_tool("promtool", "check", "rules", *rule_files())
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass():
    tests = sorted((PROM_DIR / "tests").glob("*_test.yml"))
    assert tests
    result = run_tool("promtool", "test", "rules", *tests, cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_and_alert_is_unit_tested():
    tested_files, tested_alerts = set(), set()
    for path in (PROM_DIR / "tests").glob("*_test.yml"):
        spec = load_yaml(path)
        tested_files.update((path.parent / f).resolve() for f in spec["rule_files"])
        for case in spec["tests"]:
            tested_alerts.update(t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts"))
    assert {p.resolve() for p in rule_files()} <= tested_files
    assert {r["alert"] for r in alert_rules()} <= tested_alerts


def _runbook_anchors() -> set[str]:
    headings = re.findall(r"^#+\s+(.+)$", RUNBOOKS.read_text(), flags=re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_alerts_carry_severity_summary_description_and_existing_runbook():
    anchors = _runbook_anchors()
    rules = alert_rules()
    assert len(rules) >= 15
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/runbooks.md" and anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/runbooks.md has no section for {rule['alert']}"


def test_required_alert_kinds_exist():
    joined = "\n".join(r["expr"] for r in alert_rules())
    assert 'up{job="tuneserve"} == 0' in joined
    assert 'absent(up{job="tuneserve"})' in joined
    assert re.search(r"tuneserve_drift_score > on \([^)]*\) tuneserve_drift_threshold", joined)
    assert "tuneserve_auth_failures_total" in joined and "tuneserve_rate_limited_total" in joined
    assert "tuneserve_queue_capacity" in (PROM_DIR / "rules" / "service.yml").read_text()
    assert "histogram_quantile(0.95" in (PROM_DIR / "rules" / "service.yml").read_text()
    burn = [r for r in alert_rules() if r["alert"].endswith("BudgetBurn")]
    assert {r["labels"]["severity"] for r in burn} == {"critical", "warning"}


def test_drift_alerts_wait_before_firing():
    for rule in alert_rules():
        if "drift" in rule["expr"]:
            assert rule.get("for"), rule["alert"]


def test_slo_rules_are_generated_from_script():
    module = load_script("deploy/prometheus/generate_slo.py")
    for path, text in module.render().items():
        assert path.read_text() == text, f"{path} is stale: run python deploy/prometheus/generate_slo.py"


def test_prometheus_config_is_valid_and_scrapes_tuneserve(tmp_path):
    """promtool checks that the scrape key file exists: check the committed config with the
    compose mount points (key file, rules) mapped to real paths, nothing else changed."""
    config = load_yaml(PROM_DIR / "prometheus.yml")
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "tuneserve")
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/etc/prometheus/metrics.key"}
    (tmp_path / "metrics.key").write_text("tsk_000000000000_placeholder")
    job["authorization"]["credentials_file"] = str(tmp_path / "metrics.key")
    config["rule_files"] = [str(PROM_DIR / rule) for rule in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = run_tool("promtool", "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]


def test_alertmanager_config_is_valid():
    result = run_tool("amtool", "check-config", AM_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("labels, receiver", [
    (["severity=critical", "alertname=TuneserveTargetDown"], "pager"),
    (["severity=warning", "alertname=TuneserveDriftDetected", "adapter=a"], "ticket"),
])
def test_alertmanager_routes_by_severity(labels, receiver):
    result = run_tool("amtool", "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [receiver]


def test_alertmanager_inhibits_warning_by_critical_of_same_alert():
    config = load_yaml(AM_CONFIG)
    rule = config["inhibit_rules"][0]
    assert rule["source_matchers"] == ['severity="critical"'] and rule["target_matchers"] == ['severity="warning"']
    assert {"alertname", "adapter"} <= set(rule["equal"])
    assert config["route"]["group_by"]


def test_observability_doc_lists_every_alert():
    doc = (REPO_ROOT / "docs" / "observability.md").read_text()
    missing = {r["alert"] for r in alert_rules() if f"| `{r['alert']}` |" not in doc}
    assert not missing


def test_rules_use_only_contract_metrics():
    rules = [r for path in rule_files() for g in load_yaml(path)["groups"] for r in g["rules"]]
    unknown = {name for rule in rules for name in unknown_metrics(rule["expr"])}
    assert not unknown
