"""gRPC against the real Ray Serve app (session fixture `served_app` from tests/service_fixtures.py).

The app runs as a subprocess on free ports (HTTP and gRPC); calls go through the real
`TuneserveClient`, the standard health service and server reflection.

    pytest -m integration tests/test_grpc_integration.py
"""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.client import TuneserveClient
from tests.service_fixtures import make_adapter
from training.artifact.errors import InvalidRequest, NotFound, PermissionDenied, Unauthenticated

pytestmark = pytest.mark.integration
PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def target(served_app) -> str:
    assert "grpc" in served_app, "served_app must start the app with grpc_port and yield its 'grpc' target"
    return served_app["grpc"]


@pytest.fixture(scope="module")
def admin(target, served_app):
    with TuneserveClient(target, served_app["keys"]["admin"]) as client:
        yield client


def test_health_and_reflection(target, served_app):
    with TuneserveClient(target) as anonymous:
        assert anonymous.health() == "SERVING" and anonymous.health("tuneserve.v1.Inference") == "SERVING"
    with grpc.insecure_channel(target) as channel:  # reflection needs any valid key, like /openapi.json
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=(("x-api-key", served_app["keys"]["metrics"]),))
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"tuneserve.v1.Inference", "tuneserve.v1.Admin", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_generate_stream_classify_and_models(admin):
    models = {m.id: m.kind for m in admin.list_models()}
    assert {"a1", "clf"} <= set(models) and "base" in models.values()
    reply = admin.generate(PROMPT, model="a1", max_tokens=8, temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens > 0
    chunks = list(admin.generate_stream(PROMPT, model="a1", max_tokens=8, temperature=0))
    assert "".join(c.text for ch in chunks for c in ch.choices) == reply.choices[0].text
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    chat = admin.generate(messages=[{"role": "user", "content": "Hello"}], model="a2", max_tokens=4, temperature=0)
    assert chat.id.startswith("chatcmpl-") and chat.choices[0].finish_reason in ("stop", "length")
    labels = admin.classify(["good", "bad"], model="clf")
    assert len(labels.results) == 2 and {s.label for s in labels.results[0].scores} == {"neg", "pos"}


def test_load_and_unload_adapter_at_run_time(admin, tiny_base_dir, tmp_path):
    path = make_adapter(tiny_base_dir, tmp_path / "grpc-live", "grpc-live", seed=21)
    info = admin.load_adapter("grpc-live", str(path))
    assert info.name == "grpc-live" and info.base
    assert admin.generate(PROMPT, model="grpc-live", max_tokens=4, temperature=0).choices
    assert admin.unload_adapter("grpc-live").unloaded
    with pytest.raises(NotFound):
        admin.generate(PROMPT, model="grpc-live", max_tokens=4)


@pytest.mark.parametrize("key, call, error, code", [
    (None, lambda c: c.generate(PROMPT, model="a1"), Unauthenticated, "UNAUTHENTICATED"),
    ("infer", lambda c: c.unload_adapter("a1"), PermissionDenied, "PERMISSION_DENIED"),
    ("infer", lambda c: c.generate(PROMPT, model="missing-model"), NotFound, "NOT_FOUND"),
    ("infer", lambda c: c.generate(PROMPT, model="a1", top_p=0.0), InvalidRequest, "INVALID_ARGUMENT"),
    ("infer", lambda c: list(c.generate_stream(PROMPT, model="a1", max_tokens=10**6)), InvalidRequest, "INVALID_ARGUMENT"),
])
def test_status_codes_through_ray(target, served_app, key, call, error, code):
    with TuneserveClient(target, served_app["keys"][key] if key else None) as client:
        with pytest.raises(error) as caught:
            call(client)
    assert caught.value.code.name == code and caught.value.message
