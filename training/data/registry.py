"""One helper for the name -> function registries of the data package (readers, rules, ops...).

    READERS: dict[str, Reader] = {}
    reader = registrar(READERS)

    @reader("jsonl")
    def read_jsonl(path): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def registrar(table: dict[str, F]) -> Callable[[str], Callable[[F], F]]:
    """A decorator factory that stores each decorated function in `table` under its name."""
    def named(name: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            table[name] = fn
            return fn
        return register
    return named
