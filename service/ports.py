"""Ports of local servers: pick free ones without races, refuse busy ones, recognise our own server.

    port = free_port()                         # free, and never handed out before (here or by another tuneserve process)
    ensure_free("127.0.0.1", 8000)             # Unavailable("port 8000 is in use ...") when something listens there
    instance = new_instance()                  # before Ray starts: replicas inherit INSTANCE_ENV ...
    wait_owned(local_url(settings), instance)  # ... and the Ingress echoes it in INSTANCE_HEADER of /ready

Why free_port() does not bind port 0 and return what it got: the kernel hands out port-0 binds and
outgoing connections from its ephemeral range (32768-60999 on Linux), where Ray's own processes
bind port 0 too, so such a port can be taken before the server binds it, and two calls in a row can
return the same one. free_port() picks from PORT_RANGE instead (below the ephemeral range, above
Ray's worker ports 10002-19999), skips every port it handed out before, and holds a lock file per
port (`<tmp>/tuneserve-ports/<port>.lock`, flock'ed until this process exits) that other tuneserve
processes respect.

Why the instance check: a readiness probe on a port answers for whoever listens there. A start
that probes `/ready` must see its own instance id, or it was another server that answered.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from training.artifact.errors import Unavailable

PORT_RANGE = (20000, 30000)
LOCK_DIR = Path(tempfile.gettempdir()) / "tuneserve-ports"
INSTANCE_ENV = "TUNESERVE_INSTANCE_ID"
INSTANCE_HEADER = "x-tuneserve-instance"
_reserved: dict[int, int | None] = {}  # port -> fd of its held lock file (None: no lock dir)


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (TIME_WAIT leftovers don't count, as for servers)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _lock(port: int) -> tuple[bool, int | None]:
    """Take the cross-process lock of `port`: (taken, fd); (True, None) when locks can't be kept."""
    import fcntl

    try:
        LOCK_DIR.mkdir(mode=0o1777, parents=True, exist_ok=True)
        fd = os.open(LOCK_DIR / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return True, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False, None
    return True, fd


def free_port(host: str = "127.0.0.1") -> int:
    """A port in PORT_RANGE nobody listens on, handed out once per process and locked against others."""
    low, high = PORT_RANGE
    start = random.randrange(low, high)
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        if port in _reserved:
            continue
        taken, fd = _lock(port)
        if not taken:
            continue
        _reserved[port] = fd  # kept even when busy now: never worth trying twice
        if bindable(host, port):
            return port
    raise Unavailable(f"no free port left in {low}-{high - 1} on {host}", "stop servers you no longer need")


def ensure_free(host: str, port: int | None, option: str = "port") -> None:
    """Fail at once when something already listens on `port` (0 and None: chosen later, nothing to check)."""
    if port and not bindable(host, port):
        raise Unavailable(f"port {port} is in use on {host}",
                          f"stop the other server on it, or pass {option}={free_port(host)}")


def new_instance() -> str:
    """A fresh instance id in INSTANCE_ENV; processes started from now on (Ray's) inherit it."""
    os.environ[INSTANCE_ENV] = instance = secrets.token_hex(8)
    return instance


class InstanceHeader:
    """ASGI middleware: /ready answers carry this server's instance id (INSTANCE_HEADER) when it has one."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.header = (INSTANCE_HEADER.encode(), os.environ.get(INSTANCE_ENV, "").encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/ready" or not self.header[1]:
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def wait_owned(url: str, instance: str, verify: Any = True, timeout_s: float = 60.0,
               foreign_grace_s: float = 10.0) -> None:
    """Wait until `url`/ready answers 200 from the server started with `instance`.

    An answer with another instance id fails at once; one without any id (not a tuneserve
    server, or Ray's proxy before its routes arrive) fails after `foreign_grace_s`."""
    import httpx

    started = time.monotonic()
    last = "no answer"
    while True:
        try:
            reply = httpx.get(f"{url}/ready", timeout=2, verify=verify)
            answered_by = reply.headers.get(INSTANCE_HEADER)
            if answered_by == instance and reply.status_code == 200:
                return
            last = f"HTTP {reply.status_code} from instance {answered_by or 'unknown'}"
            foreign = answered_by not in (None, instance)  # another tuneserve server
            if foreign or (answered_by is None and time.monotonic() - started > foreign_grace_s):
                raise Unavailable(f"{url} is answered by another server, not the one just started ({last})",
                                  "stop the other server on that port, or choose another port=..., and start again")
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() - started > timeout_s:
            raise Unavailable(f"the server started but {url}/ready did not answer as ready within {timeout_s:.0f} s "
                              f"({last})", "check the Ray logs under RAY_TMPDIR")
        time.sleep(0.25)
