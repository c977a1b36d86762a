"""Helpers for the security tests: a stub serving backend (authorizes like ServingCore, answers
instantly) and a keyring with one key per auth case of the route × case matrix.

    keys = make_keyring(tmp_path / "keys.json")     # {"good": plain, "expired": plain, ...}
    app = create_app(StubBackend(), Authenticator(keys_file=path), settings)
    client_from, keys = http_app(tmp_path, trusted_proxies=["10.0.0.0/8"])   # TestClient per peer address
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from service.auth import Authenticator
from service.keys import add_key, create_key
from service.schemas import (
    AdapterInfo, AdapterList, ChatChoice, ChatCompletionResponse, Classification, ClassifyResponse, CompletionChoice,
    CompletionResponse, Health, ModelCard, ModelList, Usage,
)

ADAPTER = "a1"
CASES = ("none", "bad", "expired", "revoked", "wrong_scope", "wrong_adapter", "good")


def make_keyring(path: Path, good_limits: dict | None = None) -> dict[str, str]:
    """One key per case; 'bad' is a well-formed key that is in no file; 'none' sends nothing."""
    spec = {"good": (["infer", "admin", "metrics"], ["a*"]), "no_metrics": (["infer", "admin"], ["*"]),
            "expired": (["infer", "admin"], ["*"]),
            "revoked": (["infer", "admin"], ["*"]), "wrong_scope": (["metrics"], ["*"]),
            "wrong_adapter": (["infer", "admin", "metrics"], ["zz-*"])}
    keys: dict[str, str | None] = {"none": None}
    for label, (scopes, adapters) in spec.items():
        plain, record = create_key(label, scopes, adapters, **(good_limits if label == "good" and good_limits else {}))
        record.revoked = label == "revoked"
        if label == "expired":
            record.expires_at = datetime.now(timezone.utc) - timedelta(minutes=1)
        add_key(path, record)
        keys[label] = plain
    keys["bad"] = create_key("nobody")[0]
    return keys


def case_key(keys: dict, case: str, scope: str) -> str | None:
    """The key sent for a case: 'wrong_scope' is a key lacking the route's scope."""
    return keys["no_metrics"] if case == "wrong_scope" and scope == "metrics" else keys[case]


def expected_status(case: str, scope: str, adapter_bound: bool) -> int:
    if case in ("none", "bad", "expired", "revoked"):
        return 401
    if case == "wrong_scope" or (case == "wrong_adapter" and adapter_bound):
        return 403
    return 200


def _usage(prompt: int = 3, completion: int = 2) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _adapter(name: str) -> AdapterInfo:
    return AdapterInfo(name=name, path=f"/artifacts/{name}", base="tiny", method="lora", task="causal-lm",
                       pinned=False, loaded_at=0, version="1")


class StubBackend:
    """The ServingCore interface, instant: authorizes exactly where the core does."""

    @staticmethod
    def _check(principal, scope: str, model: str | None = None) -> None:
        if principal is not None:
            Authenticator.authorize(principal, scope, model)

    async def complete(self, request, principal):
        self._check(principal, "infer", request.model)
        return CompletionResponse(id="cmpl-1", created=int(time.time()), model=request.model,
                                  choices=[CompletionChoice(index=0, text="ok", finish_reason="stop")], usage=_usage())

    async def chat(self, request, principal):
        self._check(principal, "infer", request.model)
        return ChatCompletionResponse(id="chat-1", created=int(time.time()), model=request.model, usage=_usage(),
                                      choices=[ChatChoice(index=0, message={"content": "ok"}, finish_reason="stop")])

    async def _chunks(self, request, principal, make):
        self._check(principal, "infer", request.model)
        for i, text in enumerate(("o", "k")):
            yield make(request.model, i, text)

    def stream_complete(self, request, principal):
        return self._chunks(request, principal, lambda model, i, text: {
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": None}]})

    def stream_chat(self, request, principal):
        return self._chunks(request, principal, lambda model, i, text: {
            "id": "chat-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})

    async def classify(self, request, principal):
        self._check(principal, "infer", request.model)
        return ClassifyResponse(id="cls-1", created=0, model=request.model, usage=_usage(4, 0),
                                data=[Classification(index=i, label="pos", score=0.9, scores=[])
                                      for i, _ in enumerate(request.inputs())])

    async def list_models(self, principal):
        self._check(principal, "infer")
        ids = [m for m in ("a1", "a2") if principal is None or principal.may_use(m)]
        return ModelList(data=[ModelCard(id=m, created=0, kind="adapter") for m in ids])

    async def load_adapter(self, request, principal=None):
        self._check(principal, "admin", request.name)
        return _adapter(request.name)

    async def unload_adapter(self, name, force=False, principal=None):
        self._check(principal, "admin", name)
        return {"name": name, "unloaded": True}

    async def pin_adapter(self, name, pinned, principal=None):
        self._check(principal, "admin", name)
        return _adapter(name)

    async def list_adapters(self, principal=None):
        self._check(principal, "admin")
        return AdapterList(data=[_adapter(ADAPTER)] if principal is None or principal.may_use(ADAPTER) else [])

    async def health(self):
        return Health(status="ok", models=2)


def http_app(tmp_path, **security):
    """`client_from(peer)` (TestClient apps seen from that address) and the keyring; blocks after 3 failures."""
    from fastapi.testclient import TestClient

    from service.http import create_app
    from service.settings import load_settings

    keys = make_keyring(tmp_path / "keys.json")
    settings = load_settings({"keys_file": str(tmp_path / "keys.json"), "api_keys_env": None,
                              "security": {"rate_limit_store": "local", "block_after_failures": 3, "block_s": 300,
                                           **security}})
    app = create_app(StubBackend(), Authenticator.from_settings(settings), settings)
    return (lambda peer: TestClient(app, client=(peer, 40000))), keys


def bearer(key):
    return {"Authorization": f"Bearer {key}"} if key else {}


@contextmanager
def stub_grpc_server(keys_file: Path, **security):
    """A grpc.aio server over `StubBackend` on a free port (its loop in a thread); yields the server."""
    from service.grpc.server import GrpcServer
    from service.security import SecuritySettings
    from tests.grpc_support import LoopThread

    loop = LoopThread()

    async def start() -> GrpcServer:
        server = GrpcServer(StubBackend(), Authenticator(keys_file=keys_file), "127.0.0.1", 0, health_interval_s=60,
                            security=SecuritySettings(rate_limit_store="local", **security))
        await server.start()
        return server

    server = loop.run(start())
    try:
        yield server
    finally:
        loop.run(server.stop(0))
        loop.close()


def rpc_code(call):
    """The status code a gRPC call ends with (OK when it returns)."""
    import grpc

    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()
