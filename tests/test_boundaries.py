"""Architecture rules that must not erode: package boundaries and a lazy CLI.

- `training` never imports `service` or the CLI (`tuneserve`); `service` imports from training only `training.artifact`.
- `training.artifact` imports nothing else from training (it is the shared contract).
- The transports (`service/http`, `service/grpc`) never import the engine or the serving core: they
  call a `ServingBackend` (service/backend.py), which `ServingCore` and `RemoteCore` both are.
- The engine (`service/engine`) never imports Ray.
- Importing the CLI loads no torch, ray, transformers or peft, so `tuneserve --help` is instant.
- Ray is started in one place, `training.artifact.local_ray` (token auth, loopback only; docs/security.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_any(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def imported_modules(package: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "/gen/" in path.as_posix():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(ROOT)), alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((str(path.relative_to(ROOT)), node.module))
    return found


@pytest.mark.parametrize("outer", ["service", "tuneserve"])
def test_training_never_imports_service_or_cli(outer):
    bad = [(f, m) for f, m in imported_modules("training") if m == outer or m.startswith(f"{outer}.")]
    assert not bad, f"training must not import {outer}: {bad}"


@pytest.mark.parametrize("transport", ["service/http", "service/grpc"])
def test_transports_reach_the_core_only_through_the_backend_protocol(transport):
    bad = [(f, m) for f, m in imported_modules(transport) if imports_any(m, ("service.engine", "service.core"))]
    assert not bad, f"{transport} must call a ServingBackend, not import the engine or core: {bad}"


def test_engine_runs_without_ray():
    bad = [(f, m) for f, m in imported_modules("service/engine") if imports_any(m, ("ray",))]
    assert not bad, f"the engine must not import Ray (the Ray app wraps it in service/app.py): {bad}"


def test_both_serving_classes_satisfy_the_backend_protocol():
    """The in-process core and the Ray handle proxy offer every ServingBackend method with its parameters."""
    import inspect

    from service.app import RemoteCore
    from service.backend import STREAM_CALLS, UNARY_CALLS, ServingBackend
    from service.core import ServingCore

    for cls in (ServingCore, RemoteCore):
        for name in UNARY_CALLS | STREAM_CALLS:
            expected = list(inspect.signature(getattr(ServingBackend, name)).parameters)
            assert list(inspect.signature(getattr(cls, name)).parameters) == expected, (cls.__name__, name)
        assert inspect.isasyncgenfunction(ServingCore.stream_chat) and inspect.iscoroutinefunction(cls.chat)
    assert UNARY_CALLS == {"complete", "chat", "classify", "embed", "list_models", "load_adapter", "unload_adapter",
                           "pin_adapter", "list_adapters", "feedback", "health", "rollout"}
    assert isinstance(RemoteCore(handle=None), ServingBackend)


def test_service_reads_training_only_through_artifact():
    bad = [(f, m) for f, m in imported_modules("service")
           if (m == "training" or m.startswith("training.")) and not m.startswith("training.artifact")]
    assert not bad, f"service may import only training.artifact: {bad}"


def test_artifact_contract_is_self_contained():
    bad = [(f, m) for f, m in imported_modules("training/artifact")
           if m.startswith("training.") and not m.startswith("training.artifact")]
    assert not bad, f"training.artifact must not depend on the rest of training: {bad}"


def test_ray_starts_only_through_local_ray():
    calls = []
    for package in ("training", "service", "tuneserve", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"):
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls and all(call.startswith("training/artifact/local_ray.py:") for call in calls), calls


def test_one_version_source():
    from training.artifact import Manifest
    from training.artifact.version import tuneserve_version

    import tuneserve

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    manifest = Manifest(name="m", kind="adapter", base={"id": "b", "sha256": "0" * 64})
    assert tuneserve_version() == tuneserve.__version__ == manifest.tuneserve_version == declared


@pytest.mark.parametrize("heavy", ["torch", "ray", "transformers", "peft"])
def test_cli_import_is_lazy(heavy):
    code = f"import sys, tuneserve.cli; sys.exit(1 if {heavy!r} in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"importing the CLI loaded {heavy}: {result.stderr[-2000:]}"


def test_help_lists_core_commands():
    result = subprocess.run([sys.executable, "-m", "tuneserve", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    for command in ("base", "train", "quantize", "serve", "demo"):
        assert command in result.stdout
