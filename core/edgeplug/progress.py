"""Progress of long loops (calibration, searches, training, emulated runs, benchmarks) on stderr: a rich
progress bar with the phase, count and elapsed time on a terminal; one plain line per phase otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], label: str, total: int | None = None, quiet: bool = False) -> Iterator[T]:
    """Yield items while showing `label  i/total  elapsed`; when stderr is not a terminal, print one line
    when the phase ends: `label: 9 done in 2.5s`."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if quiet:
        yield from items
        return
    start = time.perf_counter()
    if sys.stderr.isatty():
        yield from _bar(items, label, total)
        return
    count = 0
    for item in items:
        count += 1
        yield item
    if count:
        of = f" of {total}" if total and total != count else ""
        print(f"{label}: {count}{of} done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def _bar(items: Iterable[T], label: str, total: int | None) -> Iterator[T]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)
