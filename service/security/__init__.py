"""Security of the serving transports: rate limits, audit log, suspicious-activity detection,
client blocking, input-limit helpers and TLS helpers. See docs/security.md.

    from service.security import SecurityGuard
    guard = SecurityGuard.from_settings(settings, auth)          # one per Ingress replica
    principal = await guard.admit(token, "10.0.0.7", "http", "infer")   # raises the table's errors
    await guard.charge(principal, tokens=42)                     # tokens/min bucket, after the reply
    guard.audit.record(route=..., key_id=principal.key_id, status=200, ...)
"""

from service.security.config import SecuritySettings
from service.security.guard import SecurityGuard

__all__ = ["SecurityGuard", "SecuritySettings"]
