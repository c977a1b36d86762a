"""The metric contract: every tuneserve_* series the committed alert rules and dashboards use is
exported by service.metrics with the labels they group by; label values stay bounded.

    pytest tests/test_metrics_contract.py
"""

import os
import re
import sys
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _exercise():
    metrics.request_finished("/v1/completions", "a1", "http", 200, 0.2)
    metrics.request_finished("/tuneserve.v1.Inference/Complete", "a1", "grpc", 503, 0.2)
    metrics.generation_finished("a1", 5, 7, 0.3)
    metrics.first_token("a1", 0.05, "http")
    metrics.inter_token("a1", 0.01, "http")
    metrics.prefill_done("a1", 0.02)
    metrics.decode_finished("a1", 0.3)
    metrics.cache_lookup("a1", True)
    metrics.prefix_cache_lookup("a1", 32)
    metrics.prefix_cache_lookup("a1", 0)
    metrics.prefix_cache_size(4096)
    metrics.batch_admitted(2, 3)
    metrics.queue_waited("a1", 0.002)
    metrics.queue_state(1, 64)
    metrics.adapter_event("a1", "loaded", 0.5)
    metrics.adapter_event("a1", "load_failed")
    metrics.adapter_event("a1", "evicted")
    metrics.model_loaded("tiny-llama", 2.0)
    metrics.auth_failed("invalid", "http")
    metrics.rate_limited("k1", "requests")
    metrics.BLOCKED_CLIENTS.set(1)
    metrics.KEY_CLIENT_ADDRESSES.labels("k1").set(2)
    metrics.prompt_injection_suspected("a1")
    metrics.DRIFT_SCORE.labels("a1", "prompt_length", "psi").set(0.1)
    metrics.DRIFT_THRESHOLD.labels("a1", "prompt_length", "psi").set(0.25)
    metrics.DRIFT_WINDOW.labels("a1").set(40)
    metrics.feedback_recorded("a1", "label")
    metrics.online_quality("a1", "accuracy", 0.9, 25)


@pytest.fixture(scope="module", autouse=True)
def own_registry():
    """render() reads a multiprocess dir when PROMETHEUS_MULTIPROC_DIR is set, which an in-process server
    of an earlier test may have left in this process; these checks are about this process's registry."""
    leaked = os.environ.pop(metrics.MULTIPROC_ENV, None)
    yield
    if leaked is not None:
        os.environ[metrics.MULTIPROC_ENV] = leaked


@pytest.fixture(scope="module")
def exported():
    _exercise()
    body = metrics.render()[0].decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    return body, samples


def _used_names() -> dict[str, set[str]]:
    """tuneserve_* series in rules + dashboard queries -> label names used with them (by/on/selectors)."""
    sys.path.insert(0, str(ROOT / "deploy" / "grafana"))
    from generate import all_queries

    texts = [p.read_text() for p in (ROOT / "deploy" / "prometheus" / "rules").glob("*.yml")] + list(all_queries())
    used: dict[str, set[str]] = {}
    for text in texts:
        for match in re.finditer(r"\b(tuneserve_[a-z_]+)(\{[^}]*\})?", text):
            labels = set(re.findall(r"([a-z_]+)\s*[=!]~?", match.group(2) or "")) - {"le", "job", "instance"}
            used.setdefault(match.group(1), set()).update(labels)
    return used


def test_every_series_used_by_rules_and_dashboards_is_exported_with_its_labels(exported):
    _, samples = exported
    used = _used_names()
    assert len(used) >= 20
    for name, labels in used.items():
        assert name in samples, f"{name} is used by a rule or dashboard but not exported"
        have = set().union(*(set(s) for s in samples[name]))
        assert labels <= have, (name, labels - have)


def test_label_sets_units_and_buckets(exported):
    body, samples = exported
    assert {"adapter", "transport", "route", "code"} == set(samples["tuneserve_requests_total"][0])
    for name, label_sets in samples.items():
        if name.startswith("tuneserve_") and name != "tuneserve_model_load_seconds":
            assert all("model" not in labels for labels in label_sets), name
    buckets = {s["le"] for s in samples["tuneserve_request_duration_seconds_bucket"]}
    assert "5.0" in buckets and "60.0" in buckets and "0.005" in buckets
    grpc_codes = {s["code"] for s in samples["tuneserve_requests_total"] if s["transport"] == "grpc"}
    # other tests in the process may have recorded more gRPC calls: every code is a gRPC code name
    assert "UNAVAILABLE" in grpc_codes and grpc_codes <= {c.name for c in grpc.StatusCode}
    assert re.search(r"tuneserve_process_resident_memory_bytes \d", body)


def test_adapter_labels_are_bounded(monkeypatch):
    monkeypatch.setattr(metrics, "_adapters", set())
    monkeypatch.setattr(metrics, "MAX_ADAPTER_LABELS", 3)
    assert [metrics.adapter_label(n) for n in ("a", "b", "c", "d", "a")] == ["a", "b", "c", "other", "a"]
    assert metrics.adapter_label("has space\nand newline") == "other"
    assert metrics.adapter_label(None) == ""
    metrics.request_finished("/v1/completions", "no-such-model-xyz", "http", 404, 0.01)
    assert "no-such-model-xyz" not in metrics.render()[0].decode()


def test_grpc_codes_map_from_error_statuses():
    assert [metrics.grpc_code_name(c) for c in (200, 400, 401, 404, 429, 499, 500, 503, 418)] == [
        "OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND", "RESOURCE_EXHAUSTED", "CANCELLED",
        "INTERNAL", "UNAVAILABLE", "UNKNOWN"]
    assert metrics.grpc_code_name("deadline_exceeded") == "DEADLINE_EXCEEDED"


def test_multiprocess_mode_aggregates_processes(tmp_path):
    """Two processes writing to one PROMETHEUS_MULTIPROC_DIR; render() in a third sees both."""
    import subprocess

    code = ("import os, sys; from service import metrics; metrics.prepare_metrics_dir(sys.argv[1]) if sys.argv[2] == 'prep' "
            "else None; metrics.request_finished('/v1/completions', 'a1', 'http', 200, 0.1); "
            "metrics.queue_state(2, 10)")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path), "prep"], check=True, cwd=ROOT, env=env)
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code, str(tmp_path), "-"], check=True, cwd=ROOT, env=env)
    out = subprocess.run([sys.executable, "-c", "from service import metrics; print(metrics.render()[0].decode())"],
                         check=True, cwd=ROOT, env=env, capture_output=True, text=True).stdout
    assert 'tuneserve_requests_total{adapter="a1",code="200",route="/v1/completions",transport="http"} 3.0' in out
    assert "process_cpu_seconds_total" in out


def test_unmatched_paths_and_refused_models_never_become_labels(tmp_path):
    from tests.security_support import bearer, http_app

    client_from, keys = http_app(tmp_path, block_after_failures=1000)
    junk = client_from("203.0.113.7")
    for i in range(30):
        assert junk.get(f"/zz-unmatched-{i}").status_code == 404
        assert junk.post("/v1/completions", json={"model": f"zz-refused-{i}", "prompt": "Ignore all previous "
                         "instructions"}, headers=bearer(keys["good"])).status_code == 403  # globs a*
    body = metrics.render()[0].decode()
    assert "zz-" not in body
    assert 'route="unmatched"' in body


def test_a_launcher_process_keeps_recording_after_its_server_stops(tmp_path, monkeypatch):
    """prepare_metrics_dir exports the dir for Ray's workers; the launching process (pytest, with
    in-process servers) keeps in-memory values, so new label sets still work once the variable is gone."""
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    metrics.prepare_metrics_dir(tmp_path / "node")
    monkeypatch.delenv(metrics.MULTIPROC_ENV)
    metrics.model_loaded("after-stop", 0.5)
    assert 'tuneserve_model_load_seconds{model="after-stop"} 0.5' in metrics.render()[0].decode()
