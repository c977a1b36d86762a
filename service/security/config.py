"""`SecuritySettings`: the `security:` block of `ServiceSettings` (service/settings.py).

    security:
      requests_per_min: 600          # default for keys without their own limit (null: unlimited)
      tokens_per_min: 100000
      rate_limit_store: auto         # auto: a shared Ray actor inside Ray, in-process otherwise
      audit_log: /var/log/tuneserve/audit.jsonl
      block_after_failures: 20       # auth failures per address within failure_window_s
      trusted_proxies: [10.0.0.0/8]  # X-Forwarded-For is believed only from these peers
      tls_certfile: /etc/tuneserve/tls.crt
      tls_keyfile: /etc/tuneserve/tls.key
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, IPvAnyNetwork

from training.artifact.config import StrictModel

ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class SecuritySettings(StrictModel):
    requests_per_min: int | None = Field(None, ge=1, description="default requests/min per key (null: unlimited)")
    tokens_per_min: int | None = Field(None, ge=1, description="default prompt+completion tokens/min per key")
    rate_limit_store: Literal["auto", "local", "ray"] = Field(
        "auto", description="where buckets live: a named Ray actor shared by all replicas, or this process")
    audit_log: Path | None = Field(None, description="JSON-lines audit log (null: log records to the "
                                                     "'tuneserve.audit' logger only)")
    audit_max_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="rotate the audit log at this size")
    audit_backups: int = Field(10, ge=1, description="rotated audit files kept")
    audit_failures_per_client: int = Field(20, ge=0, description="lines of their own for failed calls without a "
                                                                 "valid key, per address and failure_window_s")
    audit_failures_total: int = Field(120, ge=0, description="the same, all addresses together; the rest are "
                                                             "summarised in one line per status and reason")
    audit_queue_size: int = Field(10_000, ge=1, description="audit lines waiting for the writer; more are dropped")
    block_after_failures: int = Field(20, ge=1, description="auth failures from one address that block it")
    failure_window_s: float = Field(60.0, gt=0)
    block_s: float = Field(300.0, ge=0, description="how long an address stays blocked for requests without "
                                                    "a valid key (0: never block); valid keys are never blocked")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list, description="networks of ingress controllers / load balancers whose X-Forwarded-For "
                                          "names the client (else the TCP peer is the client)")
    address_window_s: float = Field(3600.0, gt=0, description="window for distinct addresses per key")
    adapter_roots: list[Path] = Field(default_factory=list, description="directories besides artifacts_dir "
                                                                      "that admins may load adapters from")
    max_json_depth: int = Field(32, ge=2, description="nesting depth limit of JSON request bodies")
    adapter_name_pattern: str = Field(ADAPTER_NAME_PATTERN, description="names admins may load adapters under "
                                      "(400 otherwise); it can only narrow the API's own limit (letters, digits, "
                                      "'.', '_', ':', '-'; at most 128 characters; never '..')")
    detect_prompt_injection: bool = True
    public_docs: bool = Field(False, description="serve /openapi.json and /docs without a key (else /openapi.json "
                                                 "needs any valid key and /docs is off)")
    public_metrics: bool = Field(False, description="serve /metrics without a key (only when the port is "
                                                    "reachable by Prometheus alone); else the `metrics` scope")
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
