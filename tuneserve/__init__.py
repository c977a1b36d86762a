"""tuneserve: fine-tune LLMs and serve the result (CLI composition root)."""

__version__ = "0.1.0"
