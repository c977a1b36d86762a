"""Helpers for gRPC tests: an event loop in a thread that hosts grpc.aio servers for sync tests.

    loop = LoopThread()
    server = loop.run(start_server())   # any coroutine, run on the loop; returns its result
    loop.close()
"""

from __future__ import annotations

import asyncio
import threading


class LoopThread:
    """An event loop in a daemon thread, where a grpc.aio server lives while sync tests call it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
