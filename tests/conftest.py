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
# Ray reads its auth mode and network switch once, when it is first imported: a test that imports ray
# (or service.app) before any server starts would otherwise fix them at Ray's open defaults.
from training.artifact.local_ray import prepare_local_ray  # noqa: E402

prepare_local_ray()

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


RAY_GROUP = "ray"


def on_served_app(item) -> bool:
    return "served_app" in getattr(item, "fixturenames", ())


def starts_ray(item) -> bool:
    """A test that starts a Ray cluster: marked `ray`, or on the session's served app (`served_app`)."""
    return item.get_closest_marker("ray") is not None or on_served_app(item)


def pytest_configure(config):
    from importlib.metadata import version

    from packaging.version import Version

    if config.getoption("dist", "no") == "loadgroup" and Version(version("pytest")) >= Version("9.2") \
            and Version(version("pytest-xdist")) < Version("3.9"):
        raise pytest.UsageError("pytest-xdist 3.8 cannot group tests under pytest 9.2 (--dist loadgroup: "
                                "pytest-dev/pytest-xdist#1386): install the pytest version pyproject.toml pins")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Order and group the suite for `pytest -n 2 --dist loadgroup` (what `make test` runs).

    Every test that starts a Ray cluster runs on one worker, one after another, first: two clusters at
    once on a 2-core box only slow each other's start-up towards its timeouts, and the longest unit
    should start first. The tests on the session's served app come last in the collection, together,
    so its idle Ray (up until the session ends) taxes as little of the rest as it can; the group still
    starts first, as a unit goes where its first test is. Every other module is one unit (its
    module-scoped fixtures are built once), handed to whichever worker is free.
    """
    items.sort(key=lambda item: 2 if on_served_app(item) else 0 if starts_ray(item) else 1)
    if config.pluginmanager.hasplugin("xdist") and config.getoption("loadgroup", False):
        for item in items:
            item.add_marker(pytest.mark.xdist_group(RAY_GROUP if starts_ray(item) else item.nodeid.split("::")[0]))
