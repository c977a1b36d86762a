"""The Prometheus series of the security layer: aliases of the objects `service.metrics`
publishes (one registry, multiprocess-aware); names are fixed by deploy/prometheus/rules/security.yml.

    tuneserve_auth_failures_total{reason,transport}   reason: missing|invalid|expired|revoked|forbidden|blocked
    tuneserve_rate_limited_total{key_id,kind}         kind: requests|tokens
    tuneserve_blocked_clients                         addresses blocked now (per replica; max across)
    tuneserve_key_client_addresses{key_id}            distinct addresses per key in the window
    tuneserve_prompt_injection_suspected_total{adapter}
    tuneserve_rate_limit_store_errors_total           limiter calls that failed and erred open
    tuneserve_audit_lines_dropped_total               audit lines dropped because the writer fell behind
"""

from __future__ import annotations

from prometheus_client import Counter

from service.metrics import (  # first: it sets prometheus_client's multiprocess value class
    AUTH_FAILURES, BLOCKED_CLIENTS, PROMPT_INJECTION_SUSPECTED, RATE_LIMITED, adapter_label,
)
from service.metrics import KEY_CLIENT_ADDRESSES as KEY_ADDRESSES

RATE_LIMIT_STORE_ERRORS = Counter("tuneserve_rate_limit_store_errors",
                                  "Rate-limit store calls that failed; the request was admitted (errs open).")
AUDIT_DROPPED = Counter("tuneserve_audit_lines_dropped", "Audit lines dropped because the audit writer fell behind.")

PROMPT_INJECTION = PROMPT_INJECTION_SUSPECTED

__all__ = ["AUDIT_DROPPED", "AUTH_FAILURES", "BLOCKED_CLIENTS", "KEY_ADDRESSES", "PROMPT_INJECTION", "RATE_LIMITED",
           "RATE_LIMIT_STORE_ERRORS", "adapter_label"]
