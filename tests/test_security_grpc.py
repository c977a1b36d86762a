"""Security of the gRPC transport (in-process grpc.aio server over the instant stub backend):
the RPC × auth case matrix with exact status codes (same table as HTTP), and gRPC over TLS with
a self-signed certificate generated here."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from service.auth import Authenticator
from service.grpc.gen.tuneserve.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc
from service.grpc.server import GrpcServer
from service.security import SecuritySettings
from service.security.grpc import bind, peer_address
from service.security.tls import self_signed_cert
from tests.grpc_support import LoopThread
from tests.security_support import (
    ADAPTER, CASES, StubBackend, case_key, expected_status, make_keyring, stub_grpc_server,
)

HTTP_TO_GRPC = {200: grpc.StatusCode.OK, 401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}
CHAT = inference_pb2.ChatMessages(messages=[inference_pb2.ChatMessage(role="user", content="hi")])
# (name, call(inference_stub, admin_stub, metadata), scope, adapter-bound)
RPCS = [
    ("Generate", lambda i, a, md: i.Generate(inference_pb2.GenerateRequest(model=ADAPTER, prompt="hi"), metadata=md),
     "infer", True),
    ("Generate chat", lambda i, a, md: i.Generate(inference_pb2.GenerateRequest(model=ADAPTER, messages=CHAT), metadata=md),
     "infer", True),
    ("GenerateStream", lambda i, a, md: list(i.GenerateStream(inference_pb2.GenerateRequest(model=ADAPTER, prompt="hi"),
                                                              metadata=md)), "infer", True),
    ("Classify", lambda i, a, md: i.Classify(inference_pb2.ClassifyRequest(model=ADAPTER, inputs=["good"]), metadata=md),
     "infer", True),
    ("ListModels", lambda i, a, md: i.ListModels(inference_pb2.ListModelsRequest(), metadata=md), "infer", False),
    ("GetModel", lambda i, a, md: i.GetModel(inference_pb2.GetModelRequest(model=ADAPTER), metadata=md), "infer", True),
    ("LoadAdapter", lambda i, a, md: a.LoadAdapter(admin_pb2.LoadAdapterRequest(name=ADAPTER), metadata=md), "admin", True),
    ("UnloadAdapter", lambda i, a, md: a.UnloadAdapter(admin_pb2.UnloadAdapterRequest(name=ADAPTER), metadata=md),
     "admin", True),
    ("ListAdapters", lambda i, a, md: a.ListAdapters(admin_pb2.ListAdaptersRequest(), metadata=md), "admin", False),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("sec-grpc") / "keys.json"
    keys = make_keyring(path)
    loop = LoopThread()

    async def start() -> GrpcServer:
        # the matrix fails authentication from one address many times: a block would mask the statuses
        server = GrpcServer(StubBackend(), Authenticator(keys_file=path), "127.0.0.1", 0, health_interval_s=60,
                            security=SecuritySettings(block_after_failures=1000, rate_limit_store="local"))
        await server.start()
        return server

    server = loop.run(start())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield inference_pb2_grpc.InferenceStub(channel), admin_pb2_grpc.AdminStub(channel), keys
    channel.close()
    loop.run(server.stop(0))
    loop.close()


def test_invalid_utf8_and_non_finite_values_are_invalid_argument(tmp_path):
    keys = make_keyring(tmp_path / "keys.json")
    md = [("authorization", f"Bearer {keys['good']}")]
    good = inference_pb2.GenerateRequest(model=ADAPTER, prompt="XXXX").SerializeToString()
    with stub_grpc_server(tmp_path / "keys.json") as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw = channel.unary_unary("/tuneserve.v1.Inference/Generate", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        assert raw(good, metadata=md)  # the raw path itself works
        for payload in (good.replace(b"XXXX", b"\xed\xa0\x80X"), good.replace(b"XXXX", b"\xffXXX")):  # not UTF-8
            with pytest.raises(grpc.RpcError) as caught:
                raw(payload, metadata=md)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in caught.value.details()
        inference = inference_pb2_grpc.InferenceStub(channel)
        for fields in ({"temperature": float("nan")}, {"top_p": float("inf")}, {"max_tokens": -5}, {"n": 0}):
            with pytest.raises(grpc.RpcError) as caught:
                inference.Generate(inference_pb2.GenerateRequest(model=ADAPTER, prompt="x", **fields), metadata=md)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert next(iter(fields)) in caught.value.details()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name,call,scope,adapter_bound", RPCS, ids=[r[0] for r in RPCS])
def test_rpc_case_matrix(served, name, call, scope, adapter_bound, case):
    inference, admin, keys = served
    key = case_key(keys, case, scope)
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    expected = HTTP_TO_GRPC[expected_status(case, scope, adapter_bound)]
    try:
        call(inference, admin, metadata)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()
        assert err.details(), "the client must see what was wrong"
    assert code == expected


@pytest.mark.parametrize("peer,address", [("ipv4:10.1.2.3:5555", "10.1.2.3"), ("ipv6:[::1]:5555", "::1"),
                                          ("unix:/tmp/s", "unix:/tmp/s"), (None, "unknown")])
def test_peer_address(peer, address):
    assert peer_address(peer) == address


def test_grpc_over_tls_with_a_self_signed_cert(tmp_path):
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    cert, key = self_signed_cert(tmp_path)
    security = SecuritySettings(tls_certfile=cert, tls_keyfile=key)

    async def scenario() -> tuple[int, int]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = bind(server, "127.0.0.1:0", security)
        await server.start()
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        await server.stop(0)
        return reply.status, refused.value.code()

    status, plain_code = asyncio.run(scenario())
    assert status == 1  # SERVING over TLS, verified against the self-signed root
    assert plain_code == grpc.StatusCode.UNAVAILABLE  # plaintext clients cannot talk to a TLS port


def test_grpc_calls_are_audited_rate_limited_and_served_over_tls(tmp_path):
    import json

    from service.security import SecurityGuard
    from service.security.ratelimit import LocalBuckets

    cert, key = self_signed_cert(tmp_path / "tls")
    keys = make_keyring(tmp_path / "keys.json", {"requests_per_min": 3})
    security = SecuritySettings(rate_limit_store="local", audit_log=tmp_path / "audit.jsonl",
                                tls_certfile=cert, tls_keyfile=key)
    auth = Authenticator(keys_file=tmp_path / "keys.json")
    guard = SecurityGuard(auth, security, store=LocalBuckets())
    loop = LoopThread()

    async def start() -> GrpcServer:
        server = GrpcServer(StubBackend(), auth, "127.0.0.1", 0, health_interval_s=60, guard=guard, security=security)
        await server.start()
        return server

    server = loop.run(start())
    channel = grpc.secure_channel(f"localhost:{server.port}", grpc.ssl_channel_credentials(cert.read_bytes()))
    try:
        inference = inference_pb2_grpc.InferenceStub(channel)
        md = (("authorization", f"Bearer {keys['good']}"),)
        codes = []
        for call in (lambda: inference.Generate(inference_pb2.GenerateRequest(model=ADAPTER, prompt="hi"), metadata=md),
                     lambda: list(inference.GenerateStream(inference_pb2.GenerateRequest(model=ADAPTER, prompt="hi"),
                                                           metadata=md)),
                     lambda: inference.ListModels(inference_pb2.ListModelsRequest(), metadata=(("x-api-key", keys["bad"]),)),
                     lambda: inference.ListModels(inference_pb2.ListModelsRequest(), metadata=md),
                     lambda: inference.ListModels(inference_pb2.ListModelsRequest(), metadata=md)):
            try:
                call()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
    finally:
        channel.close()
        loop.run(server.stop(0))
        loop.close()
    assert codes == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK,
                                                grpc.StatusCode.RESOURCE_EXHAUSTED]
    guard.audit.flush()  # lines are written by a background thread
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(line["route"].rsplit("/", 1)[1], line["status"]) for line in lines] == [
        ("Generate", 200), ("GenerateStream", 200), ("ListModels", 401), ("ListModels", 200), ("ListModels", 429)]
    assert lines[0]["transport"] == "grpc" and lines[0]["prompt_tokens"] == 3 and lines[0]["completion_tokens"] == 2
    assert lines[1]["completion_tokens"] == 2 and lines[2]["reason"] == "invalid" and lines[4]["reason"] == "rate_limited_requests"
    assert all(line["client"] == "127.0.0.1" for line in lines)
    assert keys["good"].split("_", 2)[2] not in (tmp_path / "audit.jsonl").read_text()
