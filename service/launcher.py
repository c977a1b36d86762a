"""Start and stop the serving application on a local Ray cluster (what `tuneserve serve` and
the demo use). Equivalent to `serve run service/configs/serve.yaml`, plus safe local defaults.

    server = start("service/configs/serve.yaml", ["artifacts_dir=artifacts", "port=8001"])
    print(server.url); ...; stop()
    python -m service.launcher [serve.yaml] [key=value ...]     # start and block until Ctrl-C

Local Ray is `training.artifact.local_ray`'s: token authentication, every Ray port on 127.0.0.1,
usage stats off, a short temp dir (`RAY_TMPDIR`, default /tmp/ts-ray); here also no dashboard and
Serve's control loop every 0.5 s instead of 0.1 s. The public ports follow `host` in the config.

A start owns its port or fails: a port in use fails before Ray starts ("port N is in use", with a
free one to pass), and `start` returns only once `/ready` answered with the instance id this start
gave its server (service/ports.py). A stop is bounded: Serve drains and Ray stops within
`stop_timeout_s`, else the Ray processes this process started are killed.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from training.artifact.config import parse_override, read_yaml, set_dotted
from training.artifact.errors import ConfigError, Unavailable
from training.artifact.local_ray import prepare_local_ray, start_or_join_ray
from training.artifact.remote import is_remote

from service.ports import INSTANCE_ENV, ensure_free, free_port, new_instance, wait_owned
from service.security.tls import base_url, local_url, tls_http_options
from service.settings import ServiceSettings, load_settings

DEFAULT_CONFIG = "serve.yaml"
APP_READY_TIMEOUT_S = 300
READY_LINE = "serving at "  # what `python -m service.launcher` prints once it serves (and owns) its port
log = logging.getLogger("tuneserve.launcher")
PROXY_READY_TIMEOUT_S = 30  # Serve's own 5 s kills a proxy that is only slow to start (prepare_ray_env)
PROXY_START_WAIT_S = 180  # serve_start's own 60 s wait for the proxies failed at load average 5 on 2 cores
# What `start` exports for the server's Ray processes; `stop` puts back the values from before, so
# neither a later start nor a server spawned from this process inherits this server's port or id.
LAUNCHER_ENV = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
                "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
                "RAY_SERVE_PORT_QUARANTINE_S", INSTANCE_ENV, "PROMETHEUS_MULTIPROC_DIR")
_env_before: dict[str, str | None] = {}


@dataclass
class ServerHandle:
    url: str
    app_name: str
    settings: ServiceSettings
    config: dict[str, Any]
    direct_ingress: bool = False

    @property
    def route(self) -> str:
        """Who answers the public port, for the start-up message."""
        return ("direct ingress: the Ingress replica serves this port" if self.direct_ingress
                else "through Ray's HTTP proxy")


def default_config_path() -> Path:
    return Path(str(resources.files("service.configs").joinpath(DEFAULT_CONFIG)))


def build_config(config_path: str | Path | None, overrides: Iterable[str] = ()) -> tuple[dict[str, Any], ServiceSettings]:
    """Read a Serve config, apply `key=value` overrides to the (single) application's args, validate."""
    config = copy.deepcopy(read_yaml(config_path or default_config_path()))
    apps = config.get("applications") or []
    if len(apps) != 1:
        raise ConfigError(f"the serve config must hold exactly one application, found {len(apps)}",
                          "start from service/configs/serve.yaml")
    args = apps[0].setdefault("args", {})
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(args, key, value)
    settings = absolute_paths(load_settings(args))
    apps[0]["args"] = settings.model_dump(mode="json")
    http = config.setdefault("http_options", {})
    if any(o.split("=", 1)[0] in ("port", "host") for o in overrides) or "port" not in http:
        http.update(host=settings.host, port=settings.port)
    http.update(tls_http_options(settings.security))  # HTTPS on Ray's proxy when cert/key are set
    return config, settings


def absolute_paths(settings: ServiceSettings) -> ServiceSettings:
    """Replicas may run in another working directory: make every local path absolute."""
    updates: dict[str, Any] = {"models": [p.resolve() for p in settings.models],
                               "adapters": {k: v if is_remote(v) else str(Path(v).resolve())
                                            for k, v in settings.adapters.items()}}
    for name in ("artifacts_dir", "keys_file"):
        value = getattr(settings, name)
        updates[name] = value.expanduser().resolve() if value is not None else None
    fleet = settings.fleet
    updates["fleet"] = fleet.model_copy(update={k: getattr(fleet, k).expanduser().resolve()
                                                for k in ("state_file", "s3_cache_dir") if getattr(fleet, k)})
    if Path(settings.base_model).exists():
        updates["base_model"] = str(Path(settings.base_model).resolve())
    return settings.model_copy(update=updates)


def prepare_ray_env() -> str:
    """Environment for local Ray (training.artifact.local_ray, plus Serve's); must run before Ray is
    first imported (it reads RAY_AUTH_MODE then)."""
    # Serve's controller loop runs every 0.1 s by default: 1.1 CPU-s per 20 s of an idle 2-core
    # box here, 0.44 at 0.5 s, with the same start-up time.
    os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")
    # Serve kills a proxy not ready within 5 s and serve.start then fails with ActorDiedError: seen on
    # this 2-core box at load average 4 (tests beside training). A slow start is not a dead proxy.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_READY_TIMEOUT_S))
    return prepare_local_ray()


def init_ray(num_cpus: int | None = None) -> None:
    tmp = prepare_ray_env()
    import ray

    if ray.is_initialized():
        return
    from service.metrics import MULTIPROC_ENV, prepare_metrics_dir

    # One metrics dir per node, inherited by every Ray worker (see service/metrics.py).
    prepare_metrics_dir(os.environ.get(MULTIPROC_ENV) or Path(tmp) / f"metrics-{os.getpid()}")
    metrics_port = os.environ.get("TUNESERVE_RAY_METRICS_PORT")
    for attempt in range(3):  # Ray waits a fixed 30 s for its raylet; a loaded machine can miss that
        try:
            start_or_join_ray(None, num_cpus or os.cpu_count(), namespace="tuneserve", configure_logging=False,
                              **({"_metrics_export_port": int(metrics_port)} if metrics_port else {}))
            return
        except Exception as exc:  # noqa: BLE001 - only the startup timeout is retried
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()


def _check_cpus(config: dict[str, Any], available: float) -> None:
    wanted = sum(float((d.get("ray_actor_options") or {}).get("num_cpus", 1))
                 * int((d.get("autoscaling_config") or {}).get("min_replicas", d.get("num_replicas", 1)) or 1)
                 for d in config["applications"][0].get("deployments", []))
    if wanted > available:
        raise ConfigError(f"the serve config asks for {wanted:g} CPUs but this machine has {available:g}",
                          "lower ray_actor_options.num_cpus or min_replicas in the config")


def ingress_replicas(config: dict[str, Any]) -> int:
    """The most Ingress replicas the serve config allows."""
    for deployment in config["applications"][0].get("deployments") or []:
        if deployment.get("name") == "Ingress":
            scaling = deployment.get("autoscaling_config") or {}
            counts = [deployment.get("num_replicas"), scaling.get("min_replicas"), scaling.get("max_replicas")]
            return max([c for c in counts if isinstance(c, int)] or [1])
    return 1


def use_direct_ingress(config: dict[str, Any], settings: ServiceSettings) -> bool:
    """Ray Serve's throughput-optimized mode: the Ingress replica's own HTTP server listens on
    `settings.port` (Ray's proxy moves to a free internal port). Through the proxy every request
    crossed one more process: ~7 ms of proxy CPU per completion on this 2-core box. Serve hands out
    the ports [MIN, MAX): `port` only. A replacement of a killed Ingress replica binds it again
    (service/direct_ingress.py). Must run before Ray starts; RAY_SERVE_* variables already set by the user win."""
    if not settings.direct_ingress or settings.port == 0 or ingress_replicas(config) > 1:
        return False  # several Ingress replicas on a node share the public port only through the proxy
    for name, value in {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(settings.port),
                        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(settings.port + 1),
                        # one local node, no external load balancer to drain from or to protect
                        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
                        "RAY_SERVE_PORT_QUARANTINE_S": "0"}.items():
        os.environ.setdefault(name, value)
    config["http_options"]["port"] = free_port(settings.host)
    return True


def start(config_path: str | Path | None = None, overrides: Iterable[str] = (), num_cpus: int | None = None,
          timeout_s: float = APP_READY_TIMEOUT_S) -> ServerHandle:
    """Start Ray and the application; returns once `/ready` answers from this very server.
    A port already in use fails at once (before Ray starts) with the port and a free one to use."""
    config, settings = build_config(config_path, list(overrides))
    _check_cpus(config, float(num_cpus or os.cpu_count() or 1))
    remember_env()
    ray_was_up = _ray_started()
    try:
        return _start(config, settings, num_cpus, timeout_s)
    except BaseException:  # a failed start leaves neither its Ray nor its environment behind
        if ray_was_up:
            _restore_env()
        else:
            stop()
        raise


def _start(config: dict, settings: ServiceSettings, num_cpus: int | None, timeout_s: float) -> ServerHandle:
    http = config["http_options"]
    ensure_free(http.get("host", settings.host), http.get("port"))
    if settings.grpc_port is not None:
        ensure_free(settings.host, settings.grpc_port, "grpc_port")
    direct = use_direct_ingress(config, settings)
    # Ray's processes inherit the id and the Ingress names it in /ready; a Ray started elsewhere can't know it
    instance = None if _ray_started() or os.environ.get("RAY_ADDRESS") else new_instance()
    init_ray(num_cpus)
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    serve_api.HTTP_PROXY_TIMEOUT = max(getattr(serve_api, "HTTP_PROXY_TIMEOUT", 0), PROXY_START_WAIT_S)
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    name = schema.applications[0].name
    started = time.monotonic()
    wait_running(name, timeout_s)
    if settings.port and instance:
        # verify=False: this probe reaches the port just bound, from its own machine, and sends nothing secret;
        # the instance id it checks proves which server answered. A certificate issued for the public name
        # (or by a CA this machine does not hold) cannot be verified on a loopback address.
        wait_owned(local_url(settings), instance, verify=False,
                   timeout_s=max(30.0, timeout_s - (time.monotonic() - started)))
    return ServerHandle(base_url(settings), name, settings, config, direct)


def remember_env() -> None:
    if not _env_before:
        _env_before.update({name: os.environ.get(name) for name in LAUNCHER_ENV})


def _put_back(env: Any) -> None:
    for name, value in _env_before.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value


def user_env() -> dict[str, str]:
    """This process's environment without what `start` exported for its server (for other servers)."""
    env = dict(os.environ)
    _put_back(env)
    return env


def _restore_env() -> None:
    _put_back(os.environ)
    _env_before.clear()


def _ray_started() -> bool:
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def wait_running(name: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        status = str(getattr(app, "status", "")) if app else ""
        if status.endswith("RUNNING"):
            return
        if status.endswith("DEPLOY_FAILED") or status.endswith("UNHEALTHY"):
            raise Unavailable(f"application {name} failed to deploy: {app.message}",
                              "fix the error above (artifacts_dir, base model, config) and start again")
        time.sleep(0.5)
    raise Unavailable(f"application {name} was not running after {timeout_s:.0f} s",
                      "check the Ray logs under RAY_TMPDIR; the base model may still be loading")


STOP_TIMEOUT_S = 45.0


def serve_forever(stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Block until SIGTERM or Ctrl-C, then `stop` within `stop_timeout_s` (a second signal: at once).
    When Serve or Ray hung and their processes had to be killed, exits the process with code 1."""
    import signal
    import sys
    import threading

    stopping, hurry = threading.Event(), threading.Event()

    def on_signal(*_: Any) -> None:
        (hurry if stopping.is_set() else stopping).set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping.wait(1.0):
            pass
        clean = stop(stop_timeout_s, hurry)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not clean:
        print(f"Serve/Ray did not stop within {stop_timeout_s:g} s: killed this server's Ray processes",
              file=sys.stderr, flush=True)
        os._exit(1)  # a Ray shutdown hung in another thread; exit hooks would wait for it again


def stop(timeout_s: float = STOP_TIMEOUT_S, hurry: Any = None) -> bool:
    """Shut Serve down (replicas finish their requests), then Ray, within `timeout_s`. Past it, or once
    the `hurry` event is set, kill the Ray processes this process started and return False."""
    import threading

    import ray

    _restore_env()  # Ray's processes keep theirs
    if not ray.is_initialized():
        return True
    own = ray_processes()
    done = threading.Event()
    threading.Thread(target=_shutdown, args=(done,), name="tuneserve-stop", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not done.wait(0.2):
        if time.monotonic() > deadline or (hurry is not None and hurry.is_set()):
            log.warning("Serve/Ray shutdown did not finish; killing %d Ray processes", len(own))
            kill_tree(own)
            return False
    return True


def _shutdown(done: Any) -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    except Exception:  # noqa: BLE001 - Ray still has to go
        log.warning("Serve shutdown failed", exc_info=True)
    finally:
        try:
            ray.shutdown()
        finally:
            done.set()


def ray_processes() -> list:
    """The processes of the local Ray node this process started (none when it joined a cluster)."""
    import psutil
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    pids = [info.process.pid for infos in (getattr(node, "all_processes", None) or {}).values() for info in infos]
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return found


def kill_tree(processes: list) -> None:
    """SIGKILL `processes` (psutil.Process) and everything they started (Ray's workers and replicas)."""
    import psutil

    victims = list(processes)
    for proc in processes:
        try:
            victims += proc.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=10)


if __name__ == "__main__":  # python -m service.launcher [serve.yaml] [key=value ...]
    import sys

    _config = next((a for a in sys.argv[1:] if "=" not in a), None)
    _server = start(_config, [a for a in sys.argv[1:] if "=" in a])
    print(f"{READY_LINE}{_server.url} ({_server.route})", flush=True)
    serve_forever(_server.settings.stop_timeout_s)
