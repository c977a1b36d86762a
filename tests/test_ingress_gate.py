"""Only the Ingress may call the Engine deployment (service/app.py): a caller without the
application's secret (a Ray job that fetched the Engine handle, passing principal=None) is
refused before the core sees it; RemoteCore sends the secret; app_builder binds the same secret
into both deployments (one per Ray cluster). No Ray cluster needed: the deployment class runs in process.
Run: pytest tests/test_ingress_gate.py
"""

from __future__ import annotations

import asyncio

import pytest

from service.app import EngineDeployment, RemoteCore, app_builder
from service.errors import from_wire
from tests.service_fixtures import service_args
from training.artifact.errors import PermissionDenied

SECRET = "s3cret-for-this-build"


@pytest.fixture(scope="module")
def engine(tiny_base_dir, service_artifacts, serve_keys):
    from service.settings import load_settings

    settings = load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0])).model_dump(mode="json")
    deployment = EngineDeployment.func_or_class(settings, SECRET)
    yield deployment
    deployment.core.stop()


def _stream(engine, secret, method, *args) -> list[dict]:
    async def collect():
        return [reply async for reply in engine.stream(secret, method, *args)]
    return asyncio.run(collect())


@pytest.mark.parametrize("secret", ["", "wrong", None, SECRET[:-1]])
def test_engine_refuses_calls_without_the_ingress_secret(engine, secret):
    for method, args in [("list_adapters", (None,)), ("unload_adapter", ("a1", True, None)), ("health", ())]:
        reply = asyncio.run(engine.call(secret, method, *args))
        assert isinstance(from_wire(reply["error"]), PermissionDenied), (method, reply)
    from service.schemas import CompletionRequest

    chunks = _stream(engine, secret, "stream_complete", CompletionRequest(model="a1", prompt="Hi", max_tokens=2), None)
    assert len(chunks) == 1 and isinstance(from_wire(chunks[0]["error"]), PermissionDenied)


def test_engine_answers_the_ingress_secret(engine):
    reply = asyncio.run(engine.call(SECRET, "list_adapters", None))
    assert {a["name"] for a in reply["ok"].model_dump()["data"]} >= {"a1", "a2"}
    from service.schemas import CompletionRequest

    chunks = _stream(engine, SECRET, "stream_complete",
                     CompletionRequest(model="a1", prompt="Hi", max_tokens=2, temperature=0), None)
    assert chunks and all("ok" in c for c in chunks)


def test_engine_needs_a_secret_to_start():
    with pytest.raises(ValueError, match="secret"):
        EngineDeployment.func_or_class({}, "")


def test_remote_core_sends_its_secret_first():
    seen = []

    class Handle:
        class call:  # noqa: N801 - mirrors DeploymentHandle.call
            @staticmethod
            async def remote(*args):
                seen.append(args)
                return {"ok": "fine"}

    assert asyncio.run(RemoteCore(Handle(), "abc").health()) == "fine"
    assert seen == [("abc", "health")]


def _bound_secrets(app) -> tuple[str, str]:
    engine_node, _settings, ingress_secret = app._bound_deployment.init_args
    return engine_node._bound_deployment.init_args[1], ingress_secret


def test_app_builder_binds_the_cluster_secret_into_both_deployments(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "cluster-token-1")
    engine_secret, ingress_secret = _bound_secrets(app_builder({"artifacts_dir": str(tmp_path)}))
    assert engine_secret == ingress_secret and len(engine_secret) >= 32 and "cluster-token-1" not in engine_secret
    # every build in one cluster agrees (rolling Serve updates), another cluster's differs
    assert _bound_secrets(app_builder({"artifacts_dir": str(tmp_path)}))[0] == engine_secret
    token_file = tmp_path / "auth_token"
    token_file.write_text("cluster-token-1\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert _bound_secrets(app_builder({"artifacts_dir": str(tmp_path)}))[0] == engine_secret
    token_file.write_text("cluster-token-2")
    assert _bound_secrets(app_builder({"artifacts_dir": str(tmp_path)}))[0] != engine_secret


def test_without_a_ray_token_each_build_draws_a_random_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no-such-token"))
    first = _bound_secrets(app_builder({"artifacts_dir": str(tmp_path)}))
    second = _bound_secrets(app_builder({"artifacts_dir": str(tmp_path)}))
    assert first[0] == first[1] and second[0] == second[1] and first[0] != second[0]
