"""Helpers and fixtures for service tests (importable by other areas' tests).

    from tests.service_fixtures import make_adapter, make_classifier
    make_adapter(base_dir, tmp_path / "a1", name="a1", seed=1)     # LoRA adapter artifact on the base

`in_process_server(settings, keys)` (a started ServingCore behind the REST app's TestClient) and
`grpc_inference_stub(core, key)` serve tests without Ray. Pytest fixtures, registered for the whole
suite by tests/conftest.py (never import them into a test module: that makes a second session-lived
copy): `service_artifacts` (adapters a1, a2, a3 + a classifier in one artifacts dir), `serve_keys`
(a keys file with infer and admin keys) and `served_app` (the real Ray Serve app on a free port,
started once per session; integration only).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache
from pathlib import Path

from service.ports import free_port  # noqa: F401 - re-exported for tests and benchmarks (race-free, see there)
from training.artifact import ArtifactWriter, fingerprint_model_dir

LORA_TARGETS = ["q_proj", "v_proj"]


def make_adapter(base_dir: Path, dest: Path, name: str, seed: int = 0, version: str = "1", r: int = 8,
                 task: str = "causal-lm", method: str = "lora", lora: dict | None = None, **manifest_fields) -> Path:
    """A LoRA adapter artifact with random (non-zero) weights on the base at `base_dir`; `method`
    dora makes it DoRA, lora-head adds a trained copy of lm_head (PEFT's modules_to_save); `lora`: more
    LoraConfig fields (target_modules, use_rslora, ...); `manifest_fields` go into its manifest (e.g.
    response_schema, chat_template, tool_call_format)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(**{"r": r, "lora_alpha": 2 * r, "target_modules": LORA_TARGETS, "init_lora_weights": False,
                           "use_dora": method == "dora",
                           "modules_to_save": ["lm_head"] if method == "lora-head" else None, **(lora or {})})
    model = get_peft_model(base, config)
    with torch.no_grad():  # strong enough to change greedy outputs of the tiny base
        for param_name, param in model.named_parameters():
            if "lora_" in param_name:
                param.mul_(4.0)
            elif "modules_to_save" in param_name:  # a trained copy of the head
                param.add_(0.05 * torch.randn_like(param))
    manifest = {"name": name, "kind": "adapter", "task": task, "method": "lora" if method == "lora-head" else method,
                "version": version, "base": {"id": "tiny-llama", "sha256": fingerprint_model_dir(base_dir)},
                **manifest_fields}
    with ArtifactWriter(dest, manifest, overwrite=True) as writer:
        model.save_pretrained(str(writer.path), safe_serialization=True)
        for extra in ("README.md",):
            (writer.path / extra).unlink(missing_ok=True)
    return dest


def make_classifier(base_dir: Path, dest: Path, name: str, labels: list[str], seed: int = 0) -> Path:
    """A full-model classification artifact (sequence classification head on the tiny base)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    manifest = {"name": name, "kind": "full-model", "task": "classification", "labels": labels,
                "base": {"id": "tiny-llama", "sha256": fingerprint_model_dir(base_dir)}}
    with ArtifactWriter(dest, manifest, overwrite=True) as writer:
        model.save_pretrained(str(writer.path), safe_serialization=True)
        tokenizer.save_pretrained(str(writer.path))
    return dest


import pytest  # noqa: E402

ADAPTERS = ("a1", "a2", "a3")


@pytest.fixture(scope="session")
def service_artifacts(tiny_base_dir, tmp_path_factory) -> Path:
    """An artifacts dir with LoRA adapters a1..a3 and a classifier `clf` (labels neg/pos)."""
    root = tmp_path_factory.mktemp("serve-artifacts")
    for i, name in enumerate(ADAPTERS):
        make_adapter(tiny_base_dir, root / name, name, seed=i + 1)
    make_classifier(tiny_base_dir, root / "clf", "clf", ["neg", "pos"])
    return root


@pytest.fixture(scope="session")
def serve_keys(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A keys file with an infer key, an admin key, a key limited to adapter a1 and a metrics-only key."""
    from service.keys import add_key, create_key

    path = tmp_path_factory.mktemp("serve-keys") / "keys.json"
    keys = {}
    for label, scopes, adapters in [("infer", ["infer"], ["*"]), ("admin", ["infer", "admin"], ["*"]),
                                    ("only-a1", ["infer"], ["a1"]), ("metrics", ["metrics"], ["*"])]:
        plain, record = create_key(label, scopes, adapters)
        add_key(path, record)
        keys[label] = plain
    return path, keys


@cache
def _state_root() -> Path:
    """One temp dir per test process for the servers' adapter state, removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ts-fleet-"))
    atexit.register(shutil.rmtree, root, True)
    return root


def service_args(base_dir: Path, artifacts: Path, keys_file: Path, **extra) -> dict:
    """Application args for tests: small limits, auth from the keys file only."""
    import tempfile

    # tests load adapters built under the temp dir besides artifacts_dir (paths outside the roots are refused);
    # each server gets its own admin-set adapter state, not one beside the session's shared artifacts
    state = Path(tempfile.mkdtemp(prefix="fleet-", dir=_state_root())) / "state.json"
    return {"base_model": str(base_dir), "artifacts_dir": str(artifacts), "keys_file": str(keys_file),
            "api_keys_env": None, "max_adapters": 3, "security": {"adapter_roots": [tempfile.gettempdir()]},
            "fleet": {"state_file": str(state)}, "feedback": {"path": str(state.with_name("feedback.db"))}, **extra}


@pytest.fixture(scope="session")
def served_app(tiny_base_dir, service_artifacts, serve_keys, tmp_path_factory):
    """The real Ray Serve app (`python -m service.launcher`) on a free port, once per session.

    Yields a dict: url, keys ({label: plain key}), artifacts (dir), log (server log path).
    Runs in a subprocess so the test process never owns a Ray cluster.
    """
    from service.server_process import spawn, terminate

    port, grpc_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("served-app") / "server.log"
    args = service_args(tiny_base_dir, service_artifacts, serve_keys[0], port=port, grpc_port=grpc_port,
                        **{"cache.enabled": False})
    overrides = [f"{k}={'null' if v is None else v}" for k, v in args.items()]
    proc, url = spawn(overrides, log_path, env={"RAY_TMPDIR": "/tmp/ts-ray-test"})
    try:
        yield {"url": url, "grpc": f"127.0.0.1:{grpc_port}", "keys": serve_keys[1], "artifacts": service_artifacts,
               "log": log_path}
    finally:
        terminate(proc)


@contextmanager
def in_process_server(settings, keys: dict[str, str]):
    """A started ServingCore behind the REST app, as FastAPI's TestClient (with `.core` and `.keys`,
    the plain keys by label); the core stops on exit. Pass it as an `openai` client's http_client."""
    from fastapi.testclient import TestClient

    from service.auth import Authenticator
    from service.core import ServingCore
    from service.http import create_app

    core = ServingCore(settings)
    core.start()
    try:
        with TestClient(create_app(core, Authenticator.from_settings(settings), settings)) as http:
            http.core, http.keys = core, keys
            yield http
    finally:
        core.stop()


@contextmanager
def grpc_inference_stub(core, key: str):
    """(an Inference stub on a grpc.aio server over `core` on a free port, metadata carrying `key`)."""
    import grpc

    from service.auth import Authenticator
    from service.grpc.gen.tuneserve.v1 import inference_pb2_grpc
    from service.grpc.server import GrpcServer
    from tests.grpc_support import LoopThread

    loop = LoopThread()

    async def start() -> GrpcServer:
        server = GrpcServer(core, Authenticator.from_settings(core.settings), "127.0.0.1", 0, health_interval_s=60)
        await server.start()
        return server

    server = loop.run(start())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield inference_pb2_grpc.InferenceStub(channel), (("x-api-key", key),)
    finally:
        channel.close()
        loop.run(server.stop(0))
        loop.close()


def openai_client(http, label: str = "infer"):
    """The official `openai` client over an `in_process_server`, with the key labelled `label`."""
    import openai

    return openai.OpenAI(base_url="http://testserver/v1", api_key=http.keys[label], http_client=http, max_retries=0)
