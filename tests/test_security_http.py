"""Security of the REST app (FastAPI TestClient over an instant stub backend): the route × auth
case matrix with exact statuses, rate limits with Retry-After, blocking, input limits (body size
incl. chunked, JSON depth, adapter names), and the audit log (one line per request, no secret)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.auth import Authenticator
from service.http import create_app
from service.security.audit import flush_audit_logs
from service.settings import load_settings
from tests.security_support import ADAPTER, CASES, StubBackend, case_key, expected_status, make_keyring

# (method, path, json body, scope, adapter-bound)
ROUTES = [
    ("GET", "/v1/models", None, "infer", False),
    ("GET", f"/v1/models/{ADAPTER}", None, "infer", True),
    ("GET", "/metrics", None, "metrics", False),
    ("POST", "/v1/completions", {"model": ADAPTER, "prompt": "hi"}, "infer", True),
    ("POST", "/v1/completions", {"model": ADAPTER, "prompt": "hi", "stream": True}, "infer", True),
    ("POST", "/v1/chat/completions", {"model": ADAPTER, "messages": [{"role": "user", "content": "hi"}]}, "infer", True),
    ("POST", "/v1/chat/completions", {"model": ADAPTER, "messages": [{"role": "user", "content": "hi"}], "stream": True},
     "infer", True),
    ("POST", "/v1/classify", {"model": ADAPTER, "input": ["good"]}, "infer", True),
    ("GET", "/v1/admin/adapters", None, "admin", False),
    ("POST", "/v1/admin/adapters", {"name": ADAPTER}, "admin", True),   # admin keys act only on their globs
    ("DELETE", f"/v1/admin/adapters/{ADAPTER}", None, "admin", True),
    ("POST", f"/v1/admin/adapters/{ADAPTER}/pin", {"pinned": True}, "admin", True),
]


def build(tmp_path, limits=None, **security):
    keys = make_keyring(tmp_path / "keys.json", limits)
    settings = load_settings({"keys_file": str(tmp_path / "keys.json"), "api_keys_env": None,
                              "limits": {"max_body_bytes": 4096},
                              "security": {"rate_limit_store": "local", "audit_log": str(tmp_path / "audit.jsonl"),
                                           "block_after_failures": 1000, "max_json_depth": 8, **security}})
    client = TestClient(create_app(StubBackend(), Authenticator.from_settings(settings), settings))
    return client, keys, tmp_path / "audit.jsonl"


def audit_lines(path):
    flush_audit_logs()  # lines are written by a background thread
    return [json.loads(line) for line in path.read_text().splitlines()]


def headers(key):
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return build(tmp_path_factory.mktemp("sec-http"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method,path,body,scope,adapter_bound", ROUTES,
                         ids=[f"{r[0]} {r[1]}{' stream' if (r[2] or {}).get('stream') else ''}" for r in ROUTES])
def test_route_case_matrix(app, method, path, body, scope, adapter_bound, case):
    client, keys, audit = app
    before = len(audit_lines(audit)) if audit.exists() else 0
    key = case_key(keys, case, scope)
    response = client.request(method, path, json=body, headers=headers(key))
    expected = expected_status(case, scope, adapter_bound)
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"
    if expected == 403:
        assert response.json()["error"]["type"] == "permission_error"
    lines = audit_lines(audit)
    assert len(lines) == before + 1, "exactly one audit line per request"
    line = lines[-1]
    template = "{name}" if "admin/adapters/" in path else "{model_id}"  # the audit names the route, not the id
    assert (line["route"], line["status"], line["admin"]) == (path.replace(f"/{ADAPTER}", "/" + template),
                                                              expected, path.startswith("/v1/admin"))
    if case == "good":
        assert line["key_id"] == keys["good"].split("_")[1]
    if key:
        assert key not in json.dumps(lines) and key.split("_", 2)[2] not in audit.read_text()


def test_open_routes_are_only_liveness_and_readiness(app, tmp_path):
    client, keys, _ = app
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    assert client.get("/openapi.json").status_code == 401 and client.get("/docs").status_code in (401, 404)
    assert client.get("/openapi.json", headers=headers(keys["wrong_scope"])).status_code == 200  # any valid key
    public, _, _ = build(tmp_path, public_metrics=True, public_docs=True)
    assert public.get("/metrics").status_code == 200 and public.get("/openapi.json").status_code == 200
    assert client.get("/v1/nothing").status_code in (401, 404)


def test_rate_limits_return_429_with_retry_after_and_token_debt(tmp_path):
    client, keys, audit = build(tmp_path, {"requests_per_min": 3, "tokens_per_min": 9})
    h = headers(keys["good"])
    body = {"model": ADAPTER, "prompt": "hi", "max_tokens": 1}   # reserves 4 tokens ("hi" + 1 + 1); uses 5
    assert client.post("/v1/completions", json=body, headers=h).status_code == 200   # 9 -> 5 -> settled 4
    assert client.post("/v1/completions", json=body, headers=h).status_code == 200   # 4 -> 0 -> 1 token in debt
    limited = client.post("/v1/completions", json=body, headers=h)
    assert limited.status_code == 429 and "tokens/min" in limited.json()["error"]["message"]
    assert int(limited.headers["Retry-After"]) >= 1
    again = client.get("/v1/models", headers=h)
    assert again.status_code == 429 and "requests/min" in again.json()["error"]["message"]
    assert int(again.headers["Retry-After"]) == 20   # one request every 20 s at 3/min
    assert [line["reason"] for line in audit_lines(audit)[-2:]] == ["rate_limited_tokens", "rate_limited_requests"]


def test_auth_failures_block_the_address(tmp_path):
    client, keys, audit = build(tmp_path, block_after_failures=3, block_s=60)
    for _ in range(3):
        assert client.get("/v1/models", headers=headers(keys["bad"])).status_code == 401
    blocked = client.get("/v1/models", headers=headers(keys["bad"]))
    assert blocked.status_code == 403 and "blocked" in blocked.json()["error"]["message"]
    assert audit_lines(audit)[-1]["reason"] == "blocked"
    assert client.get("/v1/models", headers=headers(keys["good"])).status_code == 200  # valid keys pass


def test_oversize_and_deep_bodies_are_refused_with_the_limit_named(app):
    client, keys, _ = app
    h = headers(keys["good"])
    big = client.post("/v1/completions", content=json.dumps({"model": ADAPTER, "prompt": "x" * 5000}),
                      headers={**h, "Content-Type": "application/json"})
    assert big.status_code == 413 and "4096" in big.json()["error"]["message"]

    def chunks():
        yield b'{"model": "a1", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    chunked = client.post("/v1/completions", content=chunks(), headers={**h, "Content-Type": "application/json"})
    assert chunked.status_code == 413
    deep = client.post("/v1/completions", content=b'{"model": "a1", "prompt": "x", "stop": ' + b"[" * 9 + b"]" * 9 + b"}",
                       headers={**h, "Content-Type": "application/json"})
    assert deep.status_code == 400 and "max_json_depth" in deep.json()["error"]["message"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "..", "x" * 300])
def test_adapter_names_with_traversal_are_refused(app, name):
    client, keys, _ = app
    response = client.post("/v1/admin/adapters", json={"name": name}, headers=headers(keys["good"]))
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"


# Hostile values one valid inference key can send (issue 16): each is a 400 naming the field, never a 500.
HOSTILE = [
    (b'{"model": "a1", "prompt": "\\ud800"}', "prompt", "surrogate"),
    (b'{"model": "a1", "prompt": ["ok", "\\udfff tail"]}', "prompt.1", "surrogate"),
    (b'{"model": "a\\ud800", "prompt": "x"}', "model", "surrogate"),
    (b'{"model": "a1", "prompt": "x", "\\ud800": 1}', "a field name in the body", "surrogate"),
    (b'{"model": "a1", "prompt": "x", "stop": ["\\ud83d"]}', "stop.0", "surrogate"),
    (b'{"model": "a1", "prompt": "\xed\xa0\x80"}', "prompt", "surrogate"),   # a surrogate encoded as bytes (CESU-8)
    (b'{"model": "a1", "prompt": "x", "seed": 18446744073709551616}', "seed", "9223372036854775807"),
    (b'{"model": "a1", "prompt": "x", "seed": 9223372036854775808}', "seed", "9223372036854775807"),
    (b'{"model": "a1", "prompt": "x", "seed": 1e400}', "seed", "finite"),
    (b'{"model": "a1", "prompt": "x", "temperature": NaN}', "temperature", "temperature"),
    (b'{"model": "a1", "prompt": "x", "top_p": -Infinity}', "top_p", "top_p"),
    (b'{"model": "a1", "prompt": "x", "max_tokens": 1e400}', "max_tokens", "finite"),
    (b'{"model": "a1", "prompt": "x", "n": 0}', "n", "n"),
]


@pytest.mark.parametrize("body,param,words", HOSTILE)
def test_hostile_values_get_a_400_naming_the_field(app, body, param, words):
    client, keys, _ = app
    chat = b'"messages"' in body
    response = client.post("/v1/chat/completions" if chat else "/v1/completions", content=body,
                           headers={**headers(keys["good"]), "Content-Type": "application/json"})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param and words in error["message"]


def test_a_surrogate_in_chat_content_parts_is_refused(app):
    client, keys, _ = app
    body = b'{"model": "a1", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}'
    response = client.post("/v1/chat/completions", content=body,
                           headers={**headers(keys["good"]), "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages.0.content.0.text"
