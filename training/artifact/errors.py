"""The one error hierarchy of tuneserve.

Every error a user can cause is a `TuneserveError` carrying a message (what was wrong)
and a hint (what to do next). Training code and the CLI raise these; the service maps
each class to an HTTP status, an OpenAI error type and a gRPC code in one table
(`service/errors.py`). Defined here because `training.artifact` is the only package both
sides import.
"""

from __future__ import annotations


class TuneserveError(Exception):
    """Base of every user-facing error: message says what was wrong, hint what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __reduce__(self):
        # Keep message, hint and extra attributes (e.g. retry_after, param) across pickling (Ray, subprocesses).
        return (_rebuild, (type(self), self.message, self.hint, dict(self.__dict__)))


def _rebuild(cls: type, message: str, hint: str | None, state: dict) -> "TuneserveError":
    error = cls.__new__(cls)
    TuneserveError.__init__(error, message, hint)
    error.__dict__.update(state)
    return error


class ConfigError(TuneserveError):
    """A config file, override or argument is invalid."""


class DataError(TuneserveError):
    """Input data is missing, malformed or empty after preparation."""


class TrainingError(TuneserveError):
    """Training cannot start or continue with the given setup."""


class ArtifactInvalid(TuneserveError):
    """An artifact directory is missing, corrupted, tampered with or incompatible."""


class BaseModelMismatch(ArtifactInvalid):
    """An adapter was trained on a different base model than the one it is loaded onto."""


class InvalidRequest(TuneserveError):
    """A request is malformed or exceeds a limit."""


class Unauthenticated(TuneserveError):
    """No credentials, or credentials that do not identify a valid key."""


class PermissionDenied(TuneserveError):
    """A valid key without the scope or adapter access the request needs."""


class NotFound(TuneserveError):
    """A named model, adapter or resource does not exist."""


class Conflict(TuneserveError):
    """The request conflicts with current state (e.g. unloading a pinned adapter)."""


class RateLimited(TuneserveError):
    """A key exceeded its request or token budget."""

    def __init__(self, message: str, hint: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after


class PayloadTooLarge(InvalidRequest):
    """A request body exceeds the configured maximum size."""


class Unavailable(TuneserveError):
    """The service cannot take the request now (starting, overloaded, shutting down)."""


class Overloaded(Unavailable):
    """Every queue slot for the request is taken: retry later (HTTP 503, gRPC RESOURCE_EXHAUSTED)."""
