"""tuneserve: fine-tune LLMs and serve the result (CLI composition root)."""

from training.artifact.version import tuneserve_version

__version__ = tuneserve_version()
