"""Progress bars for the load tests (rich, on stderr, only on a terminal): results stay plain
lines on stdout, so a piped or CI run prints exactly what it printed before."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True)


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        disable=not _console.is_terminal,
        transient=True,
    )


@contextmanager
def steps(description: str, total: int) -> Iterator[tuple[Progress, TaskID]]:
    """A bar over `total` steps; the caller advances it."""
    with progress() as bars:
        yield bars, bars.add_task(description, total=total)


@contextmanager
def timed(description: str, seconds: float) -> Iterator[None]:
    """A bar that fills with the clock, for a blocking step of known length (e.g. `hey -z`)."""
    with progress() as bars:
        task = bars.add_task(description, total=int(seconds))
        done = threading.Event()

        def tick() -> None:
            started = time.monotonic()
            while not done.wait(0.2):
                bars.update(task, completed=min(seconds, time.monotonic() - started))

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
