"""`tuneserve observe`: the generated Prometheus config and error cases (fast), and against the
real binaries (integration): Prometheus loads every rule, scrapes a fake tuneserve /metrics
endpoint under job "tuneserve", evaluates the recording rules, runs every dashboard query, and
sends a firing alert to Alertmanager, which routes it and applies the inhibition rules; the
command itself prints the URLs and stops both children on SIGTERM.
Run: pytest tests/test_deploy_observe.py -m "integration or not integration"
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from deploy_support import DEPLOY, REPO_ROOT, alert_rules, load_script, recorded_names, require_tool

from training.artifact.errors import ConfigError
from tuneserve.commands.observe import ObserveConfig, ObserveStack, find_binary, pick_port, scrape_config


def test_scrape_config_targets_job_tuneserve_and_loads_repo_rules():
    config = ObserveConfig(targets=["svc:8000"], ray_targets=["svc:8080"], scrape_interval="5s")
    prom = scrape_config(config, "127.0.0.1:9093", "127.0.0.1:9090")
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "tuneserve")
    assert [sc["targets"] for sc in job["static_configs"]] == [["svc:8000"], ["svc:8080"]]
    assert prom["rule_files"] == [str((DEPLOY / "prometheus" / "rules").resolve() / "*.yml")]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    assert prom["global"]["scrape_interval"] == "5s"


def test_busy_port_and_missing_binary_are_clear_errors():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(ConfigError, match="not free"):
            pick_port("127.0.0.1", sock.getsockname()[1])
    assert pick_port("127.0.0.1", 0) > 0
    with pytest.raises(ConfigError, match="apt-get install"):
        find_binary(["no-such-prometheus-binary"])


def test_missing_rules_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no rule files"):
        ObserveStack(ObserveConfig(rules_dir=tmp_path))


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def fake_service():
    """A /metrics endpoint exporting a few contract metrics; yields (address, metrics)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app

    registry = CollectorRegistry()
    metrics = {
        "loads": Counter("tuneserve_adapter_loads", "loads", ["adapter", "result"], registry=registry),
        "requests": Counter("tuneserve_requests", "requests", ["adapter", "transport", "route", "code"], registry=registry),
        "depth": Gauge("tuneserve_queue_depth", "depth", registry=registry),
        "capacity": Gauge("tuneserve_queue_capacity", "capacity", registry=registry),
    }
    metrics["loads"].labels("broken", "error")
    metrics["requests"].labels("chat", "http", "/v1/chat/completions", "200").inc(5)
    metrics["depth"].set(16)
    metrics["capacity"].set(64)
    server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}", metrics
    server.shutdown()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _query(base: str, expr: str) -> dict:
    return _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def _wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.integration
def test_stack_loads_rules_scrapes_evaluates_and_alerts(fake_service, tmp_path):
    require_tool("prometheus")
    address, metrics = fake_service
    config = ObserveConfig(targets=[address], prometheus_port=0, alertmanager_port=0, scrape_interval="1s",
                           evaluation_interval="1s", work_dir=tmp_path)
    with ObserveStack(config) as stack:
        prom = stack.prometheus_url
        groups = _get(f"{prom}/api/v1/rules")["data"]["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"]}
        assert {r["alert"] for r in alert_rules()} | recorded_names() == loaded

        def target_up():
            active = _get(f"{prom}/api/v1/targets")["data"]["activeTargets"]
            return any(t["labels"]["job"] == "tuneserve" and t["health"] == "up" for t in active)

        _wait_for(target_up, what="the tuneserve target to be scraped")
        utilisation = _wait_for(lambda: _query(prom, "tuneserve:queue_utilization:ratio")["data"]["result"],
                                what="the queue utilisation recording rule")
        assert float(utilisation[0]["value"][1]) == pytest.approx(0.25)

        queries = load_script("deploy/grafana/generate.py").all_queries()
        failed = {q: r for q in queries if (r := _query(prom, q))["status"] != "success"}
        assert not failed

        metrics["loads"].labels("broken", "error").inc()  # TuneserveAdapterLoadFailures has no `for`
        firing = 'ALERTS{alertname="TuneserveAdapterLoadFailures", alertstate="firing"}'
        _wait_for(lambda: _query(prom, firing)["data"]["result"], what="the alert to fire")
        received = _wait_for(lambda: [a for a in _get(f"{stack.alertmanager_url}/api/v2/alerts")
                                      if a["labels"]["alertname"] == "TuneserveAdapterLoadFailures"],
                             what="Alertmanager to receive the alert")
        assert received[0]["labels"]["adapter"] == "broken"
        assert [r["name"] for r in received[0]["receivers"]] == ["ticket"]


def _post_alerts(base: str, alerts: list[dict]) -> None:
    request = urllib.request.Request(f"{base}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()


@pytest.mark.integration
def test_alertmanager_critical_inhibits_warning_of_same_alert_and_adapter(tmp_path):
    require_tool("prometheus")
    config = ObserveConfig(targets=["127.0.0.1:9"], prometheus_port=0, alertmanager_port=0, work_dir=tmp_path)
    with ObserveStack(config) as stack:
        base = stack.alertmanager_url
        labels = {"alertname": "TuneserveDriftDetected", "adapter": "a", "feature": "embedding", "method": "mmd"}
        _post_alerts(base, [
            {"labels": {**labels, "severity": "critical"}},
            {"labels": {**labels, "severity": "warning"}},
            {"labels": {**labels, "adapter": "b", "severity": "warning"}},
        ])

        def states():
            alerts = _get(f"{base}/api/v2/alerts")
            return {(a["labels"]["adapter"], a["labels"]["severity"]): a["status"]["state"] for a in alerts} \
                if len(alerts) == 3 else None

        found = _wait_for(lambda: (s := states()) and s[("a", "warning")] == "suppressed" and s, what="inhibition")
        assert found == {("a", "critical"): "active", ("a", "warning"): "suppressed", ("b", "warning"): "active"}


COMMAND = """
import sys, typer
from tuneserve.commands import observe
app = typer.Typer()
observe.register(app)
app.command("version")(lambda: None)
app(sys.argv[1:])
"""


@pytest.mark.integration
def test_observe_command_prints_urls_and_stops_children_on_sigterm(tmp_path):
    require_tool("prometheus")
    env = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-c", COMMAND, "observe", "--target", "127.0.0.1:9", "--prometheus-port", "0",
         "--alertmanager-port", "0", f"work_dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT, env=env)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "Prometheus" in text and "Alertmanager" in text, text
        prom_url = next(w for w in text.split() if w.startswith("http://") and w.count(":") == 2)
        assert _get(f"{prom_url}/api/v1/rules")["status"] == "success"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "stopping" in process.stdout.read()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{prom_url}/-/ready", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
        subprocess.run(["pkill", "-f", str(tmp_path)], capture_output=True)  # children of a failed run


def test_a_signal_while_a_child_spawns_is_raised_after_it_is_tracked():
    """An interrupt inside Popen would leave a child nobody stops; it is held until the spawn returns."""
    from tuneserve.commands.observe import signals_deferred, stop_on_signals

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop_on_signals()
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                spawned = True  # reached: the signal did not interrupt the block
        assert spawned
        with signals_deferred(drop=True):  # while stopping: nothing is left to raise
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.integration
def test_sigterm_while_the_children_start_stops_them_and_exits_cleanly(tmp_path):
    """A SIGTERM before the URLs are up (the signal handlers used to be installed only after they were
    printed) must stop what started, not kill the command with Prometheus and Alertmanager left running."""
    require_tool("prometheus")
    process = subprocess.Popen(
        [sys.executable, "-c", COMMAND, "observe", "--target", "127.0.0.1:9", "--prometheus-port", "0",
         "--alertmanager-port", "0", f"work_dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "prometheus.yml").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # written just before the children start; ready takes far longer
        assert (tmp_path / "prometheus.yml").exists(), "observe never started its children"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.stdout.read()
        assert "stopping" in process.stdout.read()
        assert subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).returncode == 1  # none left
    finally:
        if process.poll() is None:
            process.kill()
        subprocess.run(["pkill", "-f", str(tmp_path)], capture_output=True)


@pytest.mark.integration
def test_start_then_with_starts_one_pair_and_stop_leaves_no_process(fake_service, tmp_path):
    """`with stack.start():` used to start a second Prometheus + Alertmanager and orphan the first."""
    import subprocess

    require_tool("prometheus")
    address, _ = fake_service
    stack = ObserveStack(ObserveConfig(targets=[address], prometheus_port=0, alertmanager_port=0, work_dir=tmp_path))
    with stack.start() as same:
        assert same is stack and len(stack.processes) == 2
        running = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
        assert sorted(map(int, running)) == sorted(p.process.pid for p in stack.processes)
    assert subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split() == []
