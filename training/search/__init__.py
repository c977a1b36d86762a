"""Hyper-parameter search over training configs (`tuneserve search`): grid, random and TPE
samplers (Optuna), median/Hyperband pruning, SQLite-persisted studies, local or Ray Tune trials.

    from training.search import SearchConfig, search
    report = search(load_config(SearchConfig, "training/configs/search-tiny.yaml"))

Modules: `config` (SearchConfig, the space), `study` (samplers, pruners, one trial, best
artifact), `backends` (local / ray), `report` (JSON, Markdown, plots), `run` (end to end).
"""

from training.search.config import SearchConfig

__all__ = ["SearchConfig", "search"]


def __getattr__(name: str):
    if name == "search":
        from training.search.run import search

        return search
    raise AttributeError(name)
