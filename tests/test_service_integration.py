"""The real Ray Serve application over HTTP (started once per session by `served_app`):
auth, adapters, errors, chat, SSE, the openai client, mixed-adapter batches, admin lifecycle."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.service_fixtures import make_adapter

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(served_app):
    with httpx.Client(base_url=served_app["url"], timeout=60) as client:
        yield client


def auth(served_app, label="admin"):
    return {"Authorization": f"Bearer {served_app['keys'][label]}"}


def complete(http, served_app, model, prompt="To be, or not", **kw):
    body = {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0, **kw}
    response = http.post("/v1/completions", headers=auth(served_app, "infer"), json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_auth_models_and_errors(http, served_app):
    assert http.get("/v1/models").status_code == 401
    for name in ("a1", "a2", "a3"):  # the session's server: earlier tests may have evicted some (max_adapters=3)
        complete(http, served_app, name, max_tokens=1)
    listed = http.get("/v1/models", headers=auth(served_app, "infer"))
    assert listed.status_code == 200 and {"a1", "a2", "a3", "clf"} <= {m["id"] for m in listed.json()["data"]}
    missing = http.post("/v1/completions", headers=auth(served_app, "infer"), json={"model": "ghost", "prompt": "x"})
    assert missing.status_code == 404 and "ghost" in missing.json()["error"]["message"]
    bad = http.post("/v1/completions", headers={**auth(served_app, "infer"), "Content-Type": "application/json"},
                    content=b'{"model": ')
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    assert http.get("/v1/admin/adapters", headers=auth(served_app, "infer")).status_code == 403


def test_named_adapter_chat_and_sse(http, served_app):
    assert complete(http, served_app, "a1") != complete(http, served_app, "a2")
    chat = http.post("/v1/chat/completions", headers=auth(served_app, "infer"),
                     json={"model": "a1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["role"] == "assistant"
    body = {"model": "a3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": True}
    with http.stream("POST", "/v1/chat/completions", headers=auth(served_app, "infer"), json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200 and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_client_unchanged(served_app):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=served_app["url"] + "/v1", api_key=served_app["keys"]["infer"])
    assert client.completions.create(model="a2", prompt="Hi", max_tokens=4).usage.completion_tokens >= 1
    reply = client.chat.completions.create(model="a2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None
    stream = client.chat.completions.create(model="a2", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=6, stream=True, temperature=0)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    again = client.chat.completions.create(model="a2", messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                           temperature=0)
    assert text == again.choices[0].message.content


def test_mixed_adapter_batch_equals_single_requests(http, served_app):
    base = next(m["id"] for m in http.get("/v1/models", headers=auth(served_app, "infer")).json()["data"]
                if m["kind"] == "base")
    names = ["a1", "a2", "a3", base]
    prompts = [f"Line {i}: what light" for i in range(len(names))]
    single = {(n, p): complete(http, served_app, n, p, max_tokens=16) for n, p in zip(names, prompts)}
    jobs = list(zip(names, prompts)) * 4  # the server runs with the response cache off
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: complete(http, served_app, j[0], j[1], max_tokens=16), jobs))
    assert results == [single[j] for j in jobs]


def test_admin_lifecycle_and_corrupt_adapter_refused(http, served_app, tiny_base_dir, tmp_path):
    admin = auth(served_app, "admin")
    before = complete(http, served_app, "a1")
    broken = tmp_path / "a1-broken"
    shutil.copytree(served_app["artifacts"] / "a1", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"corrupt")
    refused = http.post("/v1/admin/adapters", headers=admin, json={"name": "a1", "path": str(broken)})
    assert refused.status_code == 422 and "checksum" in refused.json()["error"]["message"]
    assert complete(http, served_app, "a1") == before

    extra = make_adapter(tiny_base_dir, tmp_path / "a4", "a4", seed=11)
    assert http.post("/v1/admin/adapters/a1/pin", headers=admin, json={"pinned": True}).status_code == 200
    loaded = http.post("/v1/admin/adapters", headers=admin, json={"name": "a4", "path": str(extra)})
    assert loaded.status_code == 200, loaded.text
    adapters = {a["name"]: a for a in http.get("/v1/admin/adapters", headers=admin).json()["data"]}
    assert "a4" in adapters and adapters["a1"]["pinned"] and len(adapters) == 3  # max_adapters=3: one evicted
    assert http.delete("/v1/admin/adapters/a1", headers=admin).status_code == 409
    assert http.delete("/v1/admin/adapters/a4", headers=admin).status_code == 200
    gone = http.post("/v1/completions", headers=auth(served_app, "infer"), json={"model": "a4", "prompt": "x"})
    assert gone.status_code == 404
    http.post("/v1/admin/adapters/a1/pin", headers=admin, json={"pinned": False})


def test_client_disconnect_cancels_generation(http, served_app):
    import time

    headers = auth(served_app, "infer")
    runs = {}
    for model in ("a1", "a2", "a3"):  # greedy: a stream of the same request would generate the same tokens
        body = {"model": model, "prompt": "Tell a long story", "max_tokens": 200, "temperature": 0}
        started = time.perf_counter()
        usage = http.post("/v1/completions", headers=headers, json=body).json()["usage"]
        runs[model] = (usage["completion_tokens"], time.perf_counter() - started, body)
    tokens, full_run, body = max(runs.values(), key=lambda r: r[0])
    assert tokens >= 150, f"no adapter generates a long answer here: {runs}"
    started = time.perf_counter()
    with http.stream("POST", "/v1/completions", headers=headers, json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # leave after the first chunk: the connection closes
    while http.get("/ready", headers=headers).json()["active_rows"] and time.perf_counter() - started < 120:
        time.sleep(0.05)
    assert time.perf_counter() - started < 0.5 * full_run
