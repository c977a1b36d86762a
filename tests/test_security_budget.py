"""Token budgets cannot be dodged (issue 16): a generation reserves its estimated tokens at admission
(concurrent large requests beyond the key's tokens/min are refused, not all admitted), settles to
the tokens used, and a stream is charged its prompt and completion tokens whether or not the client
asked for the usage chunk. REST app over a stub backend with a frozen rate-limit clock."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from service.auth import Authenticator
from service.http import create_app
from service.security import SecurityGuard
from service.security.ratelimit import Buckets, LocalBuckets
from service.schemas import ChatCompletionRequest, ClassifyRequest, CompletionRequest
from service.settings import LimitSettings, load_settings
from tests.security_support import ADAPTER, StubBackend, make_keyring

PER_MIN = 100
PROMPT_TOKENS = 50


class SlowBackend(StubBackend):
    """Replies after a pause (so concurrent requests overlap); streams report usage like the core."""

    async def complete(self, request, principal):
        await asyncio.sleep(0.3)
        return await super().complete(request, principal)

    async def _chunks(self, request, principal, make):
        async for chunk in super()._chunks(request, principal, make):
            yield chunk
        if request.stream_options is not None and request.stream_options.include_usage:
            yield {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": request.model, "choices": [],
                   "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 2,
                             "total_tokens": PROMPT_TOKENS + 2}}


@pytest.fixture()
def served(tmp_path):
    keys = make_keyring(tmp_path / "keys.json", {"tokens_per_min": PER_MIN})
    settings = load_settings({"keys_file": str(tmp_path / "keys.json"), "api_keys_env": None,
                              "security": {"rate_limit_store": "local", "audit_log": str(tmp_path / "audit.jsonl")}})
    auth = Authenticator.from_settings(settings)
    buckets = Buckets(clock=lambda: 0.0)  # no refill during the test: levels are exact
    guard = SecurityGuard(auth, settings.security, store=LocalBuckets(buckets), limits=settings.limits)
    app = create_app(SlowBackend(), auth, settings, guard=guard)
    principal = auth.authenticate(keys["good"])
    return app, {"Authorization": f"Bearer {keys['good']}"}, lambda: buckets._refilled(f"{principal.key_id}:tokens",
                                                                                      PER_MIN).level


def send(app, requests):
    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await asyncio.gather(*[client.post(path, json=body, headers=headers)
                                          for path, body, headers in requests])

    return asyncio.run(main())


def test_concurrent_large_requests_are_admitted_only_while_their_estimate_fits(served):
    app, key, level = served
    body = {"model": ADAPTER, "prompt": "hi", "max_tokens": 40}  # reserves 3 + 40 = 43 of 100
    replies = send(app, [("/v1/completions", body, key)] * 6)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 429, 429, 429, 429], statuses
    limited = next(r for r in replies if r.status_code == 429)
    assert "up to 43 tokens" in limited.json()["error"]["message"] and int(limited.headers["Retry-After"]) >= 1
    assert level() == PER_MIN - 2 * 5  # settled to the stub's usage (5 tokens each)


def test_a_stream_is_charged_its_prompt_without_include_usage(served):
    app, key, level = served
    reply = send(app, [("/v1/completions", {"model": ADAPTER, "prompt": "hi", "max_tokens": 4, "stream": True}, key)])[0]
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
    assert reply.status_code == 200 and events and all(e.get("choices") for e in events)  # no usage chunk shown
    assert level() == PER_MIN - (PROMPT_TOKENS + 2)
    asked = send(app, [("/v1/completions", {"model": ADAPTER, "prompt": "hi", "max_tokens": 4, "stream": True,
                                            "stream_options": {"include_usage": True}}, key)])[0]
    shown = [json.loads(line[6:]) for line in asked.text.splitlines() if line.startswith("data: {")]
    assert shown[-1]["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert level() == PER_MIN - 2 * (PROMPT_TOKENS + 2)


def test_a_request_that_fails_is_refunded_and_one_larger_than_the_budget_runs_alone(served):
    app, key, level = served
    missing = send(app, [("/v1/completions", {"model": "zz-nope", "prompt": "hi", "max_tokens": 40}, key)])[0]
    assert missing.status_code == 403 and level() == PER_MIN  # refused before any tokens were used: refunded
    huge = {"model": ADAPTER, "prompt": "hi", "max_tokens": 200}  # more than the whole budget: takes all of it
    assert [r.status_code for r in send(app, [("/v1/completions", huge, key)] * 2)] in ([200, 429], [429, 200])


def test_estimates_bound_the_tokens_a_request_can_use():
    from service.security.guard import estimated_tokens

    limits = LimitSettings(max_prompt_tokens=64, default_max_tokens=16)
    assert estimated_tokens(CompletionRequest(model="m", prompt=["ab", "é"], n=2), limits) == (3 + 3) + 2 * 2 * 16
    assert estimated_tokens(CompletionRequest(model="m", prompt="x" * 1000, max_tokens=5), limits) == 64 + 5
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hey"}], max_completion_tokens=7)
    assert estimated_tokens(chat, limits) == 3 + 8 + 7
    assert estimated_tokens(ClassifyRequest(model="m", input=["a", "bb"]), limits) == 2 + 3
