"""Security of the real Ray Serve app (one extra app for this area): two Ingress replicas behind
HTTPS through Ray's proxy (self-signed cert generated here; HTTPS on direct ingress, with one
Ingress replica, is checked on tests/test_serve_lifecycle.py's server), per-key rate limits
shared across the replicas through the Ray actor, the audit log (every request exactly once, no
secret), and schemathesis fuzzing of the REST API (marker `schemathesis`: 0 server errors,
responses match the schema, and the fuzzed model names never become metric labels), and junk
traffic adding no series to /metrics."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

from service.keys import add_key, create_key
from service.launcher import default_config_path
from service.server_process import spawn, terminate
from service.security.tls import self_signed_cert
from training.artifact import MINILM
from tests.service_fixtures import free_port, service_args  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.ray]
LIMITED_RPM = 10
SCHEMATHESIS_EXAMPLES = 25
SCHEMATHESIS_BUDGET_S = 80.0
SERVED_FOR = {"/v1/embeddings": MINILM, "/v1/classify": "clf"}


@pytest.fixture(scope="module")
def secure_app(tiny_base_dir, service_artifacts, tmp_path_factory):
    root = tmp_path_factory.mktemp("secure-app")
    cert, key = self_signed_cert(root / "tls")
    keys_file = root / "keys.json"
    keys = {}
    for label, scopes, limits in [("limited", ["infer"], {"requests_per_min": LIMITED_RPM}),
                                  ("infer", ["infer"], {}), ("admin", ["infer", "admin", "metrics"], {})]:
        plain, record = create_key(label, scopes, ["*"], **limits)
        add_key(keys_file, record)
        keys[label] = plain
    config = yaml.safe_load(default_config_path().read_text())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Ingress":
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 2
    config_path = root / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # an embedding model too, so the fuzz reaches /v1/embeddings' validation and not only its 404
    args = service_args(tiny_base_dir, service_artifacts, keys_file, port=free_port(), grpc_port=None,
                        embedding_model=MINILM,
                        **{"cache.enabled": False, "limits.max_tokens": 16, "security.audit_log": root / "audit.jsonl",
                           "security.tls_certfile": cert, "security.tls_keyfile": key,
                           "security.block_after_failures": 1000})
    overrides = [f"{k}={'null' if v is None else v}" for k, v in args.items()]
    proc, url = spawn(overrides, root / "server.log", config_path=config_path,
                      env={"RAY_TMPDIR": "/tmp/ts-ray-sec"})
    client = httpx.Client(base_url=url, verify=str(cert), timeout=60)
    try:
        yield {"url": url, "client": client, "keys": keys, "audit": root / "audit.jsonl", "cert": cert,
               "base": tiny_base_dir}
    finally:
        client.close()
        terminate(proc)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metric_series(secure_app) -> set[str]:
    body = secure_app["client"].get("/metrics", headers=bearer(secure_app["keys"]["admin"])).text
    return {line.rsplit(" ", 1)[0] for line in body.splitlines() if line.startswith("tuneserve_")}


def adapter_labels(series: set[str]) -> set[str]:
    return {value for line in series for value in re.findall(r'adapter="([^"]*)"', line)}


def junk(secure_app, tag: str, count: int) -> None:
    """Requests an attacker with one valid inference key (and none) can send cheaply."""
    client, key = secure_app["client"], secure_app["keys"]["infer"]
    for i in range(count):
        name = f"junk-{tag}-{i}"
        assert client.get(f"/{name}").status_code == 404
        assert client.post("/v1/completions", json={"model": name, "prompt": "x"}).status_code == 401
        assert client.post("/v1/completions", json={"model": name, "prompt": "x"}, headers=bearer(key)).status_code == 404
        assert client.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 10 ** 6},
                           headers=bearer(key)).status_code == 400
        assert client.post("/v1/classify", json={"model": name, "input": "x"}, headers=bearer(key)).status_code == 404


def test_https_only(secure_app):
    assert secure_app["url"].startswith("https://")
    assert secure_app["client"].get("/health").status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(secure_app["url"].replace("https://", "http://") + "/health", timeout=5)
    with pytest.raises(httpx.HTTPError):   # the self-signed cert is not trusted by default
        httpx.get(secure_app["url"] + "/health", timeout=5)


def test_rate_limit_holds_across_two_replicas(secure_app):
    client, audit = secure_app["client"], secure_app["audit"]
    seen = len(audit_lines(audit))
    replies = [client.get("/v1/models", headers=bearer(secure_app["keys"]["limited"])) for _ in range(LIMITED_RPM + 6)]
    codes = [r.status_code for r in replies]
    assert codes[:LIMITED_RPM] == [200] * LIMITED_RPM
    assert codes.count(429) >= 5, codes  # per-replica buckets would have admitted up to 2 x 10
    assert all(int(r.headers["Retry-After"]) >= 1 for r in replies if r.status_code == 429)
    time.sleep(0.5)
    lines = audit_lines(audit)[seen:]
    assert len({line["replica"] for line in lines}) == 2, "both Ingress replicas must have answered"


def test_audit_log_has_every_request_exactly_once_and_no_secret(secure_app):
    client, keys, audit = secure_app["client"], secure_app["keys"], secure_app["audit"]
    time.sleep(0.5)
    seen = len(audit_lines(audit))
    sent = [
        client.post("/v1/completions", headers=bearer(keys["infer"]), json={"model": "a1", "prompt": "Hi", "max_tokens": 4}),
        client.post("/v1/completions", headers=bearer(keys["infer"]),
                    json={"model": "a2", "prompt": "Hi", "max_tokens": 4, "stream": True}),
        client.get("/v1/models", headers=bearer(keys["infer"][:-4] + "AAAA")),
        client.get("/v1/admin/adapters", headers=bearer(keys["infer"])),
        client.post("/v1/admin/adapters", headers=bearer(keys["admin"]), json={"name": "../../etc"}),
        client.post("/v1/completions", headers=bearer(keys["infer"]), json={"model": "ghost", "prompt": "Hi"}),
        client.get("/v1/admin/adapters", headers=bearer(keys["admin"])),
    ]
    assert [r.status_code for r in sent] == [200, 200, 401, 403, 400, 404, 200]
    assert "data: [DONE]" in sent[1].text
    time.sleep(1.0)
    lines = audit_lines(audit)[seen:]
    assert [line["status"] for line in lines] == [200, 200, 401, 403, 400, 404, 200]
    assert [line["route"] for line in lines] == ["/v1/completions", "/v1/completions", "/v1/models",
                                                 "/v1/admin/adapters", "/v1/admin/adapters", "/v1/completions",
                                                 "/v1/admin/adapters"]
    assert lines[0]["key_id"] == keys["infer"].split("_")[1] and lines[0]["adapter"] == "a1"
    assert lines[0]["prompt_tokens"] > 0 and 0 < lines[0]["completion_tokens"] <= 4
    assert lines[1]["completion_tokens"] > 0
    assert lines[2]["key_id"] is None and lines[2]["reason"] == "invalid"
    assert [line["admin"] for line in lines] == [False, False, False, True, True, False, True]
    assert all(line["client"] and line["latency_ms"] >= 0 for line in lines)
    text = audit.read_text()
    assert not any(k.split("_", 2)[2] in text for k in keys.values()), "no key secret in the audit log"


@pytest.mark.schemathesis
def test_schemathesis_fuzzing_finds_no_server_errors(secure_app):
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

    headers = bearer(secure_app["keys"]["admin"])
    schema = schemathesis.openapi.from_url(f"{secure_app['url']}/openapi.json", headers=headers,
                                           verify=str(secure_app["cert"]))
    session = requests.Session()
    session.verify = str(secure_app["cert"])
    deadline = time.monotonic() + SCHEMATHESIS_BUDGET_S
    calls, failures = [], []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            if time.monotonic() > deadline:
                return
            if isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and len(calls) % 2 == 0:
                # every other body names a served model, so the fuzz reaches validation beyond the 404
                case.body["model"] = SERVED_FOR.get(operation.label.split(" ")[-1], "a1")
            response = case.call(session=session, headers=headers, timeout=30, verify=str(secure_app["cert"]))
            calls.append((operation.label, response.status_code))
            try:
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance,
                                                         content_type_conformance])
            except Exception as exc:  # noqa: BLE001 - collect every failing operation, report together
                failures.append(f"{operation.label} {response.status_code}: {str(exc)[:300]}")

        fuzz()
    assert calls and len({label for label, _ in calls}) >= 8, "every operation must have been exercised"
    for path in ("/v1/embeddings", "/v1/completions", "/v1/chat/completions"):
        statuses = {status for label, status in calls if label.endswith(path)}
        assert statuses - {404}, f"the fuzz reached a served model on {path}: {statuses}"
    served = {"", "unresolved", "a1", "a2", "a3", "clf", Path(secure_app["base"]).name, MINILM}
    assert adapter_labels(metric_series(secure_app)) <= served, "fuzzed model names became metric labels"
    assert not [c for c in calls if c[1] >= 500], "server errors"
    assert not failures, "\n".join(failures[:10])


def test_junk_traffic_adds_no_metric_series(secure_app):
    """Last in this module: its keyless requests spend the audit budget the audit test relies on."""
    junk(secure_app, "warm", 3)  # the constant series junk may add (route="unmatched", adapter="", ...)
    metric_series(secure_app)  # and the scrape's own request
    before = metric_series(secure_app)
    junk(secure_app, "flood", 40)
    after = metric_series(secure_app)
    assert after == before, sorted(after - before)[:10]
    assert not [a for a in adapter_labels(after) if a.startswith("junk")]
