"""Rich progress bars for long work (pretraining, training, quantization, data preparation).

    with progress_bar("pretraining", total=300) as advance:
        for step in ...:
            advance(loss=0.42)          # one step, with fields shown beside the bar

Disabled bars (`enabled=False`, or no terminal in CI) cost nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    if not enabled:
        yield lambda steps=1, **fields: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(steps: int = 1, **fields: float | str) -> None:
            info = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=steps, info=info)

        yield advance
