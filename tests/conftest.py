"""Shared fixtures: offline environment, and the tiny base model built once per session.

The tiny base is built with a short pretraining run into a test cache under
`~/.cache/tuneserve-test` (override with TUNESERVE_TEST_CACHE) and reused across runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TEST_CACHE = Path(os.environ.get("TUNESERVE_TEST_CACHE", Path.home() / ".cache" / "tuneserve-test"))
os.environ["TUNESERVE_CACHE"] = str(TEST_CACHE)
# Ray reads RAY_AUTH_MODE once, when it is first imported; tests that import service.app (and so ray)
# before any server starts would fix it at 'disabled' while the servers' GCS runs with token auth.
os.environ.setdefault("RAY_AUTH_MODE", "token")
if os.environ["RAY_AUTH_MODE"] == "token":
    from service.launcher import ray_auth_token_path

    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(ray_auth_token_path()))

# The service fixtures live here, once for the whole suite: a test module that imported them itself
# would get its own session-lived copy (another artifacts dir, another Ray app left running to the end).
from tests.service_fixtures import served_app, serve_keys, service_artifacts  # noqa: E402,F401

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_base_dir() -> Path:
    """The embedded tiny Llama base (tokenizer + weights), built briefly and cached."""
    from training.base.build import BaseBuildConfig, build_base

    return build_base(BaseBuildConfig(steps=60), force=False, progress=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """The tests on the session's served app (`served_app`: a Ray cluster in a child process) run last,
    together, so its idle Ray does not tax the rest of the suite; otherwise the order is unchanged."""
    items.sort(key=lambda item: "served_app" in getattr(item, "fixturenames", ()))
