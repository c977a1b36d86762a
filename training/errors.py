"""Errors raised by training code: re-exported from the shared hierarchy in `training.artifact`."""

from training.artifact.errors import (  # noqa: F401
    ArtifactInvalid,
    BaseModelMismatch,
    ConfigError,
    DataError,
    TrainingError,
    TuneserveError,
)
