"""Let a replacement Ingress replica take the public port back after the old one was killed.

Under direct ingress (service/launcher.py `use_direct_ingress`) Serve's Ingress replica binds the
configured port itself, and the launcher lets Serve hand out that one port only (clients and k8s
Services use it). Ray Serve 2.60 binds it without SO_REUSEADDR. When the replica's process dies
(`kill -9`, OOM) the kernel closes its client connections from the server side, and those sockets
sit in TIME_WAIT on the port for a minute: the replacement's bind fails with EADDRINUSE, Serve then
marks the port blocked for good, and every later replacement fails with NoAvailablePortError - the
port stayed dead until the server was restarted.

With SO_REUSEADDR on every direct-ingress listener (the old one's connections inherit it) the
replacement binds the port beside those TIME_WAIT sockets at once. SO_REUSEADDR never lets a second
socket listen on a port that has a listener (that would take SO_REUSEPORT, which is not set), so no
other process can share or take over the port. A port still in use (a listener that is not gone
yet) is retried for BUSY_WAIT_S before the failure reaches Serve, which would block the port for good.

    allow_port_rebind()   # in the Ingress replica's constructor, before Serve starts its HTTP server

Ray has no option for this, so the replica module's `start_asgi_http_server` is wrapped; when Ray's
internals differ from what the wrapper expects it logs why and changes nothing.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import socket
import time
from typing import Any

log = logging.getLogger("tuneserve.direct_ingress")
BUSY_WAIT_S = 10.0  # a port still in use is retried this long before Serve hears of it (and blocks the port)


def reuse_address_only(sock: socket.socket) -> bool:
    """What Serve's `set_socket_reuse_port` is swapped for around our bind: SO_REUSEADDR, no SO_REUSEPORT."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return True


def address_in_use(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE


def allow_port_rebind() -> bool:
    """Make this process's direct-ingress HTTP listener set SO_REUSEADDR; True when it will (idempotent)."""
    try:
        from ray.serve._private import http_util, replica
    except ImportError as exc:
        log.warning("direct-ingress port rebind not enabled: %s", exc)
        return False
    start = getattr(replica, "start_asgi_http_server", None)
    if getattr(start, "rebinds_port", False):
        return True
    if (start is None or start is not getattr(http_util, "start_asgi_http_server", None)
            or not hasattr(http_util, "set_socket_reuse_port")
            or "enable_so_reuseport" not in inspect.signature(start).parameters):
        log.warning("direct-ingress port rebind not enabled: this Ray's Serve binds its HTTP port differently; "
                    "a killed Ingress replica may leave the port unusable until the server restarts")
        return False

    async def bind_once(app: Any, http_options: Any, event_loop: Any):
        # Ray creates and binds the socket before its first await: nothing else runs in between
        real = http_util.set_socket_reuse_port
        http_util.set_socket_reuse_port = reuse_address_only
        try:
            return await start(app, http_options, event_loop=event_loop, enable_so_reuseport=True)
        finally:
            http_util.set_socket_reuse_port = real

    async def start_rebindable(app: Any, http_options: Any, *, event_loop: Any, enable_so_reuseport: bool = False):
        if enable_so_reuseport:
            return await start(app, http_options, event_loop=event_loop, enable_so_reuseport=True)
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            try:
                return await bind_once(app, http_options, event_loop)
            except RuntimeError as exc:  # Serve blocks a port for good after one failed bind: outwait a dying listener
                if not address_in_use(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.25)

    start_rebindable.rebinds_port = True  # type: ignore[attr-defined]
    replica.start_asgi_http_server = start_rebindable
    return True
