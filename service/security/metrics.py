"""The Prometheus series of the security layer: aliases of the objects `service.metrics`
publishes (one registry, multiprocess-aware); names are fixed by deploy/prometheus/rules/security.yml.

    tuneserve_auth_failures_total{reason,transport}   reason: missing|invalid|expired|revoked|forbidden|blocked
    tuneserve_rate_limited_total{key_id,kind}         kind: requests|tokens
    tuneserve_blocked_clients                         addresses blocked now (per replica; max across)
    tuneserve_key_client_addresses{key_id}            distinct addresses per key in the window
    tuneserve_prompt_injection_suspected_total{adapter}
"""

from __future__ import annotations

from service.metrics import (
    AUTH_FAILURES, BLOCKED_CLIENTS, PROMPT_INJECTION_SUSPECTED, RATE_LIMITED, adapter_label,
)
from service.metrics import KEY_CLIENT_ADDRESSES as KEY_ADDRESSES

PROMPT_INJECTION = PROMPT_INJECTION_SUSPECTED

__all__ = ["AUTH_FAILURES", "BLOCKED_CLIENTS", "KEY_ADDRESSES", "PROMPT_INJECTION", "RATE_LIMITED", "adapter_label"]
