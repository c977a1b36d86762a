"""Request and reply shapes of the rollout admin API (`/v1/admin/rollouts`, gRPC `Admin.Rollout`,
`tuneserve rollout`); the logic is service/rollout.py.

    RolloutRequest(action="set", alias="support-bot", stable="sb-v3", candidate="sb-v4", weight=0.1, shadow=0.2)
    RolloutRequest(action="promote", alias="support-bot", force=False)   # -> RolloutReply(decision=GateDecision)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from training.artifact.errors import Conflict

from service.schemas import FleetStatus

ACTIONS = ("list", "status", "set", "promote", "rollback", "delete")


class AliasFields(BaseModel):
    """The body of `PUT /v1/admin/rollouts/{alias}`: what the alias serves from now on."""

    stable: str = Field(description="the version (a loaded or catalogued adapter) most traffic gets")
    candidate: str | None = Field(None, description="the version under test (canary and/or shadow)")
    weight: float = Field(0.0, ge=0.0, le=1.0, description="share of callers routed to the candidate (0.1: 90/10)")
    shadow: float = Field(0.0, ge=0.0, le=1.0, description="share of the stable's requests copied to the candidate")
    sticky: Literal["key", "user", "none"] = Field("key", description="keeps a caller on one version: its API key, "
                                                   "the request's `user` (or X-Tuneserve-Sticky header), or nothing")


class RolloutRequest(AliasFields):
    action: Literal["list", "status", "set", "promote", "rollback", "delete"]
    alias: str | None = None
    stable: str | None = None  # type: ignore[assignment]  # only `set` needs it
    force: bool = Field(False, description="promote: skip the gate (the decision is still audited)")


class VersionNumbers(BaseModel):
    """What this replica measured for one version through the alias (live and shadow), and its online quality."""

    version: str
    requests: int = 0
    errors: int = 0
    error_rate: float | None = None
    p50_latency_s: float | None = None
    p95_latency_s: float | None = None
    shadow_requests: int = 0
    shadow_errors: int = 0
    agreement: float | None = Field(None, description="mean agreement of its shadow answers with the stable's")
    agreement_n: int = 0
    quality: float | None = Field(None, description="online quality from production feedback")
    quality_kind: str | None = None
    quality_n: int = 0


class GateDecision(BaseModel):
    allowed: bool
    forced: bool = False
    reasons: list[str] = Field(default_factory=list, description="why the gate refused (empty when it passed)")
    stable: VersionNumbers
    candidate: VersionNumbers
    thresholds: dict[str, float] = Field(default_factory=dict)


class AliasView(AliasFields):
    alias: str
    previous: str | None = None
    generation: int = 0
    versions: list[VersionNumbers] = Field(default_factory=list)
    shadow_dropped: int = Field(0, description="shadow copies dropped because the shadow queue was full")


class RolloutReply(BaseModel):
    aliases: list[AliasView] = Field(default_factory=list)
    decision: GateDecision | None = None
    fleet: FleetStatus | None = None


def refusal(decision: GateDecision) -> Conflict:
    """The error a transport answers a refused promotion with; carries the decision for the audit line."""
    error = Conflict("promotion refused: " + "; ".join(decision.reasons),
                     "send more canary/shadow traffic or feedback, fix the candidate, or promote with --force "
                     "(audited)")
    error.audit_detail = decision.model_dump()  # type: ignore[attr-defined]
    error.audit_reason = "rollout_refused"  # type: ignore[attr-defined]
    return error
