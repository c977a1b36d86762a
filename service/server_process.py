"""A serving application in a child process: what tests, benchmarks and the demo use so that they
never own a Ray cluster in their own process.

    proc, url = spawn(["artifacts_dir=artifacts", f"port={free_port()}"], Path("server.log"))
    ...  # requests against url
    terminate(proc)                       # SIGTERM (bounded Serve/Ray shutdown), SIGKILL if it hangs

The child is `python -m service.launcher` in its own process group; `spawn` returns once it printed
its ready line (its own `/ready` answered, not another server's on the same port).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

from training.artifact.errors import Unavailable

from service.launcher import READY_LINE, build_config, user_env
from service.security.tls import local_url


def spawn(overrides: Iterable[str], log_path: Path, config_path: str | Path | None = None,
          env: dict[str, str] | None = None, timeout_s: float = 240.0):
    """Run `python -m service.launcher` in its own process group and wait until it serves.

    For tests and benchmarks that must not own a Ray cluster in their own process. Returns
    (Popen, url); end it with `terminate(proc)`. "Serves" is the launcher's own READY_LINE, printed
    once `/ready` answered from this server (not from another one on the same port).
    """
    import subprocess
    import sys

    _, settings = build_config(config_path, list(overrides))
    args = [sys.executable, "-m", "service.launcher", *([str(config_path)] if config_path else []), *overrides]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**user_env(), **(env or {})},
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while True:
        text = Path(log_path).read_text(errors="replace")
        if READY_LINE in text:
            return proc, local_url(settings)
        if proc.poll() is not None:
            raise Unavailable(f"server exited with code {proc.returncode}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            terminate(proc)
            raise Unavailable(f"server not ready after {timeout_s:.0f} s:\n{text[-3000:]}")
        time.sleep(0.5)


def terminate(proc, timeout_s: float = 90.0) -> None:
    """SIGTERM a process started by `spawn` (bounded Serve/Ray shutdown), SIGKILL its group if it hangs."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
