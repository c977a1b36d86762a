"""The local Ray that training's Ray backends (and `tuneserve serve`, tests/test_serve_lifecycle.py) start:
every port on 127.0.0.1 and token authentication on, from an environment that set neither; a Ray
imported before that could be set up is refused with a clear error; a cluster address is joined as given.

    pytest tests/test_local_ray.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from train_support import is_loopback, without_ray_setup

from training.artifact.local_ray import LOOPBACK_ENV

START_AND_REPORT = """
import json, psutil
from training.artifact.local_ray import start_or_join_ray

assert start_or_join_ray(num_cpus=1) is True  # the first `import ray` of this process is in there
import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled

assert start_or_join_ray(num_cpus=1) is False  # already running: left as it is
assert ray.get(ray.remote(lambda: 1).remote()) == 1
listening = {}
for proc in psutil.Process().children(recursive=True):
    try:
        listening.update({f"{s.laddr.ip} {s.laddr.port}": proc.name() for s in proc.net_connections("tcp")
                          if s.status == psutil.CONN_LISTEN})
    except psutil.Error:
        pass
print(json.dumps({"token_auth": is_token_auth_enabled(), "listening": listening}))
ray.shutdown()
"""


@pytest.fixture
def clean_env(tmp_path):
    env = without_ray_setup(RAY_TMPDIR=f"/tmp/ts-lr-{os.getpid()}", TUNESERVE_CACHE=str(tmp_path))
    yield env
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


@pytest.mark.ray
def test_a_local_ray_listens_on_loopback_only_and_wants_its_token(clean_env, tmp_path):
    run = subprocess.run([sys.executable, "-c", START_AND_REPORT], env=clean_env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["token_auth"] is True
    assert (tmp_path / "ray" / "auth_token").is_file(), "the token is generated into the tuneserve cache"
    listening = report["listening"]
    assert len(listening) >= 6 and {"gcs_server", "raylet"} <= set(listening.values()), listening
    beyond = {where: name for where, name in listening.items()
              if not is_loopback(where.split()[0])}
    assert not beyond, f"Ray ports reachable from other machines: {beyond}"


def test_a_ray_imported_before_the_setup_is_refused_not_started_open(clean_env):
    script = ("import ray\nfrom training.artifact.local_ray import start_or_join_ray\n"
              "start_or_join_ray(num_cpus=1)\n")
    run = subprocess.run([sys.executable, "-c", script], env=clean_env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0
    assert "Ray was imported before tuneserve could set up token authentication and loopback-only ports" \
        in run.stderr, run.stderr[-2000:]
    assert f"set RAY_AUTH_MODE=token and {LOOPBACK_ENV}=0 before the first `import ray`" in run.stderr
    assert "Started a local Ray instance" not in run.stderr


def test_a_cluster_address_is_joined_as_given(monkeypatch):
    import ray

    from training.artifact.local_ray import start_or_join_ray

    calls = []
    monkeypatch.delenv(LOOPBACK_ENV, raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    assert start_or_join_ray("ray://head:10001", num_cpus=4) is True
    assert calls == [{"address": "ray://head:10001", "log_to_driver": False}]
    assert LOOPBACK_ENV not in os.environ, "joining a cluster leaves this node's addressing alone"
