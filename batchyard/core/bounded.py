"""One call on many items, several at a time, fed from an iterator as it goes.

Used where a stream of items (queue messages, 100-task requests, blobs to copy) meets a service
whose latency is worth overlapping, but the stream is too long to hold as futures at once: the
next item is taken only while fewer than ``ahead x concurrency`` wait.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def chunks(items: Iterable[Item], size: int, *, key: Callable[[Item], object] | None = None) -> Iterator[list[Item]]:
    """``items`` in lists of ``size`` (the last one shorter), taken as they are consumed; with
    ``key``, a list also ends where the key changes (a table transaction holds one partition)."""
    if key is None:
        source = iter(items)
        while chunk := list(itertools.islice(source, size)):
            yield chunk
        return
    for _, run in itertools.groupby(items, key):
        yield from chunks(run, size)


def bounded_map(fn: Callable[[Item], Result], items: Iterable[Item], *, concurrency: int, ahead: int = 2,
                thread_name_prefix: str = "batchyard") -> list[Result]:
    """``fn(item)`` for each item on ``concurrency`` threads, the results in the items' order.

    The first error is raised once it is seen: items not taken yet are never run, those waiting
    are cancelled (those already running finish first).
    """
    futures: list[Future[Result]] = []
    pending: set[Future[Result]] = set()
    with ThreadPoolExecutor(concurrency, thread_name_prefix=thread_name_prefix) as pool:
        try:
            for item in items:
                while len(pending) >= ahead * concurrency:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # re-raises the item's error
                future = pool.submit(fn, item)
                futures.append(future)
                pending.add(future)
            for future in list(pending):
                future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [future.result() for future in futures]


class Firsts(Generic[Item]):
    """The first ``size`` items in ``key`` order of a stream of any length, holding at most four
    times that many (a summary's table of a job of 100,000 tasks holds its rows, not the tasks)."""

    def __init__(self, size: int, key: Callable[[Item], Any]) -> None:
        self.size, self.key = size, key
        self.kept: list[Item] = []

    def add(self, item: Item) -> None:
        self.kept.append(item)
        if len(self.kept) >= 4 * self.size:
            self.kept = sorted(self.kept, key=self.key)[:self.size]

    def firsts(self) -> list[Item]:
        return sorted(self.kept, key=self.key)[:self.size]
