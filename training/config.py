"""Typed config loading for training code: re-exported from the shared contract in `training.artifact.config`."""

from training.artifact.config import (  # noqa: F401
    StrictModel,
    env_overrides,
    format_validation_error,
    load_config,
    parse_override,
    read_yaml,
    set_dotted,
)
