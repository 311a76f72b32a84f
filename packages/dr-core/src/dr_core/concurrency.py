"""Bounded concurrency for streams: map a function over an iterator with a few threads, results in input
order or as they finish, never more than a small window of inputs read ahead (constant memory)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

A = TypeVar("A")
B = TypeVar("B")


def ordered_map(
    fn: Callable[[A], B], items: Iterable[A], workers: int, window: int | None = None
) -> Iterator[B]:
    """`map(fn, items)` on `workers` threads, in order, reading at most `window` (2 x workers) items ahead.
    With one worker it runs in the calling thread."""
    if workers <= 1:
        yield from map(fn, items)
        return
    window = window or 2 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[B]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def completed_map(
    fn: Callable[[A], B], items: Iterable[A], workers: int, window: int | None = None
) -> Iterator[tuple[A, B]]:
    """(item, fn(item)) on `workers` threads as each finishes, reading at most `window` (2 x workers) items
    ahead. When the caller stops early, the calls already started finish before this returns."""
    window = window or 2 * workers
    pending = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        running: dict[Future[B], A] = {}
        for item in pending:
            running[pool.submit(fn, item)] = item
            if len(running) >= window:
                break
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                yield item, future.result()
                following = next(pending, None)
                if following is not None:
                    running[pool.submit(fn, following)] = following
