"""Production feedback over a real ServingCore (tiny base, no Ray): REST and gRPC, per key and tenant,
validation at the edge, and the issue's check — requests are served, feedback that contradicts them
drops the online accuracy, and the exported gauge moves (the alert that fires on it is unit-tested
with promtool in tests/test_deploy_prometheus.py).  Run: pytest tests/test_feedback_service.py
"""

from __future__ import annotations

import json

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.grpc.gen.tuneserve.v1 import inference_pb2
from service.settings import load_settings
from tests.service_fixtures import (  # noqa: F401
    grpc_inference_stub, in_process_server, service_args,
)


@pytest.fixture(scope="module")
def http(tiny_base_dir, service_artifacts, serve_keys):
    settings = load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0]))
    with in_process_server(settings, serve_keys[1]) as client:
        yield client


def auth(http, label: str) -> dict:
    return {"Authorization": f"Bearer {http.keys[label]}"}


def quality_gauge(http, model: str) -> dict[str, float]:
    """tuneserve_online_quality{adapter=model} and its samples from /metrics, by kind."""
    text = http.get("/metrics", headers=auth(http, "metrics")).text
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("tuneserve_online_quality", "tuneserve_online_quality_samples"):
            for sample in family.samples:
                if sample.labels.get("adapter") == model:
                    found[f"{family.name}:{sample.labels['kind']}"] = sample.value
    return found


def test_label_feedback_drops_online_accuracy_and_moves_the_gauge(http):
    texts = [f"message number {i}" for i in range(8)]
    reply = http.post("/v1/classify", headers=auth(http, "infer"), json={"model": "clf", "input": texts}).json()
    predicted = [d["label"] for d in reply["data"]]
    for i, label in enumerate(predicted):  # users confirm every served label
        done = http.post("/v1/feedback", headers=auth(http, "infer"), json={"id": reply["id"], "index": i, "label": label})
        assert done.status_code == 200 and done.json()["model"] == "clf", done.text
    assert quality_gauge(http, "clf") == {"tuneserve_online_quality:accuracy": 1.0,
                                          "tuneserve_online_quality_samples:accuracy": 8.0}
    second = http.post("/v1/classify", headers=auth(http, "infer"), json={"model": "clf", "input": texts}).json()
    flip = {"neg": "pos", "pos": "neg"}
    for i, served in enumerate(d["label"] for d in second["data"]):  # ... then they correct every served label
        assert http.post("/v1/feedback", headers=auth(http, "infer"),
                         json={"id": second["id"], "index": i, "label": flip[served], "comment": "wrong"}).status_code == 200
    gauge = quality_gauge(http, "clf")
    assert gauge["tuneserve_online_quality:accuracy"] == pytest.approx(0.5)  # 8 right of 16
    quality = http.core.feedback_store.online_quality("clf")
    assert (quality.kind, quality.n) == ("accuracy", 16) and quality.value == pytest.approx(0.5)
    # the rollout gate reads the same store: what a promotion compares (no feedback yet: none, not 0)
    numbers = http.core.rollouts.numbers("clf")
    assert (numbers.quality_kind, numbers.quality_n, numbers.quality) == ("accuracy", 16, pytest.approx(0.5))
    assert http.core.rollouts.numbers("a2").quality_n == 0 and http.core.rollouts.numbers("a2").quality is None


def test_feedback_is_scoped_to_the_key_and_its_tenant(http):
    reply = http.post("/v1/classify", headers=auth(http, "infer"), json={"model": "clf", "input": "hi"}).json()
    for label in ("admin", "only-a1"):  # another tenant's key: the same 404 as an unknown id
        other = http.post("/v1/feedback", headers=auth(http, label), json={"id": reply["id"], "label": "pos"})
        assert other.status_code == 404 and other.json()["error"]["param"] == "id"
    assert http.post("/v1/feedback", headers=auth(http, "metrics"), json={"id": reply["id"], "label": "pos"}).status_code == 403
    assert http.post("/v1/feedback", json={"id": reply["id"], "label": "pos"}).status_code == 401


@pytest.mark.parametrize("body,status,param", [
    ({"id": "cls-" + "0" * 24, "label": "pos"}, 404, "id"),
    ({"id": "whatever", "rating": 3}, 404, "id"),
    ({"id": "{served}", "rating": 9}, 400, "rating"),
    ({"id": "{served}", "label": "maybe"}, 400, "label"),
    ({"id": "{served}", "index": 3, "label": "pos"}, 400, "index"),
    ({"id": "{served}", "label": "pos", "rating": 2}, 400, "rating"),
    ({"id": "{served}", "correct_answer": "pos"}, 400, "correct_answer"),
    ({"id": "{served}", "rating": 2, "comment": "x" * 2000}, 400, "comment"),
    ({"id": "{served}", "rating": 2, "bogus": 1}, 400, "bogus"),
])
def test_bad_feedback_gets_a_clear_error_naming_the_field(http, body, status, param):
    served = http.post("/v1/classify", headers=auth(http, "infer"), json={"model": "clf", "input": "x"}).json()["id"]
    body = json.loads(json.dumps(body).replace("{served}", served))
    response = http.post("/v1/feedback", headers=auth(http, "infer"), json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_generation_ratings_and_answers_unary_and_streamed(http):
    done = http.post("/v1/completions", headers=auth(http, "infer"),
                     json={"model": "a1", "prompt": ["Hello", "Bye"], "n": 2, "max_tokens": 4}).json()
    assert http.post("/v1/feedback", headers=auth(http, "infer"), json={"id": done["id"], "index": 3, "rating": 2}).status_code == 200
    with http.stream("POST", "/v1/chat/completions", headers=auth(http, "infer"),
                     json={"model": "a1", "messages": [{"role": "user", "content": "Capital of France?"}],
                           "max_tokens": 4, "stream": True}) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    answer = http.post("/v1/feedback", headers=auth(http, "infer"), json={"id": chunks[0]["id"], "correct_answer": "Paris"})
    assert answer.status_code == 200 and answer.json()["kind"] == "correct_answer"
    record = http.core.feedback_store.lookup(chunks[0]["id"])
    assert record.items[0].input == "Capital of France?" and record.items[0].prediction == streamed
    assert http.core.feedback_store.online_quality("a1").kind == "rating"
    paths = http.get("/openapi.json", headers=auth(http, "infer")).json()["paths"]
    assert "/v1/feedback" in paths


def test_grpc_feedback(http):
    with grpc_inference_stub(http.core, http.keys["infer"]) as (stub, metadata):
        reply = stub.Classify(inference_pb2.ClassifyRequest(model="clf", inputs=["a", "b"]), metadata=metadata)
        done = stub.Feedback(inference_pb2.FeedbackRequest(id=reply.id, index=1, label=reply.results[1].label),
                             metadata=metadata)
        assert (done.model, done.kind, done.index) == ("clf", "label", 1) and done.id.startswith("fb-")
        for request, code in [(inference_pb2.FeedbackRequest(id="cls-" + "1" * 24, rating=3), grpc.StatusCode.NOT_FOUND),
                              (inference_pb2.FeedbackRequest(id=reply.id, rating=7), grpc.StatusCode.INVALID_ARGUMENT),
                              (inference_pb2.FeedbackRequest(id=reply.id), grpc.StatusCode.INVALID_ARGUMENT)]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Feedback(request, metadata=metadata)
            assert err.value.code() == code, err.value.details()
    with grpc_inference_stub(http.core, http.keys["admin"]) as (stub, metadata):  # another tenant
        with pytest.raises(grpc.RpcError) as err:
            stub.Feedback(inference_pb2.FeedbackRequest(id=reply.id, label="pos"), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
