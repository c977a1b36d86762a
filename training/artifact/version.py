"""The tuneserve version, from its one source: `[project] version` in pyproject.toml.

Read from the installed package's metadata, so training (manifests, base builds), the
service (OpenAPI) and the CLI (`tuneserve.__version__`) all report the same string.

    tuneserve_version()   # "0.1.0"; "0+unknown" when tuneserve is not installed (a bare source tree)
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

UNKNOWN_VERSION = "0+unknown"


@lru_cache(maxsize=1)
def tuneserve_version() -> str:
    try:
        return version("tuneserve")
    except PackageNotFoundError:
        return UNKNOWN_VERSION
