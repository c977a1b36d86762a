"""Adapters from S3-compatible object storage: a moto server (server mode, real HTTP on a free port)
holds uploaded artifacts; the admin API and the adapters config load them by s3:// URI, verified
against the manifest's checksums first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.core import ServingCore
from service.schemas import CompletionRequest, LoadAdapterRequest
from service.settings import load_settings
from tests.service_fixtures import make_adapter, service_args
from training.artifact.errors import ArtifactInvalid, NotFound, PermissionDenied

BUCKET = "models"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on a free port; the AWS_* variables boto3 reads point at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    from service.ports import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def upload(client, directory: Path, prefix: str) -> str:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(directory).as_posix()}", Body=path.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def test_adapters_load_from_s3_uris_verified_by_their_checksums(s3, tiny_base_dir, service_artifacts, serve_keys,
                                                                tmp_path):
    good = upload(s3, make_adapter(tiny_base_dir, tmp_path / "good", "good", seed=21), "team/good")
    bad_dir = make_adapter(tiny_base_dir, tmp_path / "bad", "bad", seed=22)
    weights = bad_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")  # the manifest's sha256 no longer matches
    bad = upload(s3, bad_dir, "team/bad")
    cache = tmp_path / "s3-cache"
    settings = load_settings(service_args(tiny_base_dir, service_artifacts, serve_keys[0], adapters={"from-config": good},
                                          fleet={"state_file": str(tmp_path / "state.json"), "s3_cache_dir": str(cache),
                                                 "s3_roots": [f"s3://{BUCKET}/team/"]}))
    core = ServingCore(settings)
    core.start()
    try:
        assert core.registry.catalog.adapters["from-config"].parent == cache  # fetched and verified on start
        info = run(core.load_adapter(LoadAdapterRequest(name="good", path=good)))
        assert info.fleet.complete and Path(info.path).parent == cache
        request = dict(prompt="To be, or not to be", max_tokens=8, temperature=0)
        served = run(core.complete(CompletionRequest(model="good", **request), None)).choices[0].text
        base = run(core.complete(CompletionRequest(model=core.registry.base_name, **request), None)).choices[0].text
        assert served != base
        assert run(core.complete(CompletionRequest(model="from-config", **request), None)).choices[0].text == served

        with pytest.raises(ArtifactInvalid, match="checksum mismatch") as refused:
            run(core.load_adapter(LoadAdapterRequest(name="bad", path=bad)))
        assert bad in refused.value.message and "bad" not in core.registry.adapters
        assert [p for p in cache.iterdir()] == [Path(info.path)]  # the tampered copy left nothing behind
        with pytest.raises(NotFound, match="does not exist"):
            run(core.load_adapter(LoadAdapterRequest(name="none", path=f"s3://{BUCKET}/team/none")))
        with pytest.raises(PermissionDenied, match="s3_roots"):
            run(core.load_adapter(LoadAdapterRequest(name="x", path=f"s3://{BUCKET}/elsewhere/good")))
        assert core.fleet.coordinator.state().adapters["good"].source == good  # every replica fetches the URI
    finally:
        core.stop()
