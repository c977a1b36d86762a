"""Hardening of the security layer (issue 16): admin operations honour the key's adapter globs,
blocking never refuses a valid key and trusts `X-Forwarded-For` only from configured proxies,
the rate-limit store survives its actor dying, and the per-key address map is bounded."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service.auth import Principal
from training.artifact.errors import PermissionDenied


def run(coro):
    return asyncio.run(coro)


ADAPTER_INFO = {"path": "", "base": "b", "method": "lora", "task": "causal-lm", "pinned": False, "loaded_at": 0,
                "version": "1"}


def admin_core():
    from service.core import ServingCore
    from service.settings import load_settings

    done = []
    registry = SimpleNamespace(
        adapters={},
        load_adapter=lambda name, path, pin: done.append(("load", name)) or {"name": name, **ADAPTER_INFO},
        unload_adapter=lambda name, force: done.append(("unload", name)),
        set_pinned=lambda name, pinned: done.append(("pin", name)) or {"name": name, **ADAPTER_INFO},
        list_adapters=lambda: [{"name": n, **ADAPTER_INFO} for n in ("team-a-prod", "team-b-prod")])
    core = ServingCore(load_settings({}), engine=SimpleNamespace(registry=registry))
    core.drift = SimpleNamespace(forget=lambda name: None)
    return core, done


def test_admin_operations_apply_the_keys_adapter_globs():
    from service.schemas import LoadAdapterRequest

    core, done = admin_core()
    team_a = Principal("k1", "team-a", scopes=("admin",), adapters=("team-a-*",))
    for refused in (core.unload_adapter("team-b-prod", False, team_a),
                    core.pin_adapter("team-b-prod", True, team_a),
                    core.load_adapter(LoadAdapterRequest(name="team-b-new"), team_a)):
        with pytest.raises(PermissionDenied, match="team-b"):
            run(refused)
    assert done == []
    run(core.unload_adapter("team-a-prod", False, team_a))
    run(core.pin_adapter("team-a-prod", True, team_a))
    run(core.load_adapter(LoadAdapterRequest(name="team-a-new"), team_a))
    assert done == [("unload", "team-a-prod"), ("pin", "team-a-prod"), ("load", "team-a-new")]
    assert [a.name for a in run(core.list_adapters(team_a)).data] == ["team-a-prod"]
    assert len(run(core.list_adapters(None)).data) == 2  # in-process callers: no principal, no filter
