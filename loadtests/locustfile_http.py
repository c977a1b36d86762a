"""Locust load test of the REST API: completions (plain and streamed) and chat, greedy.

    TUNESERVE_API_KEY=tsk_... locust -f loadtests/locustfile_http.py --host http://127.0.0.1:8000 \
        --headless -u 16 -r 16 -t 60s --csv results/http

Environment: TUNESERVE_API_KEY (required when auth is on), TUNESERVE_MODELS (comma-separated;
default tiny-llama; users spread over them, so several adapters give a mixed-adapter load),
TUNESERVE_PROMPT, TUNESERVE_MAX_TOKENS (default 16). Streamed requests also report
"TTFT" as its own entry (time to the first SSE chunk). Runs in its own process.
"""

from __future__ import annotations

import itertools
import os
import time

from locust import HttpUser, constant, task

PROMPT = os.environ.get("TUNESERVE_PROMPT", "The quick brown fox")
MODELS = [m for m in os.environ.get("TUNESERVE_MODELS", "tiny-llama").split(",") if m]
MAX_TOKENS = int(os.environ.get("TUNESERVE_MAX_TOKENS", "16"))
_models = itertools.cycle(MODELS)


class RestUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.model = next(_models)
        key = os.environ.get("TUNESERVE_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"

    @task(4)
    def completion(self) -> None:
        body = {"model": self.model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
        self.client.post("/v1/completions", json=body, name="completions")

    @task(2)
    def chat(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
                "temperature": 0}
        self.client.post("/v1/chat/completions", json=body, name="chat")

    @task(1)
    def streamed(self) -> None:
        body = {"model": self.model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
        started = time.perf_counter()
        first = None
        with self.client.post("/v1/completions", json=body, name="completions-stream", stream=True,
                              catch_response=True) as response:
            for line in response.iter_lines():
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - started
                if line == b"data: [DONE]":
                    break
            else:
                response.failure("stream ended without [DONE]")
                return
            response.success()
        if first is not None:
            self.environment.events.request.fire(request_type="SSE", name="TTFT", response_time=first * 1000,
                                                 response_length=0, exception=None, context={})
