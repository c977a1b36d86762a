"""Safe rollout of adapter versions: an alias (the name apps call) over versions (loaded adapter names),
a weighted sticky canary, shadow traffic to the candidate, and promotion gated on measured numbers.

    rollouts = Rollouts(settings.rollout, core.fleet, known=registry_knows, quality=feedback_store)
    route = rollouts.route("support-bot", principal, user=request.user)  # None: not an alias
    reply = await rollouts.serve(route, lambda: core_call(route.version, route.principal))
    rollouts.shadow_copy(route, lambda: core_call(route.shadow, None), answers_of(reply), answers_of)
    rollouts.admin(RolloutRequest(action="promote", alias="support-bot"))  # RolloutReply with a GateDecision

The alias table is part of the fleet's desired state (service/engine/desired.py `AliasSpec`), so every
Engine replica routes alike and restarts keep it. A request naming an alias resolves once here to one
version; the core then serves it as a request for that version (reply `model`, metrics, drift and audit
name the version). A key allowed the alias may use its versions through it (the version is added to
that request's principal only); naming a version directly still needs the version in the key's patterns.

Routing: a caller's sticky id (its API key id, or the request's `user`, per the alias's `sticky`) hashes
with the alias name to a point u in [0, 1); u < weight goes to the candidate. Raising the weight only moves
callers from stable to candidate, never back. Without an id the pick is random per request.

Promotion (`promote`) compares the candidate with the stable version: online quality (an injected
`QualitySource`; both need `min_feedback` samples), error rate and p95 latency (this replica's counters of
live and shadow requests; both need `min_requests`). A refused promotion changes nothing; `force` skips
the gate. Neither promote nor rollback unloads a version: requests in flight on the old one finish on
their leases, and the old one stays loaded for a rollback.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Protocol

from pydantic import Field

from training.artifact.config import StrictModel
from training.artifact.errors import Conflict, NotFound

from service import metrics
from service.auth import Authenticator, Principal
from service.engine.desired import AliasSpec
from service.errors import describe, with_param
from service.feedback import OnlineQuality
from service.rollout_schemas import AliasView, GateDecision, RolloutReply, RolloutRequest, VersionNumbers
from service.shadow import ShadowRunner, agreement

log = logging.getLogger("tuneserve.service.rollout")


class RolloutSettings(StrictModel):
    min_requests: int = Field(20, ge=0, description="live+shadow requests each version needs before promotion")
    min_feedback: int = Field(20, ge=0, description="online-quality samples each version needs before promotion")
    require_feedback: bool = Field(True, description="false: promote without quality data (error rate and "
                                   "latency still gate); true: too little feedback refuses")
    max_quality_drop: float = Field(0.0, ge=0.0, description="the candidate's online quality may be this much "
                                    "below the stable's")
    max_error_rate_increase: float = Field(0.01, ge=0.0, description="candidate error rate minus stable's, at most")
    max_latency_ratio: float = Field(1.5, gt=0.0, description="candidate p95 latency / stable's, at most")
    latency_window: int = Field(1000, ge=10, description="latest latencies kept per version")
    shadow_queue: int = Field(32, ge=1, description="shadow copies queued or running; more are dropped (counted)")
    shadow_concurrency: int = Field(2, ge=1, description="shadow copies running at once")


PEER_LATENCIES = 256  # latest latencies per version a replica reports to the fleet (bounds each heartbeat)


class QualitySource(Protocol):
    """Online quality per version (service.feedback.FeedbackStore is the production one); None: no feedback."""

    def online_quality(self, model_id: str) -> OnlineQuality | None: ...


class NoQuality:
    """A source with no data for any version (tests, or a server without feedback)."""

    def online_quality(self, model_id: str) -> OnlineQuality | None:
        return None


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=1000))

    def add(self, ok: bool, seconds: float) -> None:
        self.requests += 1
        self.errors += 0 if ok else 1
        self.latencies.append(seconds)


@dataclass
class VersionStats:
    live: Tally
    shadow: Tally
    agreement_sum: float = 0.0
    agreement_n: int = 0

    def snapshot(self, sample: int) -> dict[str, Any]:
        """What the fleet sums (service/fleet.py tallies): counts, agreement and the latest `sample` latencies."""
        return {"live": [self.live.requests, self.live.errors], "shadow": [self.shadow.requests, self.shadow.errors],
                "agreement": [self.agreement_sum, self.agreement_n],
                "latencies": [*self.live.latencies, *self.shadow.latencies][-sample:]}

    @classmethod
    def summed(cls, snapshots: list[dict[str, Any]]) -> "VersionStats":
        """Every replica's numbers of one version as one (latencies pooled in the live tally)."""
        total = cls(Tally(latencies=deque()), Tally(latencies=deque()))
        for snap in snapshots:
            for tally, (requests, errors) in ((total.live, snap["live"]), (total.shadow, snap["shadow"])):
                tally.requests += requests
                tally.errors += errors
            total.agreement_sum += snap["agreement"][0]
            total.agreement_n += snap["agreement"][1]
            total.live.latencies.extend(snap["latencies"])
        return total

    def numbers(self, version: str, quality: OnlineQuality | None) -> VersionNumbers:
        requests = self.live.requests + self.shadow.requests
        errors = self.live.errors + self.shadow.errors
        both = sorted([*self.live.latencies, *self.shadow.latencies])
        return VersionNumbers(
            version=version, requests=requests, errors=errors, error_rate=errors / requests if requests else None,
            p50_latency_s=_quantile(both, 0.5), p95_latency_s=_quantile(both, 0.95),
            shadow_requests=self.shadow.requests, shadow_errors=self.shadow.errors,
            agreement=self.agreement_sum / self.agreement_n if self.agreement_n else None,
            agreement_n=self.agreement_n, quality=quality.value if quality else None,
            quality_kind=quality.kind if quality else "none", quality_n=quality.n if quality else 0)


def _quantile(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


@dataclass(frozen=True)
class Route:
    alias: str
    version: str
    shadow: str | None
    principal: Principal | None


def bucket(alias: str, sticky_id: str) -> float:
    """A caller's fixed point in [0, 1) for an alias."""
    digest = hashlib.sha256(f"{alias}\0{sticky_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def pick(alias: str, spec: AliasSpec, sticky_id: str | None, rng: random.Random) -> str:
    if not spec.candidate or spec.weight <= 0.0:
        return spec.stable
    point = bucket(alias, sticky_id) if sticky_id else rng.random()
    return spec.candidate if point < spec.weight else spec.stable


def sticky_id(spec: AliasSpec, principal: Principal | None, user: str | None) -> str | None:
    key = principal.key_id if principal is not None else None
    if spec.sticky == "key":
        return key or user
    if spec.sticky == "user":
        return user or key
    return None


def server_fault(exc: BaseException) -> bool:
    """Whether a failed request counts against the version (5xx), not the caller (4xx)."""
    return describe(exc).http_status >= 500


def decide(settings: RolloutSettings, stable: VersionNumbers, candidate: VersionNumbers, force: bool) -> GateDecision:
    """The promotion gate: reasons to refuse (empty: allowed)."""
    s, reasons = settings, []
    if min(stable.quality_n, candidate.quality_n) < s.min_feedback or stable.quality is None or candidate.quality is None:
        if s.require_feedback:
            reasons.append(f"not enough online feedback to compare quality (stable n={stable.quality_n}, candidate "
                           f"n={candidate.quality_n}, need {s.min_feedback} each)")
    elif candidate.quality < stable.quality - s.max_quality_drop:
        reasons.append(f"candidate online {candidate.quality_kind} {candidate.quality:.4f} (n={candidate.quality_n}) is "
                       f"below the stable's {stable.quality:.4f} (n={stable.quality_n}) by more than "
                       f"max_quality_drop {s.max_quality_drop}")
    if min(stable.requests, candidate.requests) < s.min_requests:
        reasons.append(f"not enough traffic measured (stable {stable.requests}, candidate {candidate.requests} "
                       f"requests, need {s.min_requests} each; send canary or shadow traffic)")
    elif stable.requests and candidate.requests:  # (min_requests 0 and nothing measured: nothing to compare)
        if candidate.error_rate - stable.error_rate > s.max_error_rate_increase:
            reasons.append(f"candidate error rate {candidate.error_rate:.4f} exceeds the stable's "
                           f"{stable.error_rate:.4f} by more than {s.max_error_rate_increase}")
        if stable.p95_latency_s and candidate.p95_latency_s / stable.p95_latency_s > s.max_latency_ratio:
            reasons.append(f"candidate p95 latency {candidate.p95_latency_s:.4f} s is more than "
                           f"{s.max_latency_ratio}x the stable's {stable.p95_latency_s:.4f} s")
    thresholds = {"min_requests": s.min_requests, "min_feedback": s.min_feedback,
                  "max_quality_drop": s.max_quality_drop, "max_error_rate_increase": s.max_error_rate_increase,
                  "max_latency_ratio": s.max_latency_ratio, "require_feedback": float(s.require_feedback)}
    return GateDecision(allowed=force or not reasons, forced=force and bool(reasons), reasons=reasons,
                        stable=stable, candidate=candidate, thresholds=thresholds)


class Rollouts:
    def __init__(self, settings: RolloutSettings, fleet, known: Callable[[str], bool],
                 quality: QualitySource | None = None) -> None:
        """`fleet`: the replica's FleetMember (`aliases`, `set_alias`); `known(name)`: whether a version exists
        here (loaded or catalogued); `quality`: online quality per version (default: none)."""
        self.settings, self.fleet, self.known = settings, fleet, known
        self.quality: QualitySource = quality or NoQuality()
        self.rng = random.Random()
        self.stats: dict[str, VersionStats] = {}
        self.dropped: dict[str, int] = {}
        self.lock = threading.Lock()
        self.shadows = ShadowRunner(settings.shadow_queue, settings.shadow_concurrency)

    def stop(self) -> None:
        self.shadows.stop()

    # ---- requests ---------------------------------------------------------------------------
    def route(self, model: str, principal: Principal | None, user: str | None = None) -> Route | None:
        spec = self.fleet.aliases.get(model)
        if spec is None:
            return None
        if principal is not None:
            Authenticator.authorize(principal, "infer", model)
        version = pick(model, spec, sticky_id(spec, principal, user), self.rng)
        if principal is not None and not principal.may_use(version):
            principal = replace(principal, adapters=(*principal.adapters, version))  # this request only
        shadow = None
        if version == spec.stable and spec.candidate and spec.shadow > 0 and self.rng.random() < spec.shadow:
            shadow = spec.candidate
        return Route(model, version, shadow, principal)

    async def serve(self, route: Route, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run the request on its version, counting its outcome and latency for that version."""
        started = time.perf_counter()
        try:
            reply = await call()
        except Exception as exc:
            self.failed(route.alias, route.version, "primary", exc, time.perf_counter() - started)
            raise
        self.record(route.alias, route.version, "primary", True, time.perf_counter() - started)
        return reply

    def failed(self, alias: str, version: str, role: str, exc: BaseException, seconds: float) -> None:
        """A failed request counts against its version when the server failed (5xx); a caller's error
        (4xx: bad request, rate limit, ...) says nothing about the version and is not counted."""
        if server_fault(exc):
            self.record(alias, version, role, False, seconds)

    def record(self, alias: str, version: str, role: str, ok: bool, seconds: float) -> None:
        with self.lock:
            stats = self._stats(version)
            (stats.shadow if role == "shadow" else stats.live).add(ok, seconds)
        metrics.rollout_request(alias, version, role, ok, seconds)

    def shadow_copy(self, route: Route, call: Callable[[], Awaitable[Any]], primary: list[str],
                    answers: Callable[[Any], list[str]]) -> bool:
        """Send a copy to the candidate on the shadow runner (never blocks, never raises into the caller);
        its answer is scored against `primary` and dropped. False when the queue was full."""
        alias, version = route.alias, route.shadow

        async def run() -> None:
            started = time.perf_counter()
            try:
                reply = await call()
            except Exception as exc:  # noqa: BLE001 - a shadow failure is only counted
                self.failed(alias, version, "shadow", exc, time.perf_counter() - started)
                log.info("shadow request to %s failed: %s", version, exc)
                return
            self.record(alias, version, "shadow", True, time.perf_counter() - started)
            score = agreement(primary, answers(reply))
            with self.lock:
                stats = self._stats(version)
                stats.agreement_sum += score
                stats.agreement_n += 1
            metrics.shadow_agreement(alias, version, score)

        if self.shadows.submit(run):
            return True
        with self.lock:
            self.dropped[alias] = self.dropped.get(alias, 0) + 1
        metrics.shadow_dropped(alias)
        return False

    def _stats(self, version: str) -> VersionStats:
        stats = self.stats.get(version)
        if stats is None:
            window = self.settings.latency_window
            stats = self.stats[version] = VersionStats(Tally(latencies=deque(maxlen=window)),
                                                       Tally(latencies=deque(maxlen=window)))
        return stats

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """This replica's numbers per version, reported to the fleet with each heartbeat (FleetMember.tallies)."""
        with self.lock:
            return {version: stats.snapshot(PEER_LATENCIES) for version, stats in self.stats.items()}

    def numbers(self, version: str) -> VersionNumbers:
        """A version's numbers over the whole fleet: this replica's and what the other live replicas reported."""
        quality = self.quality.online_quality(version)  # may read a store: outside the lock
        peers = [tallies[version] for tallies in self.fleet.peer_tallies() if version in tallies]
        with self.lock:
            own = self._stats(version)
            if not peers:
                return own.numbers(version, quality)
            return VersionStats.summed([own.snapshot(self.settings.latency_window), *peers]).numbers(version, quality)

    # ---- administration (called off the event loop) -------------------------------------------
    def admin(self, request: RolloutRequest, principal: Principal | None = None) -> RolloutReply:
        if request.action == "list":
            names = [a for a in sorted(self.fleet.aliases) if principal is None or principal.may_use(a)]
            return RolloutReply(aliases=[self.view(a) for a in names])
        alias = request.alias
        if not alias:
            raise with_param(NotFound("no alias given", "name the alias, e.g. support-bot"), "alias")
        if principal is not None:
            Authenticator.authorize(principal, "admin", alias)
        if request.action == "set":
            return self._set(alias, request, principal)
        spec = self._spec(alias)
        if request.action == "status":
            return RolloutReply(aliases=[self.view(alias)])
        if request.action == "delete":
            fleet = self.fleet.set_alias(alias, None, spec.generation)
            return RolloutReply(fleet=fleet)
        if request.action == "rollback":
            return self._rollback(alias, spec)
        return self._promote(alias, spec, request.force)

    def view(self, alias: str) -> AliasView:
        spec = self._spec(alias)
        return AliasView(alias=alias, **spec.model_dump(exclude={"generation", "previous"}), previous=spec.previous,
                         generation=spec.generation, versions=[self.numbers(v) for v in spec.versions()],
                         shadow_dropped=self.dropped.get(alias, 0))

    def _spec(self, alias: str) -> AliasSpec:
        spec = self.fleet.aliases.get(alias)
        if spec is None:
            raise with_param(NotFound(f"alias {alias!r} does not exist",
                                      "create it with `tuneserve rollout set ALIAS --stable VERSION`"), "alias")
        return spec

    def _set(self, alias: str, request: RolloutRequest, principal: Principal | None) -> RolloutReply:
        if not request.stable:
            raise with_param(NotFound("`set` needs the stable version", "pass --stable VERSION"), "stable")
        current = self.fleet.aliases.get(alias)
        if current is None and self.known(alias):
            raise with_param(Conflict(f"{alias!r} is already a model or adapter name",
                                      "choose an alias name no model or adapter uses"), "alias")
        for version in (request.stable, request.candidate):
            if version is None:
                continue
            if version in self.fleet.aliases:
                raise with_param(Conflict(f"{version!r} is an alias", "point an alias at adapter versions"), "stable")
            if not self.known(version):
                raise with_param(NotFound(f"version {version!r} is neither loaded nor in the catalog",
                                          "load it first: POST /v1/admin/adapters"), "stable")
            if principal is not None:
                Authenticator.authorize(principal, "admin", version)
        if request.candidate == request.stable:
            raise with_param(Conflict("the candidate is the stable version", "name a different candidate"),
                             "candidate")
        previous = current.previous if current else None
        if current is not None and current.stable != request.stable:
            previous = current.stable
        spec = AliasSpec(stable=request.stable, candidate=request.candidate,
                         weight=request.weight if request.candidate else 0.0,
                         shadow=request.shadow if request.candidate else 0.0, sticky=request.sticky, previous=previous)
        fleet = self.fleet.set_alias(alias, spec, current.generation if current else -1)
        log.info("alias %s set: %s", alias, spec.model_dump())
        return RolloutReply(aliases=[self.view(alias)], fleet=fleet)

    def _promote(self, alias: str, spec: AliasSpec, force: bool) -> RolloutReply:
        if not spec.candidate:
            raise Conflict(f"alias {alias!r} has no candidate to promote", "set one with --candidate first")
        decision = decide(self.settings, self.numbers(spec.stable), self.numbers(spec.candidate), force)
        log.warning("promotion of %s on alias %s: %s", spec.candidate, alias, decision.model_dump())
        if not decision.allowed:
            return RolloutReply(aliases=[self.view(alias)], decision=decision)
        promoted = spec.model_copy(update={"stable": spec.candidate, "candidate": None, "weight": 0.0, "shadow": 0.0,
                                           "previous": spec.stable})
        fleet = self.fleet.set_alias(alias, promoted, spec.generation)
        return RolloutReply(aliases=[self.view(alias)], decision=decision, fleet=fleet)

    def _rollback(self, alias: str, spec: AliasSpec) -> RolloutReply:
        """Drop the candidate when there is one (all traffic back on the stable); else go back to the
        version the last promote replaced."""
        if spec.candidate:
            back = spec.model_copy(update={"candidate": None, "weight": 0.0, "shadow": 0.0})
        elif spec.previous:
            back = spec.model_copy(update={"stable": spec.previous, "previous": spec.stable})
        else:
            raise Conflict(f"alias {alias!r} has nothing to roll back to", "it has no candidate and no previous version")
        fleet = self.fleet.set_alias(alias, back, spec.generation)
        log.warning("alias %s rolled back: %s", alias, back.model_dump())
        return RolloutReply(aliases=[self.view(alias)], fleet=fleet)


def answers_of(reply: Any) -> list[str]:
    """The texts a reply answered (per choice / per input) to compare a shadow's with."""
    data = reply if isinstance(reply, dict) else reply.model_dump()
    if "choices" in data:
        return [c.get("text") if "text" in c else (c.get("message") or {}).get("content") or ""
                for c in data["choices"]]
    return [str(d.get("label")) for d in data.get("data", [])]

