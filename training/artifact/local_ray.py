"""A local, single-node Ray that only this machine can reach and only with its token: what
`tuneserve serve`, the Ray Train backend and the Ray Tune search backend start when they are given
no cluster address.

    from training.artifact.local_ray import start_or_join_ray
    started_here = start_or_join_ray(num_cpus=2)   # False: this process already runs Ray, left as it is

Ray's defaults suit a trusted cluster network. A head started by `ray.init()` on Linux listens on
every interface; without authentication its GCS takes jobs (code) from whoever connects, and three
Prometheus ports (the agent's metrics export, the dashboard's and the autoscaler's) answer anyone.
Before Ray is first imported, `prepare_local_ray` sets, each only where the user has not:
- token authentication (`RAY_AUTH_MODE=token`). The token is RAY_AUTH_TOKEN or the file at
  RAY_AUTH_TOKEN_PATH, else one generated once into `<tuneserve cache>/ray/auth_token` (mode 0600);
- loopback only (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, Ray's own switch for a one-machine
  cluster): every Ray port binds 127.0.0.1. The Serve app's public ports still follow `host`
  in the serve config. Set it to 1 to let other nodes join this head;
- usage stats off and a short temp dir (`RAY_TMPDIR`; Ray's socket paths must stay under 107 bytes).

Ray reads these when it is first imported, so a process that imported Ray earlier gets a clear
error instead of an open cluster. A cluster address (`distributed.address`, `ray.address`) is used
as given: that cluster's own settings apply.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError
from training.artifact.paths import cache_dir

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray resolves this node's IP to 127.0.0.1


def ray_auth_token_path() -> Path:
    """The file holding this machine's Ray token (mode 0600), made on first use."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or cache_dir() / "ray" / "auth_token")
    if not os.environ.get("RAY_AUTH_TOKEN") and not path.is_file():
        # written whole beside it, then linked in: a process starting at the same moment (a second test
        # worker, a second `tuneserve serve`) finds either no token or the complete one, never half of it
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth_token-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            os.link(tmp, path)
        except FileExistsError:
            pass  # the other process won; its token is the one
        finally:
            os.unlink(tmp)
    return path


def prepare_local_ray(tmp_dir: str = "/tmp/ts-ray") -> str:
    """Set the environment of a local Ray (module docstring); returns its temp dir."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault(LOOPBACK_ENV, "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token":
        os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(ray_auth_token_path()))
    tmp = os.environ.setdefault("RAY_TMPDIR", tmp_dir)
    Path(tmp).mkdir(parents=True, exist_ok=True)
    return tmp


def check_ray_import() -> None:
    """Raise if the imported Ray did not see what `prepare_local_ray` set (it was imported before)."""
    from ray._private import ray_constants
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    missing = []
    if os.environ.get("RAY_AUTH_MODE") == "token" and not is_token_auth_enabled():
        missing.append("token authentication")
    if os.environ.get(LOOPBACK_ENV) == "0" and ray_constants.ENABLE_RAY_CLUSTER:
        missing.append("loopback-only ports")
    if missing:
        raise ConfigError(f"Ray was imported before tuneserve could set up {' and '.join(missing)}, so a "
                          "local Ray started now would be reachable without them",
                          f"set RAY_AUTH_MODE=token and {LOOPBACK_ENV}=0 before the first `import ray`, "
                          "or start Ray yourself and give tuneserve its address")


def start_or_join_ray(address: str | None = None, num_cpus: int | None = None, **init_kwargs: Any) -> bool:
    """Join the cluster at `address` as given, else start a local Ray (module docstring). True when
    this call connected, so the caller shuts Ray down again; False when the process already runs Ray
    (inside a Ray Tune trial or a Serve replica), which is left as it is."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return False
    tmp = None if address else prepare_local_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    init_kwargs.setdefault("log_to_driver", False)
    if address:
        ray.init(address=address, **init_kwargs)
    else:
        check_ray_import()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=tmp, **init_kwargs)
    return True
