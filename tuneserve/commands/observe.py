"""`tuneserve observe`: a local Prometheus + Alertmanager for a running tuneserve, without Docker.

Writes a Prometheus config that scrapes the service (job `tuneserve`, as the alert rules expect)
and loads the repository's rules (`deploy/prometheus/rules/*.yml`), starts the Debian/Ubuntu
binaries `prometheus` and `prometheus-alertmanager` (upstream name `alertmanager` also works) with
`deploy/alertmanager/alertmanager.yml`, prints the URLs and runs until Ctrl-C, which stops both.

    apt-get install -y prometheus prometheus-alertmanager
    tuneserve observe                                  # scrape localhost:8000, ports 9090/9093
    tuneserve observe --target 10.0.0.5:8000 --ray-target 10.0.0.5:8080 --prometheus-port 0
    tuneserve keys create prometheus --scope metrics --key-out ~/.config/tuneserve/metrics.key
    tuneserve observe --metrics-key-file ~/.config/tuneserve/metrics.key   # /metrics needs a `metrics` key
    tuneserve observe observe.yaml scrape_interval=5s  # ObserveConfig fields as YAML / key=value

In code: `with ObserveStack(config) as stack: stack.prometheus_url ...` (used by the tests).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import typer
import yaml
from pydantic import Field

from training.artifact.config import StrictModel
from training.artifact.errors import ConfigError, Unavailable
from tuneserve.commands.common import console, load_cli_config

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
INSTALL_HINT = "install them with `apt-get install -y prometheus prometheus-alertmanager`, or give the paths"
ENV_PREFIX = "TUNESERVE_OBSERVE__"


class ObserveConfig(StrictModel):
    targets: list[str] = Field(default_factory=lambda: ["localhost:8000"],
                               description="host:port of the service's /metrics (job tuneserve)")
    ray_targets: list[str] = Field(default_factory=list, description="host:port of Ray's metrics export port")
    metrics_key_file: Path | None = Field(None, description="file holding an API key with the `metrics` scope; "
                                                            "Prometheus sends it as a Bearer token (not needed "
                                                            "when the service sets security.public_metrics)")
    listen_host: str = "127.0.0.1"
    prometheus_port: int = Field(9090, ge=0, le=65535, description="0 picks a free port")
    alertmanager_port: int = Field(9093, ge=0, le=65535, description="0 picks a free port")
    scrape_interval: str = Field("15s", pattern=r"^\d+(ms|s|m)$")
    evaluation_interval: str = Field("15s", pattern=r"^\d+(ms|s|m)$")
    rules_dir: Path = DEPLOY_DIR / "prometheus" / "rules"
    alertmanager_config: Path = DEPLOY_DIR / "alertmanager" / "alertmanager.yml"
    work_dir: Path | None = Field(None, description="config, data and logs; default: a new temp dir")
    prometheus_bin: str = "prometheus"
    alertmanager_bin: list[str] = Field(default_factory=lambda: ["prometheus-alertmanager", "alertmanager"])
    startup_timeout_s: float = Field(60.0, gt=0)


def find_binary(candidates: list[str]) -> str:
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise ConfigError(f"none of {', '.join(candidates)} is on PATH", INSTALL_HINT)


def pick_port(host: str, port: int) -> int:
    """`port`, checked to be free on `host`; 0 picks a free one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"port {port} on {host} is not free ({exc.strerror})",
                              "give another port, or 0 to pick a free one (e.g. --prometheus-port 0)") from exc
        return sock.getsockname()[1]


def scrape_config(config: ObserveConfig, alertmanager_address: str, prometheus_address: str) -> dict:
    """The Prometheus configuration: job tuneserve (service + Ray targets), rules, alerting."""
    static = [{"targets": config.targets, "labels": {"component": "service"}}]
    if config.ray_targets:
        static.append({"targets": config.ray_targets, "labels": {"component": "ray"}})
    job = {"job_name": "tuneserve", "metrics_path": "/metrics", "static_configs": static}
    if config.metrics_key_file is not None:  # Ray's export port ignores the header; /metrics needs it
        job["authorization"] = {"type": "Bearer", "credentials_file": str(config.metrics_key_file.resolve())}
    return {
        "global": {"scrape_interval": config.scrape_interval, "evaluation_interval": config.evaluation_interval,
                   "external_labels": {"monitor": "tuneserve-observe"}},
        "rule_files": [str(config.rules_dir.resolve() / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_address]}]}]},
        "scrape_configs": [
            job,
            {"job_name": "prometheus", "static_configs": [{"targets": [prometheus_address]}]},
        ],
    }


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ManagedProcess:
    """A child process with its log file, a readiness URL, and a polite stop."""

    def __init__(self, name: str, argv: list[str], log_path: Path, ready_url: str) -> None:
        self.name, self.argv, self.log_path, self.ready_url = name, argv, log_path, ready_url
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with signals_deferred(), open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def failure(self, what: str) -> Unavailable:
        return Unavailable(f"{self.name} {what}; last log lines:\n{_log_tail(self.log_path)}",
                           f"see the full log at {self.log_path}")

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.exited() is not None:
                raise self.failure(f"exited with status {self.exited()} while starting")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise self.failure(f"was not ready at {self.ready_url} in time")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


class ObserveStack:
    """Prometheus + Alertmanager configured for tuneserve; a context manager that stops both."""

    def __init__(self, config: ObserveConfig) -> None:
        if not sorted(config.rules_dir.glob("*.yml")):
            raise ConfigError(f"no rule files (*.yml) in {config.rules_dir}",
                              "run from a tuneserve checkout, or set rules_dir=<dir with the alert rules>")
        if not config.alertmanager_config.is_file():
            raise ConfigError(f"alertmanager config {config.alertmanager_config} not found",
                              "set alertmanager_config=<path to alertmanager.yml>")
        self.config = config
        self.work_dir = Path(config.work_dir or tempfile.mkdtemp(prefix="tuneserve-observe-"))
        self.processes: list[ManagedProcess] = []
        self.prometheus_url = self.alertmanager_url = ""

    def _address(self, port: int) -> str:
        return f"{self.config.listen_host}:{pick_port(self.config.listen_host, port)}"

    def start(self) -> "ObserveStack":
        """Start both (a no-op while they run: `with stack.start():` must not start a second pair)."""
        if self.processes and all(process.exited() is None for process in self.processes):
            return self
        config = self.config
        prometheus_bin = find_binary([config.prometheus_bin])
        alertmanager_bin = find_binary(config.alertmanager_bin)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        am_address, prom_address = self._address(config.alertmanager_port), self._address(config.prometheus_port)
        self.alertmanager_url, self.prometheus_url = f"http://{am_address}", f"http://{prom_address}"
        prom_config = self.work_dir / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump(scrape_config(config, am_address, prom_address), sort_keys=False))
        self.processes = [
            ManagedProcess("alertmanager", [
                alertmanager_bin, f"--config.file={config.alertmanager_config.resolve()}",
                f"--storage.path={self.work_dir / 'alertmanager-data'}", f"--web.listen-address={am_address}",
                "--cluster.listen-address=",  # no gossip port: a single local instance
            ], self.work_dir / "alertmanager.log", f"{self.alertmanager_url}/-/ready"),
            ManagedProcess("prometheus", [
                prometheus_bin, f"--config.file={prom_config}", f"--storage.tsdb.path={self.work_dir / 'prometheus-data'}",
                f"--web.listen-address={prom_address}", "--web.enable-lifecycle",
            ], self.work_dir / "prometheus.log", f"{self.prometheus_url}/-/ready"),
        ]
        deadline = time.monotonic() + config.startup_timeout_s
        try:
            for process in self.processes:
                process.start()
            for process in self.processes:
                process.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def check_alive(self) -> None:
        for process in self.processes:
            if process.exited() is not None:
                raise process.failure(f"exited with status {process.exited()}")

    def stop(self) -> None:
        with signals_deferred(drop=True):
            for process in reversed(self.processes):
                process.stop()

    def __enter__(self) -> "ObserveStack":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _print_urls(stack: ObserveStack) -> None:
    from rich.table import Table

    table = Table(title="tuneserve observe", show_header=False)
    rows = [
        ("Prometheus", stack.prometheus_url),
        ("  alerts", f"{stack.prometheus_url}/alerts"),
        ("  targets", f"{stack.prometheus_url}/targets"),
        ("Alertmanager", stack.alertmanager_url),
        ("scraping (job tuneserve)", ", ".join(stack.config.targets + stack.config.ray_targets)),
        ("config, data and logs", str(stack.work_dir)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print("Press Ctrl-C to stop Prometheus and Alertmanager.")


_SIGNALS = {"deferring": 0, "pending": False}


def _stop_on_signal(signum, frame) -> None:
    if _SIGNALS["deferring"]:
        _SIGNALS["pending"] = True
        return
    raise KeyboardInterrupt


@contextmanager
def signals_deferred(drop: bool = False):
    """Hold Ctrl-C/SIGTERM while a child is spawned (an interrupt inside Popen leaves a child nobody
    tracks) or while both are stopped (`drop`: it is already what the signal asks for); raise it after."""
    _SIGNALS["deferring"] += 1
    try:
        yield
    finally:
        _SIGNALS["deferring"] -= 1
        if not _SIGNALS["deferring"] and _SIGNALS["pending"]:
            _SIGNALS["pending"] = False
            if not drop:
                raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, so the stack's context manager stops both children.
    Installed before the children start: a SIGTERM that lands while they start, or just after the URLs
    are printed, must not kill this process with Prometheus and Alertmanager left running."""
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)


def serve_until_interrupted(stack: ObserveStack) -> None:
    """Block until Ctrl-C or SIGTERM (`stop_on_signals`), or a child dies (which raises Unavailable)."""
    try:
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping Prometheus and Alertmanager")


def register(app: typer.Typer) -> None:
    @app.command("observe")
    def observe(
        args: list[str] = typer.Argument(None, help="\\[CONFIG.yaml] \\[key=value ...]: fields of ObserveConfig"),
        target: list[str] = typer.Option(None, "--target", help="service host:port to scrape (repeatable; default localhost:8000)"),
        ray_target: list[str] = typer.Option(None, "--ray-target", help="Ray metrics export host:port (repeatable)"),
        prometheus_port: int = typer.Option(None, "--prometheus-port", help="0 picks a free port (default 9090)"),
        alertmanager_port: int = typer.Option(None, "--alertmanager-port", help="0 picks a free port (default 9093)"),
        metrics_key_file: Path = typer.Option(None, "--metrics-key-file",
                                              help="file with an API key of scope `metrics` (Prometheus' Bearer token)"),
    ) -> None:
        """Run a local Prometheus (with the tuneserve alert rules) and Alertmanager against a service."""
        config = load_cli_config(ObserveConfig, args, ENV_PREFIX)
        options = {"targets": target, "ray_targets": ray_target, "prometheus_port": prometheus_port,
                   "alertmanager_port": alertmanager_port, "metrics_key_file": metrics_key_file}
        given = {key: value for key, value in options.items() if value not in (None, [])}
        config = ObserveConfig.model_validate({**config.model_dump(), **given})
        stop_on_signals()
        try:
            with ObserveStack(config) as stack:
                _print_urls(stack)
                serve_until_interrupted(stack)
        except KeyboardInterrupt:  # before the URLs were up: start() already stopped what it had started
            console.print("stopping Prometheus and Alertmanager")
