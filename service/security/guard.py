"""`SecurityGuard`: what every transport runs around a request, in one place.

    guard = SecurityGuard.from_settings(settings, auth)
    principal = await guard.admit(token, client="10.0.0.7", transport="grpc", scope="infer")
    found = guard.inspect_prompts(["user text", ...])    # injection markers (the transport counts them
                                                          # once the model resolved: metric label)
    await guard.charge(principal, prompt_tokens + completion_tokens)      # tokens/min bucket

`admit` order: authenticate (a failure from a blocked address is refused as `blocked`, else
counted towards blocking it) → authorize scope → per-key address tracking → requests/min bucket
→ tokens/min debt. A valid key is never blocked: blocking keys on the address, and behind a NAT
one client's bad keys must not lock out the others. Failures raise the error table's classes
(401/403/429, UNAUTHENTICATED/PERMISSION_DENIED/RESOURCE_EXHAUSTED) and are counted in the
Prometheus series of `service.security.metrics`; each failure also carries `audit_reason` for
the audit line. `guard.client(peer, forwarded)` is the client address (service.security.clients).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from training.artifact.errors import PermissionDenied, RateLimited, TuneserveError, Unauthenticated

from service.errors import CLIENT_CLOSED
from service.security import metrics
from service.security.audit import AuditLog, FailureBudget
from service.security.clients import client_address
from service.security.config import SecuritySettings
from service.security.detect import ActivityTracker, injection_markers
from service.security.ratelimit import bucket_store

UNKNOWN_CLIENT = "unknown"


def prompt_texts(body: Any) -> list[str]:
    """The user-controlled texts of a completion or chat request (for injection heuristics)."""
    if hasattr(body, "messages"):
        return [m.text() for m in body.messages]
    return [p for p in body.prompts() if isinstance(p, str)]  # token-id prompts hold no text to inspect


TEMPLATE_TOKENS_PER_MESSAGE = 8  # chat template markup around each message (role tags, newlines)


def estimated_tokens(body: Any, limits: Any = None) -> int:
    """An upper estimate of a request's tokens, reserved at admission: each prompt's UTF-8 bytes (a
    token holds at least one byte; chat: plus template markup), capped at `max_prompt_tokens`, plus
    max_tokens x n completion tokens per prompt. Classification: the inputs only."""
    cap = getattr(limits, "max_prompt_tokens", None)
    if hasattr(body, "messages"):
        prompts = [sum(len(m.text().encode()) + TEMPLATE_TOKENS_PER_MESSAGE for m in body.messages)]
    else:
        prompts = [len(p) if isinstance(p, list) else len(p.encode()) + 1  # token ids: one token each
                   for p in (body.prompts() if hasattr(body, "prompts") else body.inputs())]
    prompt = sum(min(n, cap) if cap else n for n in prompts)
    if not hasattr(body, "completion_limit"):
        return prompt
    return prompt + len(prompts) * body.n * body.completion_limit(getattr(limits, "default_max_tokens", 16))


def is_usage_chunk(chunk: dict) -> bool:
    return bool(chunk.get("usage")) and not chunk.get("choices")


class StreamUsage:
    """Tokens of a streamed reply: the usage chunk (the transports always ask the backend for one),
    until it arrives one completion token per text event (one event per generated token)."""

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None
        self.completion_tokens = 0

    def add(self, chunk: dict) -> None:
        reported = chunk.get("usage")
        if reported:
            self.prompt_tokens = reported.get("prompt_tokens")
            self.completion_tokens = reported.get("completion_tokens", self.completion_tokens)
        elif any(c.get("text") or (c.get("delta") or {}).get("content") or (c.get("delta") or {}).get("tool_calls")
                 for c in chunk.get("choices", ())):
            self.completion_tokens += 1


def failure_reason(exc: TuneserveError) -> str:
    """missing | invalid | expired | revoked | forbidden (the `reason` label of auth failures)."""
    reason = getattr(exc, "reason", None)
    if reason:
        return reason
    if isinstance(exc, PermissionDenied):
        return "forbidden"
    text = exc.message.lower()
    for word, label in (("no api key", "missing"), ("revoked", "revoked"), ("expired", "expired")):
        if word in text:
            return label
    return "invalid"


def count_forbidden(error: BaseException | None, transport: str) -> None:
    """A PermissionDenied raised past the guard (the core's adapter checks) counts like the guard's own."""
    if isinstance(error, PermissionDenied) and not hasattr(error, "audit_reason"):
        error.audit_reason = "forbidden"  # type: ignore[attr-defined]
        metrics.AUTH_FAILURES.labels("forbidden", transport).inc()


def _tag(exc: TuneserveError, reason: str) -> TuneserveError:
    exc.audit_reason = reason  # type: ignore[attr-defined]
    return exc


class SecurityGuard:
    def __init__(self, auth: Any, security: SecuritySettings | None = None, store: Any = None,
                 audit: AuditLog | None = None, tracker: ActivityTracker | None = None, limits: Any = None) -> None:
        self.auth = auth
        self.limits = limits  # the service's LimitSettings: caps of the token estimate (max_prompt_tokens, ...)
        self.security = security or SecuritySettings()
        s = self.security
        self.store = store if store is not None else bucket_store(s.rate_limit_store)
        self.audit = audit or AuditLog(s.audit_log, s.audit_max_bytes, s.audit_backups, s.audit_queue_size,
                                       FailureBudget(s.audit_failures_per_client, s.audit_failures_total,
                                                     s.failure_window_s))
        self.tracker = tracker or ActivityTracker(s.block_after_failures, s.failure_window_s, s.block_s,
                                                  s.address_window_s)

    @classmethod
    def from_settings(cls, settings: Any, auth: Any) -> "SecurityGuard":
        return cls(auth, getattr(settings, "security", None), limits=getattr(settings, "limits", None))

    def client(self, peer: str | None, forwarded: str | None = None) -> str:
        """The client address: the peer, or the X-Forwarded-For client when the peer is a trusted proxy."""
        return client_address(peer or UNKNOWN_CLIENT, forwarded, self.security.trusted_proxies)

    async def admit(self, token: str | None, client: str | None, transport: str, scope: str | None,
                    adapter: str | None = None) -> Any:
        client = client or UNKNOWN_CLIENT
        try:
            slow = getattr(self.auth, "slow_check", None)
            if slow is not None and slow(token):  # scrypt: keep the event loop free
                principal = await asyncio.to_thread(self.auth.authenticate, token)
            else:
                principal = self.auth.authenticate(token)
            if scope is not None:  # None: any valid key (e.g. the API schema)
                self.auth.authorize(principal, scope, adapter)
        except (Unauthenticated, PermissionDenied) as exc:
            if isinstance(exc, Unauthenticated):
                self._refuse_if_blocked(client, transport)
            reason = failure_reason(exc)
            metrics.AUTH_FAILURES.labels(reason, transport).inc()
            if isinstance(exc, Unauthenticated) and self.tracker.auth_failed(client):
                metrics.BLOCKED_CLIENTS.set(self.tracker.blocked_count())
            raise _tag(exc, reason)
        metrics.KEY_ADDRESSES.labels(principal.key_id).set(self.tracker.key_used(principal.key_id, client))
        await self._limit(principal, "requests", 1)
        await self._limit(principal, "tokens", 0)
        return principal

    async def reserve(self, principal: Any, body: Any) -> int:
        """Take the request's estimated tokens from the key's tokens/min bucket before it runs (so many
        concurrent large requests cannot all pass a "not in debt" check); 429 when they do not fit.
        A request larger than the whole budget takes all of it, so it runs only alone on a full bucket.
        Returns the tokens reserved; `finish_call` settles them to the tokens used."""
        per_min = self._per_min(principal, "tokens")
        if principal is None or per_min is None:
            return 0
        return await self._limit(principal, "tokens", min(estimated_tokens(body, self.limits), per_min))

    def _refuse_if_blocked(self, client: str, transport: str) -> None:
        left = self.tracker.blocked_for(client)
        if left > 0:
            metrics.AUTH_FAILURES.labels("blocked", transport).inc()
            raise _tag(PermissionDenied(f"client address {client} is blocked for {left:.0f} s after repeated "
                                        "authentication failures (requests with a valid key still pass)",
                                        "fix the client's API key and retry after the block expires"), "blocked")

    def _per_min(self, principal: Any, kind: str) -> int | None:
        own = getattr(principal, f"{kind}_per_min", None)
        return own if own is not None else getattr(self.security, f"{kind}_per_min")

    async def _limit(self, principal: Any, kind: str, amount: int) -> int:
        """Take `amount` (0: admitted while not in debt) from the key's bucket; the amount taken."""
        per_min = self._per_min(principal, kind)
        if per_min is None:
            return 0
        wait = await self.store.take(f"{principal.key_id}:{kind}", per_min, amount)
        if wait > 0:
            metrics.RATE_LIMITED.labels(principal.key_id, kind).inc()
            raise _tag(RateLimited(f"API key {principal.key_id} exceeded its limit of {per_min} {kind}/min"
                                   + (f" (this request may use up to {amount} tokens)" if kind == "tokens" and amount
                                      else ""),
                                   f"retry after {wait:.1f} s, lower max_tokens or n, or ask an admin for a higher "
                                   "limit", retry_after=wait), f"rate_limited_{kind}")
        return amount

    async def finish_call(self, transport: str, route: str, method: str, principal: Any, usage: Any,
                          adapter: str | None, status: int, started: float, client: str | None, admin: bool,
                          error: BaseException | None = None, reserved: int = 0, detail: Any = None) -> None:
        """The end of every call, either transport: settle the tokens reserved at admission to the
        tokens used, write its one audit line. A call that ended without a full count (client gone,
        stream broken) keeps at least its reservation; one that failed before any usage is refunded."""
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        try:
            if principal is not None:
                if prompt is not None:
                    used = prompt + (completion or 0)
                elif usage is not None or status == CLIENT_CLOSED:
                    used = max(reserved, completion or 0)
                else:
                    used = 0
                await self.charge(principal, used - reserved)
        finally:
            self.audit.record(transport=transport, route=route, method=method,
                              key_id=getattr(principal, "key_id", None),
                              adapter=adapter or None, status=status, prompt_tokens=prompt,
                              completion_tokens=completion, latency_s=time.perf_counter() - started, client=client,
                              admin=admin, reason=getattr(error, "audit_reason", None),
                              detail=detail if detail is not None else getattr(error, "audit_detail", None))

    async def charge(self, principal: Any, tokens: int) -> None:
        """Charge tokens to the key's tokens/min bucket (negative: a refund, up to a full bucket)."""
        per_min = self._per_min(principal, "tokens")
        if per_min is not None and tokens != 0:
            await self.store.charge(f"{principal.key_id}:tokens", per_min, tokens)

    def inspect_prompts(self, texts: list[str]) -> list[str]:
        """The injection markers in `texts`; the transport counts a hit with the resolved model
        (`service.metrics.prompt_injection_suspected`), so a made-up model name never becomes a label."""
        if not self.security.detect_prompt_injection:
            return []
        return sorted({marker for text in texts for marker in injection_markers(text)})
