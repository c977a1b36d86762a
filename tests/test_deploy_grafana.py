"""Grafana dashboards: the committed JSON equals what deploy/grafana/generate.py produces, every
panel query parses (promtool) and uses only contract metrics, the required dashboards and
variables exist, panels do not overlap, and provisioning points at them.
Run: pytest tests/test_deploy_grafana.py
"""

from __future__ import annotations

import json

import pytest
from deploy_support import DEPLOY, load_script, load_yaml, promql_parse_errors, unknown_metrics

DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"


@pytest.fixture(scope="module")
def generator():
    return load_script("deploy/grafana/generate.py")


@pytest.fixture(scope="module")
def boards(generator):
    return {board["uid"]: board for board in generator.build_dashboards().values()}


def test_committed_json_matches_generator(generator):
    outputs = generator.render()
    assert {p.name for p in outputs} == {p.name for p in DASHBOARD_DIR.glob("*.json")}
    for path, text in outputs.items():
        assert path.read_text() == text, f"{path.name} is stale: run python deploy/grafana/generate.py"
        json.loads(text)


def test_all_queries_parse_and_have_no_grafana_variables(generator, tmp_path):
    queries = generator.all_queries()
    assert len(queries) >= 40 and len(set(queries)) == len(queries)
    assert not [q for q in queries if "$" in q]
    assert promql_parse_errors(queries, tmp_path) == ""


def test_queries_use_only_contract_metrics_and_recording_rules(generator):
    unknown = {name for pq in generator.panel_queries() for name in unknown_metrics(pq.expr)}
    assert not unknown


def test_panel_queries_name_their_panel(generator):
    queries = generator.panel_queries()
    assert {pq.dashboard for pq in queries} == {"tuneserve-overview", "tuneserve-adapter", "tuneserve-drift", "tuneserve-security"}
    assert all(pq.panel for pq in queries)


def _exprs(board: dict) -> str:
    return "\n".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))


def test_overview_covers_traffic_latency_errors_saturation_ttft(boards):
    exprs = _exprs(boards["tuneserve-overview"])
    for needle in ["histogram_quantile(0.5, ", "histogram_quantile(0.95, ", "histogram_quantile(0.99, ",
                   "tuneserve_time_to_first_token_seconds_bucket", "tuneserve_queue_depth", "tuneserve_requests_total",
                   'code=~"(?i)5..']:
        assert needle in exprs, needle


def test_adapter_and_drift_dashboards_filter_by_adapter_variable(boards):
    for uid in ["tuneserve-adapter", "tuneserve-drift"]:
        board = boards[uid]
        variable = next(v for v in board["templating"]["list"] if v["name"] == "adapter")
        assert variable["definition"] == "label_values(tuneserve_requests_total, adapter)"
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                assert "$adapter" in target["expr"], (uid, panel["title"])
    drift = _exprs(boards["tuneserve-drift"])
    assert "tuneserve_drift_score" in drift and "tuneserve_drift_threshold" in drift


def test_security_dashboard_covers_abuse_signals(boards):
    exprs = _exprs(boards["tuneserve-security"])
    for metric in ["tuneserve_auth_failures_total", "tuneserve_rate_limited_total", "tuneserve_blocked_clients",
                   "tuneserve_key_client_addresses"]:
        assert metric in exprs, metric


def test_panels_have_unique_ids_and_do_not_overlap(boards):
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        cells = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
            area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not area & cells, (board["uid"], panel["title"])
            cells |= area


def test_provisioning_matches_dashboards(boards):
    sources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "tuneserve.yml")["datasources"]
    default = next(s for s in sources if s.get("isDefault"))
    assert default["type"] == "prometheus"
    for board in boards.values():
        variable = board["templating"]["list"][0]
        assert variable["type"] == "datasource" and variable["current"]["value"] == default["uid"]
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "tuneserve.yml")["providers"][0]
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    assert any(v.endswith(":" + provider["options"]["path"] + ":ro") for v in grafana_volumes)
