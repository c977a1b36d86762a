"""Overload of the gRPC transport is refused, not queued (in-process grpc.aio server, stub backend):
calls beyond `limits.grpc_concurrent_rpcs` and Health.Watch streams beyond
`limits.grpc_health_watches` get RESOURCE_EXHAUSTED at once; the Engine's full queue
(Ray Serve's BackPressureError) is `Overloaded`: 503 / RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.auth import Authenticator
from service.grpc.gen.tuneserve.v1 import inference_pb2, inference_pb2_grpc
from service.grpc.server import start_grpc_server
from service.settings import load_settings
from tests.grpc_support import LoopThread
from tests.security_support import StubBackend


class HeldBackend(StubBackend):
    """ListModels waits until the test releases it (calls pile up in the server)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0

    async def list_models(self, principal):
        self.waiting += 1
        await self.release.wait()
        return await super().list_models(principal)


@pytest.fixture
def served():
    loop = LoopThread()
    backend = HeldBackend()
    settings = load_settings({"grpc_port": 0, "auth_enabled": False, "api_keys_env": None,
                              "limits": {"grpc_concurrent_rpcs": 3, "grpc_health_watches": 1}})

    async def start():
        backend.release = asyncio.Event()  # bound to the server's loop
        return await start_grpc_server(backend, Authenticator.from_settings(settings), settings)

    server = loop.run(start())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield loop, backend, channel
    loop.loop.call_soon_threadsafe(backend.release.set)
    channel.close()
    loop.run(server.stop(0))
    loop.close()


def _wait_for(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_calls_beyond_the_concurrency_limit_are_refused_at_once(served):
    loop, backend, channel = served
    stub = inference_pb2_grpc.InferenceStub(channel)
    held = [stub.ListModels.future(inference_pb2.ListModelsRequest()) for _ in range(3)]
    _wait_for(lambda: backend.waiting == 3)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 2
    loop.loop.call_soon_threadsafe(backend.release.set)
    assert [len(f.result(timeout=10).models) for f in held] == [2, 2, 2]
    assert len(stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10).models) == 2  # capacity is back


def test_health_watches_beyond_the_limit_are_refused(served):
    _, _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    first = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(first).status == health_pb2.HealthCheckResponse.SERVING
    second = health.Watch(health_pb2.HealthCheckRequest(service="any"))
    with pytest.raises(grpc.RpcError) as refused:
        next(second)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    first.cancel()
    deadline = time.monotonic() + 10
    while True:  # the slot frees once the server sees the cancellation
        again = health.Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            assert next(again).status == health_pb2.HealthCheckResponse.SERVING
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.05)
        finally:
            again.cancel()


def test_a_full_engine_queue_is_overloaded_503_resource_exhausted():
    from ray.serve.exceptions import BackPressureError

    from service.app import RemoteCore
    from service.errors import describe
    from training.artifact.errors import Overloaded

    class FullQueue:
        async def _refuse(self, *args):
            raise BackPressureError(num_queued_requests=4, max_queued_requests=4)

        def __getattr__(self, name):
            return self

        def remote(self, *args):
            return self._refuse()

        def options(self, **kwargs):
            return self

    async def calls():
        core = RemoteCore(FullQueue())
        with pytest.raises(Overloaded, match="max_queued_requests=4"):
            await core.list_models(None)

    asyncio.run(calls())
    spec = describe(Overloaded("busy"))
    assert (spec.http_status, spec.grpc_code) == (503, "RESOURCE_EXHAUSTED")


class _DyingReplicas:
    """A stand-in DeploymentHandle whose first `deaths` calls land on a replica that died (RayActorError);
    `sends` counts how many calls reached a replica."""

    def __init__(self, deaths: int, stream_items: int = 0) -> None:
        self.deaths, self.sends, self.stream_items = deaths, 0, stream_items
        self.call = self.stream = self

    def options(self, **kwargs):
        return self

    def _dead(self) -> bool:
        self.sends += 1
        return self.sends <= self.deaths

    def remote(self, secret, method, *args):
        from ray.exceptions import RayActorError

        if method.startswith("stream_"):
            return _Stream(self, RayActorError)

        async def reply():
            if self._dead():
                raise RayActorError()
            return {"ok": method}

        return reply()


class _Stream:
    def __init__(self, handle: _DyingReplicas, error: type[Exception]) -> None:
        self.handle, self.error = handle, error

    def cancel(self) -> None:
        pass

    async def __aiter__(self):
        dead = self.handle._dead()
        for i in range(self.handle.stream_items):
            if dead and i == self.handle.stream_items // 2:
                raise self.error()
            yield {"ok": i}
        if dead:
            raise self.error()


def test_a_dead_replica_is_retried_for_reads_and_fresh_streams_never_for_admin_writes_or_half_streams():
    from service.app import DEAD_REPLICA_RETRIES, RemoteCore
    from training.artifact.errors import Unavailable

    async def drain(core, name):
        return [item async for item in getattr(core, name)(None, None)]

    async def calls():
        handle = _DyingReplicas(deaths=DEAD_REPLICA_RETRIES)
        assert await RemoteCore(handle).list_models(None) == "list_models" and handle.sends == DEAD_REPLICA_RETRIES + 1
        handle = _DyingReplicas(deaths=DEAD_REPLICA_RETRIES + 1)
        with pytest.raises(Unavailable):
            await RemoteCore(handle).health()
        assert handle.sends == DEAD_REPLICA_RETRIES + 1, "the retries are bounded"
        handle = _DyingReplicas(deaths=1)
        with pytest.raises(Unavailable):
            await RemoteCore(handle).pin_adapter("a", True)
        assert handle.sends == 1, "an admin write may have been applied: never sent twice"
        handle = _DyingReplicas(deaths=1, stream_items=0)
        assert await drain(RemoteCore(handle), "stream_chat") == [] and handle.sends == 2, "nothing sent yet: retried"
        handle = _DyingReplicas(deaths=1, stream_items=4)
        with pytest.raises(Unavailable):
            await drain(RemoteCore(handle), "stream_complete")
        assert handle.sends == 1, "half a stream cannot be replayed"

    asyncio.run(calls())
