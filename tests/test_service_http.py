"""The REST app over a real ServingCore (no Ray) with FastAPI's TestClient: auth, errors, routes,
SSE, admin, and the official `openai` client unchanged (its httpx client is the TestClient)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.auth import Authenticator
from service.core import ServingCore
from service.http import create_app
from service.settings import load_settings
from tests.service_fixtures import service_args


@pytest.fixture(scope="module")
def client(tiny_base_dir, service_artifacts, serve_keys):
    settings = load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0],
                                          limits={"max_body_bytes": 4096}))
    core = ServingCore(settings)
    core.start()
    with TestClient(create_app(core, Authenticator.from_settings(settings), settings)) as test_client:
        test_client.core = core
        yield test_client
    core.stop()


@pytest.fixture(scope="module")
def keys(serve_keys):
    return {label: {"Authorization": f"Bearer {key}"} for label, key in serve_keys[1].items()}


def error_of(response):
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_health_ready_need_no_key_openapi_needs_one(client, keys):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ok"
    assert client.get("/openapi.json").status_code == 401  # every other route needs a key (docs/security.md)
    paths = client.get("/openapi.json", headers=keys["infer"]).json()["paths"]
    assert {"/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/models"} <= set(paths)


def test_keys_scopes_and_adapter_patterns(client, keys):
    assert client.get("/v1/models").status_code == 401
    assert error_of(client.get("/v1/models", headers={"Authorization": "Bearer nope"}))["type"] == "authentication_error"
    assert client.get("/v1/models", headers={"x-api-key": keys["infer"]["Authorization"][7:]}).status_code == 200
    assert [m["id"] for m in client.get("/v1/models", headers=keys["only-a1"]).json()["data"]] == ["a1"]
    denied = client.post("/v1/completions", headers=keys["only-a1"], json={"model": "a2", "prompt": "x"})
    assert denied.status_code == 403 and "a2" in error_of(denied)["message"]
    assert client.get("/v1/admin/adapters", headers=keys["infer"]).status_code == 403


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None), (b"[1, 2]", 400, None),
    (json.dumps({"prompt": "x"}).encode(), 400, "model"),
    (json.dumps({"model": "a1", "prompt": "x", "temperature": 9}).encode(), 400, "temperature"),
    (json.dumps({"model": "a1", "prompt": "x", "bogus": 1}).encode(), 400, "bogus"),
    (json.dumps({"model": "a1", "prompt": "x", "max_tokens": 100000}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "missing", "prompt": "x"}).encode(), 404, None),
    (json.dumps({"model": "a1", "prompt": "x" * 5000}).encode(), 413, None),
])
def test_bad_requests_get_openai_errors(client, keys, body, status, param):
    response = client.post("/v1/completions", headers={**keys["infer"], "Content-Type": "application/json"},
                           content=body)
    assert response.status_code == status
    error = error_of(response)
    assert error["message"] and error["param"] == param


def test_completion_chat_classify(client, keys):
    done = client.post("/v1/completions", headers=keys["infer"],
                       json={"model": "a1", "prompt": "Hello", "max_tokens": 5, "temperature": 0}).json()
    assert done["object"] == "text_completion" and done["usage"]["completion_tokens"] >= 1
    chat = client.post("/v1/chat/completions", headers=keys["infer"],
                       json={"model": "a2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).json()
    assert chat["choices"][0]["message"]["role"] == "assistant"
    cls = client.post("/v1/classify", headers=keys["infer"], json={"model": "clf", "input": ["a", "b"], "top_k": 1})
    assert [len(d["scores"]) for d in cls.json()["data"]] == [1, 1]


def test_sse_stream_ends_with_done_and_matches_non_streamed(client, keys):
    body = {"model": "a3", "prompt": "Once", "max_tokens": 8, "temperature": 0}
    expected = client.post("/v1/completions", headers=keys["infer"], json=body).json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", headers=keys["infer"], json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected


def test_openai_client_unchanged(client, serve_keys):
    openai = pytest.importorskip("openai")
    oc = openai.OpenAI(base_url="http://testserver/v1", api_key=serve_keys[1]["infer"], http_client=client)
    assert oc.completions.create(model="a1", prompt="Hi", max_tokens=3, temperature=0).choices[0].text is not None
    reply = oc.chat.completions.create(model="a1", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert reply.choices[0].message.role == "assistant" and reply.usage.total_tokens > 0
    stream = oc.chat.completions.create(model="a1", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                        stream=True)
    finishes = [ch.choices[0].finish_reason for ch in stream if ch.choices]
    assert finishes[-1] in ("stop", "length")
    with pytest.raises(openai.NotFoundError):
        oc.completions.create(model="nope", prompt="Hi")
    assert "a1" in [m.id for m in oc.models.list()]


def test_admin_routes(client, keys, tiny_base_dir, tmp_path):
    from tests.service_fixtures import make_adapter

    path = make_adapter(tiny_base_dir, tmp_path / "fresh", "fresh", seed=5)
    loaded = client.post("/v1/admin/adapters", headers=keys["admin"], json={"name": "fresh", "path": str(path), "pin": True})
    assert loaded.status_code == 200 and loaded.json()["pinned"] is True
    names = [a["name"] for a in client.get("/v1/admin/adapters", headers=keys["admin"]).json()["data"]]
    assert "fresh" in names
    assert client.delete("/v1/admin/adapters/fresh", headers=keys["admin"]).status_code == 409
    assert client.post("/v1/admin/adapters/fresh/pin", headers=keys["admin"], json={"pinned": False}).json()["pinned"] is False
    unloaded = client.delete("/v1/admin/adapters/fresh", headers=keys["admin"]).json()
    assert unloaded.pop("fleet")["pending"] == [] and unloaded == {"name": "fresh", "unloaded": True}
    missing = client.post("/v1/admin/adapters", headers=keys["admin"], json={"name": "x", "path": str(tmp_path / "none")})
    assert missing.status_code == 422 and "does not exist" in error_of(missing)["message"]


def adapter_series() -> dict[tuple, float]:
    """Every Prometheus sample labelled with an adapter: (name, labels) -> value."""
    from prometheus_client import REGISTRY

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in REGISTRY.collect() for s in metric.samples if "adapter" in s.labels}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("named", ["a1", "base"])
def test_a_chat_request_names_its_resolved_model_in_metrics_drift_and_audit(client, tiny_base_dir, service_artifacts,
                                                                           serve_keys, tmp_path, monkeypatch, named,
                                                                           stream):
    """One request, one model id: the registry's resolution of the name it sent (an adapter is
    itself, the alias "base" is the base model's id) labels its reply, every metric series it
    moves (core and engine thread alike), its drift samples and its audit line."""
    core = client.core
    resolved = core.registry.base_name if named == "base" else named
    assert named == "a1" or resolved != named  # the alias case tells the request's name from the resolved id
    settings = load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0],
                                          security={"audit_log": str(tmp_path / "audit.jsonl")}))
    audited = TestClient(create_app(core, Authenticator.from_settings(settings), settings))
    drifted = []
    observe = core.drift.observe_prompts
    monkeypatch.setattr(core.drift, "observe_prompts",
                        lambda adapter, *args, **kw: drifted.append(adapter) or observe(adapter, *args, **kw))
    before = adapter_series()
    body = {"model": named, "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 4,
            "temperature": 1.0, "stream": stream}  # sampled: never answered from the response cache
    response = audited.post("/v1/chat/completions", headers={"Authorization": f"Bearer {serve_keys[1]['infer']}"},
                            json=body)
    assert response.status_code == 200
    replies = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")] \
        if stream else [response.json()]
    assert {r["model"] for r in replies} == {resolved}
    moved = {key for key, value in adapter_series().items() if before.get(key) != value}
    names = {name for name, _ in moved}
    assert {"tuneserve_requests_total", "tuneserve_queue_wait_seconds_count",
            "tuneserve_time_to_first_token_seconds_count", "tuneserve_prompt_tokens_total"} <= names, names
    assert {dict(labels)["adapter"] for _, labels in moved} == {resolved}, sorted(moved)
    assert drifted == [resolved]
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(line["route"], line["adapter"]) for line in lines] == [("/v1/chat/completions", resolved)]
