"""A dependency-free progress line for long loops (calibration, sensitivity, benchmarks)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], label: str, total: int | None = None, quiet: bool = False) -> Iterator[T]:
    """Yield items, redrawing `label  i/total  elapsed` on stderr when it is a terminal."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    live = not quiet and sys.stderr.isatty()
    start = time.perf_counter()
    count = 0
    for count, item in enumerate(items, 1):
        yield item
        if live:
            of = f"/{total}" if total else ""
            sys.stderr.write(f"\r{label}  {count}{of}  {time.perf_counter() - start:.1f}s")
            sys.stderr.flush()
    if live:
        sys.stderr.write(f"\r{label}  {count} done in {time.perf_counter() - start:.1f}s\n")
        sys.stderr.flush()
    elif not quiet and total and total > 1:
        print(f"{label}: {count} done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
