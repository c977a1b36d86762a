"""Locust users for tuneserve: REST (completions, chat, streamed completions) and gRPC (Generate,
GenerateStream) in one run, weighted tasks, users spread over several adapters and API keys.
`loadtests/run.sh` runs it headless; by hand (from the repository root):

    PYTHONPATH=$PWD TUNESERVE_GRPC=127.0.0.1:9000 TUNESERVE_MODELS=a1,a2 TUNESERVE_API_KEY=tsk_... \
        locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 16 -t 60s

Environment:
  TUNESERVE_API_KEYS / TUNESERVE_API_KEY   comma-separated keys (users take them in turn) / one key
  TUNESERVE_MODELS    comma-separated models (default tiny-llama; users take them in turn)
  TUNESERVE_GRPC      gRPC host:port; unset: REST users only
  TUNESERVE_SHAPE     soak | burst (loadtests/shapes.py), with TUNESERVE_USERS, TUNESERVE_DURATION_S
                      and TUNESERVE_BURST_PERIOD_S; unset: locust's -u/-r/-t decide
  TUNESERVE_PROMPT, TUNESERVE_MAX_TOKENS (default 16)
  TUNESERVE_GRPC_WEIGHT (default 1, against REST's 3)

A refusal by the key's rate limit (HTTP 429, gRPC RESOURCE_EXHAUSTED with RateLimited) is designed,
not a failure: it counts as a success under the request's name + " [429]", so locust's failure
count (and exit code) stays clean and loadtests/summary.py reports refusals separately. Streams
report "TTFT" as their own SSE entry. Requests are greedy, so latencies compare across runs.
"""

from __future__ import annotations

import itertools
import os
import time

import grpc.experimental.gevent as grpc_gevent
from locust import HttpUser, LoadTestShape, User, constant, task

grpc_gevent.init_gevent()  # grpc's blocking calls must yield to gevent, or one user blocks all

from loadtests import shapes  # noqa: E402
from loadtests.summary import RATE_LIMITED_SUFFIX  # noqa: E402
from service.client import TuneserveClient  # noqa: E402
from training.artifact.errors import RateLimited  # noqa: E402


def _listed(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


PROMPT = os.environ.get("TUNESERVE_PROMPT", "The quick brown fox")
MAX_TOKENS = int(os.environ.get("TUNESERVE_MAX_TOKENS", "16"))
GRPC_TARGET = os.environ.get("TUNESERVE_GRPC")
_models = itertools.cycle(_listed("TUNESERVE_MODELS", "tiny-llama"))
_keys = itertools.cycle(_listed("TUNESERVE_API_KEYS") or _listed("TUNESERVE_API_KEY") or [""])


def _sampling() -> dict:
    return {"max_tokens": MAX_TOKENS, "temperature": 0}


def _report(user: User, kind: str, name: str, started: float, size: int, error: Exception | None) -> None:
    if isinstance(error, RateLimited):
        name, error = name + RATE_LIMITED_SUFFIX, None
    user.environment.events.request.fire(request_type=kind, name=name, response_length=size, exception=error,
                                         response_time=(time.perf_counter() - started) * 1000.0, context={})


class RestUser(HttpUser):
    """REST calls back to back; `--host` is the base URL."""

    weight = 3
    wait_time = constant(0)

    def on_start(self) -> None:
        self.model, key = next(_models), next(_keys)
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"

    def _post(self, path: str, name: str, body: dict) -> None:
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            if response.status_code == 429:
                response.request_meta["name"] = name + RATE_LIMITED_SUFFIX
                response.success()

    @task(4)
    def completion(self) -> None:
        self._post("/v1/completions", "completions", {"model": self.model, "prompt": PROMPT, **_sampling()})

    @task(2)
    def chat(self) -> None:
        self._post("/v1/chat/completions", "chat",
                   {"model": self.model, "messages": [{"role": "user", "content": PROMPT}], **_sampling()})

    @task(1)
    def streamed(self) -> None:
        body = {"model": self.model, "prompt": PROMPT, "stream": True, **_sampling()}
        started, first = time.perf_counter(), None
        with self.client.post("/v1/completions", json=body, name="completions-stream", stream=True,
                              catch_response=True) as response:
            if response.status_code == 429:
                response.request_meta["name"] = "completions-stream" + RATE_LIMITED_SUFFIX
                response.success()
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            for line in response.iter_lines():
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - started
                if line == b"data: [DONE]":
                    response.success()
                    break
            else:
                response.failure("stream ended without [DONE]")
                return
        if first is not None:
            self.environment.events.request.fire(request_type="SSE", name="TTFT", response_time=first * 1000,
                                                 response_length=0, exception=None, context={})


class GrpcUser(User):
    """gRPC calls back to back on one channel per user, to TUNESERVE_GRPC (not `--host`)."""

    weight = int(os.environ.get("TUNESERVE_GRPC_WEIGHT", "1"))
    wait_time = constant(0)

    def on_start(self) -> None:
        if not GRPC_TARGET:
            raise RuntimeError("set TUNESERVE_GRPC=host:port for gRPC users (or run RestUser only)")
        self.model, key = next(_models), next(_keys)
        self.client = TuneserveClient(GRPC_TARGET, api_key=key or None)

    def on_stop(self) -> None:
        self.client.close()

    @task(3)
    def generate(self) -> None:
        started, size, error = time.perf_counter(), 0, None
        try:
            size = self.client.generate(PROMPT, model=self.model, **_sampling()).ByteSize()
        except Exception as exc:  # reported to locust, not raised
            error = exc
        _report(self, "grpc", "Generate", started, size, error)

    @task(1)
    def generate_stream(self) -> None:
        started, size, error, finished = time.perf_counter(), 0, None, False
        try:
            for chunk in self.client.generate_stream(PROMPT, model=self.model, **_sampling()):
                size += chunk.ByteSize()
                finished = finished or chunk.HasField("usage")
            if not finished:
                error = RuntimeError("stream ended without its usage chunk")
        except Exception as exc:
            error = exc
        _report(self, "grpc", "GenerateStream", started, size, error)


if os.environ.get("TUNESERVE_SHAPE"):
    class SelectedShape(LoadTestShape):
        """The shape named by TUNESERVE_SHAPE (loadtests/shapes.py); only one shape may be visible here."""

        tick_of = shapes.shape_tick(os.environ["TUNESERVE_SHAPE"], int(os.environ.get("TUNESERVE_USERS", "4")),
                                    float(os.environ.get("TUNESERVE_DURATION_S", "60")),
                                    float(os.environ.get("TUNESERVE_BURST_PERIOD_S", "30")))

        def tick(self):
            return type(self).tick_of(self.get_run_time())
