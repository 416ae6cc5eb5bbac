"""A transient rich progress bar for the launching process's own long steps (data preparation, `ds-tp export`),
on a terminal only: in CI logs and pipes it draws nothing, the finished step's one-line summary says enough."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MIN_ITEMS = 200  # below this a bar only flickers


@contextmanager
def task(description: str, total: int, min_items: int = MIN_ITEMS) -> Iterator[Callable[[int], None]]:
    """Yields advance(n): n more of `total` items done."""
    if total < min_items or not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(description), BarColumn(bar_width=30), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        handle = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(handle, n)
