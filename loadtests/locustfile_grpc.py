"""Locust load test of the gRPC `Generate` RPC (unary), one blocking channel per simulated user.

    TUNESERVE_API_KEY=sk-... locust -f loadtests/locustfile_grpc.py --host 127.0.0.1:9000 \
        --headless -u 8 -r 8 -t 60s --csv results/grpc

Environment: TUNESERVE_API_KEY (required when auth is on), TUNESERVE_MODEL (default
tiny-llama), TUNESERVE_PROMPT, TUNESERVE_MAX_TOKENS (default 16). Requests are greedy
(temperature 0) so latencies compare with the HTTP locustfile on the same prompt. Each call is
reported to locust as request type "grpc", name "Generate"; failures carry the typed
`TuneserveError` the client raised.
"""

from __future__ import annotations

import os
import time

import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, task

grpc_gevent.init_gevent()  # grpc's blocking calls must yield to gevent, or one user blocks all

from service.client import TuneserveClient  # noqa: E402

PROMPT = os.environ.get("TUNESERVE_PROMPT", "The quick brown fox")
MODEL = os.environ.get("TUNESERVE_MODEL", "tiny-llama")
MAX_TOKENS = int(os.environ.get("TUNESERVE_MAX_TOKENS", "16"))


class GrpcGenerateUser(User):
    """Calls Generate back to back; `--host` is the gRPC target host:port."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.client = TuneserveClient(self.host, api_key=os.environ.get("TUNESERVE_API_KEY"))

    def on_stop(self) -> None:
        self.client.close()

    @task
    def generate(self) -> None:
        start = time.perf_counter()
        error, size = None, 0
        try:
            reply = self.client.generate(PROMPT, model=MODEL, max_tokens=MAX_TOKENS, temperature=0.0)
            size = reply.ByteSize()
        except Exception as exc:  # reported to locust as a failure, not raised
            error = exc
        self.environment.events.request.fire(request_type="grpc", name="Generate", response_length=size,
                                             response_time=(time.perf_counter() - start) * 1000.0,
                                             exception=error, context={})
