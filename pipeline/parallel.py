"""Deterministic process-pool maps with a progress bar: `ordered_map` over a list, and
`bounded_ordered_map` over a lazy stream of tasks with a bounded number in flight.

Results come back in input order whatever the number of workers, and each task receives
everything it needs (including any seed) in its arguments, so outputs never depend on
which worker ran what.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
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
    count = worker_count(workers)
    progress = tqdm(total=len(tasks), desc=description, unit="img", mininterval=1.0)
    with progress:
        if count == 1 or len(tasks) <= 1:
            results = []
            for task in tasks:
                results.append(function(task))
                progress.update()
            return results
        with ProcessPoolExecutor(max_workers=count) as pool:
            results = []
            for result in pool.map(function, tasks, chunksize=chunksize):
                results.append(result)
                progress.update()
            return results


def bounded_ordered_map(
    function: Callable[[Task], Result],
    tasks: Iterable[Task],
    *,
    workers: int,
    window: int,
    description: str,
    total: int | None = None,
    unit: str = "img",
    weight: Callable[[Task], int] | None = None,
    max_weight: int = 0,
) -> Iterator[Result]:
    """Yield `function(t)` for each task of `tasks` in input order, over `workers` processes,
    with a tqdm bar; for task streams too large to hold at once.

    `tasks` is consumed lazily: at most `window` tasks have been taken from it and not yet
    yielded, so memory is bounded by the window whatever the stream's length (a task may be
    produced by reading a file). With `weight` (a task's size, say its bytes), tasks are
    also taken only while those in flight weigh less than `max_weight`, so a few heavy
    tasks cannot fill the window (the total exceeds `max_weight` by one task at most). One
    worker runs in this process, without a pool. A task's exception is raised here, in
    order, after the pool is shut down (the tasks it was still running finish, the others
    are cancelled), so a caller's cleanup never races a worker. Close the generator
    (`contextlib.closing`) if you may stop before its end.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    count = worker_count(workers)
    with tqdm(total=total, desc=description, unit=unit, mininterval=1.0) as progress:
        if count == 1:
            for task in tasks:
                yield function(task)
                progress.update()
            return
        pool = ProcessPoolExecutor(max_workers=count)
        running: deque[tuple[Future[Result], int]] = deque()
        in_flight = 0  # the weight of the running tasks
        try:
            for task in tasks:
                task_weight = weight(task) if weight else 0
                running.append((pool.submit(function, task), task_weight))
                in_flight += task_weight
                while running and (len(running) == window or (weight and in_flight >= max_weight)):
                    future, task_weight = running.popleft()
                    in_flight -= task_weight
                    yield future.result()
                    progress.update()
            for future, _ in running:
                yield future.result()
                progress.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
