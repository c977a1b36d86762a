"""Generate the tuneserve Grafana dashboards (JSON in `deploy/grafana/dashboards/`).

    python deploy/grafana/generate.py           # rewrite the JSON files
    python deploy/grafana/generate.py --check   # exit 1 if the committed JSON is stale

Dashboards: overview (traffic, latency, errors, saturation, TTFT), per-adapter (template
variable `adapter`), drift (scores vs configured thresholds), security (auth failures,
rate limiting, blocked clients, keys used from many addresses).

`all_queries()` returns every panel's PromQL with the Grafana variables replaced by values
Prometheus accepts, so a test can run each one against a real server; `panel_queries()`
gives the same with dashboard and panel titles. Import this file by path (deploy/ is not
a package): `importlib.util.spec_from_file_location("generate", "deploy/grafana/generate.py")`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from genutil import DASHBOARDS_DIR, SERVER_ERROR_CODES, SLI_FILTER, generator_main  # noqa: E402
from panels import (  # noqa: E402
    RATE, Panel, Row, dashboard, fraction, label_variable, panel_exprs, q, quantile, quantile_queries, rate, ratio, stat, table,
)

ERRORS = f'code=~"{SERVER_ERROR_CODES}"'
ADAPTER = 'adapter=~"$adapter"'
DRIFT_FEATURES = ["prompt_length", "token_oov", "embedding", "label", "confidence"]
# What all_queries() substitutes for Grafana's variables.
VARIABLE_VALUES = {"$__rate_interval": "5m", "$adapter": ".*", "$__range": "1h"}


def adapter_variable() -> dict:
    return label_variable("adapter", "tuneserve_requests_total", "adapter", "Adapters that served requests")


def error_ratio(selector: str = "", by: str = "") -> str:
    sep = ", " if selector else ""
    return fraction(rate("tuneserve_requests_total", f"{selector}{sep}{ERRORS}", by), rate("tuneserve_requests_total", selector, by))


def overview() -> dict:
    items = [
        Row("Now"),
        stat("Requests/s", rate("tuneserve_requests_total"), "reqps"),
        stat("Server error ratio", error_ratio(), "percentunit", [(None, "green"), (0.01, "orange"), (0.05, "red")]),
        stat("p95 latency", quantile(0.95, "tuneserve_request_duration_seconds", SLI_FILTER), "s",
             [(None, "green"), (5, "orange"), (10, "red")]),
        stat("Scrape targets up", 'sum(up{job="tuneserve"})', "short", [(None, "red"), (1, "green")]),
        Row("Traffic"),
        Panel("Requests/s by transport", [q(rate("tuneserve_requests_total", by="transport"), "{{transport}}")], "reqps", stack=True),
        Panel("Requests/s by status code", [q(rate("tuneserve_requests_total", by="code"), "{{code}}")], "reqps", stack=True),
        Panel("Tokens/s", [q(rate("tuneserve_prompt_tokens_total"), "prompt"),
                           q(rate("tuneserve_completion_tokens_total"), "completion")], "short"),
        Panel("Requests/s by adapter", [q(rate("tuneserve_requests_total", by="adapter"), "{{adapter}}")], "reqps", stack=True),
        Row("Latency"),
        Panel("Request duration", quantile_queries("tuneserve_request_duration_seconds", SLI_FILTER), "s"),
        Panel("Time to first token", quantile_queries("tuneserve_time_to_first_token_seconds"), "s"),
        Panel("Inter-token latency", quantile_queries("tuneserve_inter_token_latency_seconds"), "s"),
        Panel("Queue wait", quantile_queries("tuneserve_queue_wait_seconds"), "s"),
        Row("Errors and SLOs"),
        Panel("Server error ratio by transport", [q(error_ratio(by="transport"), "{{transport}}")], "percentunit",
              thresholds=[(None, "green"), (0.05, "red")], show_thresholds=True),
        Panel("Error budget burn rate (1h)", [
            q("tuneserve:slo_availability_bad:ratio_rate1h / 0.005", "availability {{adapter}}"),
            q("tuneserve:slo_latency_bad:ratio_rate1h / 0.01", "latency {{adapter}}")], "short",
            description="1 = spending the 30-day budget exactly; the fast-burn page fires at 14.4.",
            thresholds=[(None, "green"), (1, "orange"), (14.4, "red")], show_thresholds=True),
        Row("Saturation"),
        Panel("Queue depth and capacity", [q("sum(tuneserve_queue_depth)", "depth"),
                                           q("sum(tuneserve_queue_capacity)", "capacity")], "short"),
        Panel("Queue utilisation", [q("tuneserve:queue_utilization:ratio", "{{instance}}")], "percentunit",
              thresholds=[(None, "green"), (0.8, "orange"), (0.95, "red")], show_thresholds=True, min=0, max=1),
        Panel("Batch size", [q(ratio(rate("tuneserve_batch_size_sum"), rate("tuneserve_batch_size_count")), "mean"),
                             *quantile_queries("tuneserve_batch_size", phis=(0.95,))], "short"),
        Panel("Cache hit ratio", [q(fraction(rate("tuneserve_cache_requests_total", 'result="hit"', "cache"),
                                          rate("tuneserve_cache_requests_total", by="cache")), "{{cache}}")],
              "percentunit", min=0, max=1),
        Panel("Healthy Ray Serve replicas", [q("sum by (application, deployment) (ray_serve_deployment_replica_healthy)",
                                               "{{application}}/{{deployment}}")], "short"),
        Panel("Resident memory", [q("tuneserve_process_resident_memory_bytes", "{{instance}}")], "bytes"),
        Panel("Adapters loaded", [q("sum(tuneserve_adapters_loaded)", "loaded")], "short"),
        Panel("Model load time", [q("max by (model) (tuneserve_model_load_seconds)", "{{model}}")], "s"),
    ]
    return dashboard("tuneserve-overview", "tuneserve / Overview",
                     "Traffic, latency, errors and saturation of the whole service.", items)


def per_adapter() -> dict:
    by = "adapter"
    items = [
        Row("Traffic"),
        Panel("Requests/s", [q(rate("tuneserve_requests_total", ADAPTER, by), "{{adapter}}")], "reqps"),
        Panel("Requests/s by status code", [q(rate("tuneserve_requests_total", ADAPTER, "adapter, code"),
                                              "{{adapter}} {{code}}")], "reqps"),
        Panel("Prompt tokens/s", [q(rate("tuneserve_prompt_tokens_total", ADAPTER, by), "{{adapter}}")], "short"),
        Panel("Completion tokens/s", [q(rate("tuneserve_completion_tokens_total", ADAPTER, by), "{{adapter}}")], "short"),
        Row("Latency"),
        Panel("Request duration", quantile_queries("tuneserve_request_duration_seconds", f"{ADAPTER}, {SLI_FILTER}", by), "s"),
        Panel("Time to first token", quantile_queries("tuneserve_time_to_first_token_seconds", ADAPTER, by), "s"),
        Panel("Inter-token latency", quantile_queries("tuneserve_inter_token_latency_seconds", ADAPTER, by, (0.5, 0.95)), "s"),
        Panel("Queue wait", quantile_queries("tuneserve_queue_wait_seconds", ADAPTER, by, (0.5, 0.95)), "s"),
        Row("Errors and SLOs"),
        Panel("Server error ratio", [q(error_ratio(ADAPTER, by), "{{adapter}}")], "percentunit",
              thresholds=[(None, "green"), (0.05, "red")], show_thresholds=True),
        Panel("SLO bad-event ratio (1h)", [
            q(f"tuneserve:slo_availability_bad:ratio_rate1h{{{ADAPTER}}}", "availability {{adapter}}"),
            q(f"tuneserve:slo_latency_bad:ratio_rate1h{{{ADAPTER}}}", "latency {{adapter}}")], "percentunit"),
        Row("Adapter lifecycle"),
        Panel("Adapter loads", [q(f"sum by (adapter, result) (increase(tuneserve_adapter_loads_total{{{ADAPTER}}}[{RATE}]))",
                                  "{{adapter}} {{result}}")], "short"),
        Panel("Adapter evictions", [q(f"sum by (adapter) (increase(tuneserve_adapter_evictions_total{{{ADAPTER}}}[{RATE}]))",
                                      "{{adapter}}")], "short"),
        Panel("Suspected prompt injections/s", [q(rate("tuneserve_prompt_injection_suspected_total", ADAPTER, by),
                                                  "{{adapter}}")], "short"),
        Panel("Drift score / threshold", [q(f"max by (adapter, feature, method) (tuneserve_drift_score{{{ADAPTER}}}"
                                            f" / on (job, instance, adapter, feature, method) tuneserve_drift_threshold)",
                                            "{{adapter}} {{feature}} ({{method}})")], "short",
              thresholds=[(None, "green"), (1, "red")], show_thresholds=True),
        Row("Production feedback"),
        Panel("Online quality (feedback)", [
            q(f"max by (adapter) (tuneserve_online_quality{{kind=\"accuracy\", {ADAPTER}}})", "accuracy {{adapter}}"),
            q(f"max by (adapter) (tuneserve_online_quality{{kind=\"rating\", {ADAPTER}}}) / 5", "rating/5 {{adapter}}")],
              "percentunit", min=0, max=1, thresholds=[(None, "red"), (0.6, "yellow"), (0.7, "green")], show_thresholds=True,
              description="Classifiers: share of label feedback agreeing with the served label (alert under 70%). "
                          "Generation: mean rating 1..5 shown divided by 5 (alert under 3, i.e. 60%). "
                          "Over the newest feedback.window feedbacks (docs/feedback.md)."),
        Panel("Feedback/s and window size", [
            q(f"sum by (adapter, kind) (rate(tuneserve_feedback_total{{{ADAPTER}}}[{RATE}]))", "{{adapter}} {{kind}}/s"),
            q(f"max by (adapter, kind) (tuneserve_online_quality_samples{{{ADAPTER}}})", "{{adapter}} {{kind}} in window")],
              "short"),
    ]
    return dashboard("tuneserve-adapter", "tuneserve / Adapter",
                     "Traffic, latency, errors, lifecycle, drift and online quality of the selected adapters.", items, [adapter_variable()])


def drift() -> dict:
    items: list[Panel | Row] = [
        Row("Summary"),
        table("Scores over threshold now", "tuneserve_drift_score > on (job, instance, adapter, feature, method) "
              f"tuneserve_drift_threshold{{{ADAPTER}}}", "Features whose drift score exceeds the configured threshold."),
        table("Drift alerts firing", 'ALERTS{alertname="TuneserveDriftDetected", alertstate="firing", ' + ADAPTER + "}"),
        Panel("Samples in drift window", [q(f"tuneserve_drift_window_samples{{{ADAPTER}}}", "{{adapter}}")], "short",
              description="Alerts are held back while a window has fewer than 30 samples.",
              thresholds=[(None, "orange"), (30, "green")], show_thresholds=True),
        Panel("Score / threshold, all features", [q(f"tuneserve_drift_score{{{ADAPTER}}} / on (job, instance, adapter, "
                                                    "feature, method) tuneserve_drift_threshold",
                                                    "{{adapter}} {{feature}} ({{method}})")], "short",
              thresholds=[(None, "green"), (1, "red")], show_thresholds=True,
              description="Above 1: the score is over its threshold."),
        Row("Scores and thresholds per feature"),
    ]
    for feature in DRIFT_FEATURES:
        selector = f'{ADAPTER}, feature="{feature}"'
        items.append(Panel(f"Drift: {feature}", [
            q(f"tuneserve_drift_score{{{selector}}}", "{{adapter}} {{method}} score"),
            q(f"tuneserve_drift_threshold{{{selector}}}", "{{adapter}} {{method}} threshold")], "short"))
    return dashboard("tuneserve-drift", "tuneserve / Drift",
                     "Live traffic compared with each adapter's training reference profile.", items, [adapter_variable()])


def security() -> dict:
    items = [
        Row("Now"),
        stat("Auth failures/s", rate("tuneserve_auth_failures_total"), "short", [(None, "green"), (1, "orange"), (10, "red")]),
        stat("Rate-limited/s", rate("tuneserve_rate_limited_total"), "short", [(None, "green"), (0.5, "orange")]),
        stat("Blocked clients", "sum(tuneserve_blocked_clients)", "short", [(None, "green"), (1, "red")]),
        stat("Most addresses on one key", "max(tuneserve_key_client_addresses)", "short", [(None, "green"), (20, "red")]),
        Row("Authentication"),
        Panel("Auth failures/s by reason", [q(rate("tuneserve_auth_failures_total", by="reason"), "{{reason}}")], "short", stack=True),
        Panel("Auth failures/s by transport", [q(rate("tuneserve_auth_failures_total", by="transport"), "{{transport}}")],
              "short", stack=True),
        Row("Abuse"),
        Panel("Rate-limited requests/s (top 10 keys)", [q(f"topk(10, {rate('tuneserve_rate_limited_total', by='key_id, kind')})",
                                                         "{{key_id}} {{kind}}")], "short"),
        Panel("Blocked clients", [q("sum by (instance) (tuneserve_blocked_clients)", "{{instance}}")], "short"),
        table("Keys used from the most addresses", "topk(10, max by (key_id) (tuneserve_key_client_addresses))",
              "Distinct client addresses per key in the tracking window; many addresses on one key suggest a leak."),
        Panel("Suspected prompt injections/s", [q(rate("tuneserve_prompt_injection_suspected_total", by="adapter"),
                                                  "{{adapter}}")], "short"),
        table("Security alerts firing", 'ALERTS{alertname=~"TuneserveAuthFailureBurst|TuneserveRateLimitAbuse|'
              'TuneserveClientsBlocked|TuneserveKeySharedAcrossAddresses|TuneservePromptInjectionSuspected", '
              'alertstate="firing"}', width=24),
    ]
    return dashboard("tuneserve-security", "tuneserve / Security",
                     "Authentication failures, rate limiting, blocked clients and suspicious key use.", items)


DASHBOARDS = {"overview": overview, "adapter": per_adapter, "drift": drift, "security": security}


def build_dashboards() -> dict[str, dict]:
    return {name: build() for name, build in DASHBOARDS.items()}


class PanelQuery(NamedTuple):
    dashboard: str
    panel: str
    expr: str  # with Grafana variables replaced (see VARIABLE_VALUES)


def substitute_variables(expr: str) -> str:
    for variable, value in VARIABLE_VALUES.items():
        expr = expr.replace(variable, value)
    return expr


def panel_queries() -> list[PanelQuery]:
    """Every panel query of every dashboard, ready to send to Prometheus."""
    return [PanelQuery(board["uid"], title, substitute_variables(expr))
            for board in build_dashboards().values() for title, expr in panel_exprs(board)]


def all_queries() -> list[str]:
    """Every distinct PromQL expression used by the dashboards, variables substituted."""
    return list(dict.fromkeys(pq.expr for pq in panel_queries()))


def render() -> dict[Path, str]:
    return {DASHBOARDS_DIR / f"tuneserve-{name}.json": json.dumps(board, indent=2) + "\n"
            for name, board in build_dashboards().items()}


if __name__ == "__main__":
    sys.exit(generator_main(__doc__.splitlines()[0], render))
