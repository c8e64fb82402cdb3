"""Deterministic process-pool map with a progress bar.

Results come back in input order whatever the number of workers, and each task receives
everything it needs (including any seed) in its arguments, so outputs never depend on
which worker ran what.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

Task = TypeVar("Task")
Result = TypeVar("Result")


def worker_count(requested: int) -> int:
    """`requested` workers, or one per available core when 0."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(
    function: Callable[[Task], Result],
    tasks: Sequence[Task],
    *,
    workers: int,
    description: str,
    chunksize: int = 4,
) -> list[Result]:
    """`[function(t) for t in tasks]`, spread over `workers` processes, with a tqdm bar."""
    return list(
        ordered_imap(function, tasks, workers=workers, description=description, chunksize=chunksize)
    )


def ordered_imap(
    function: Callable[[Task], Result],
    tasks: Sequence[Task],
    *,
    workers: int,
    description: str,
    chunksize: int = 4,
) -> Iterator[Result]:
    """`ordered_map` that yields each result as soon as it and those before it are done, so
    that a caller can write results out instead of holding them all."""
    count = worker_count(workers)
    progress = tqdm(total=len(tasks), desc=description, unit="img", mininterval=1.0)
    with progress:
        if count == 1 or len(tasks) <= 1:
            for task in tasks:
                yield function(task)
                progress.update()
            return
        pool = ProcessPoolExecutor(max_workers=count)
        try:
            for result in pool.map(function, tasks, chunksize=chunksize):
                yield result
                progress.update()
        finally:  # a caller that stops early (an error) must not wait for the tasks left
            pool.shutdown(cancel_futures=True)
