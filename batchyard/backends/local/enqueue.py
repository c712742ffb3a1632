"""A local submit's queue messages: its tasks packed by the bucket of their rows, sent several at a time.

A message holds tasks of one bucket (:mod:`batchyard.backends.local.rows`): its claims and results
share table transactions, each within one partition. A task with a row keeps its bucket; a new one
takes that of the first task of its message, so a bucket's edge never cuts a message short.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial

from batchyard.backends.local.messages import TaskMessage, chunk_size_for, pack
from batchyard.backends.local.rows import partition_key
from batchyard.backends.local.store import JobStore
from batchyard.core.bounded import bounded_map, chunks
from batchyard.core.job import TaskDef
from batchyard.core.rerun import RerunPlan
from batchyard.storage.account import FAST_POOL_SIZE

Placed = tuple[TaskDef, str | None]  # a task to queue, and the bucket of its row (None: the job's own partition)
NEW = object()  # the packing key of a task with no row yet
SEND_CONCURRENCY = 16
SLICE_MESSAGES = 128  # messages' worth of tasks packed, and their re-run rows written, at a time


def enqueue(store: JobStore, job_id: str, queue: str, placed: Iterable[Placed], key: bytes, *, workers: int,
            plan: RerunPlan | None = None) -> None:
    """Send the tasks' messages as they are packed, several at a time (``bounded_map``): the queue's
    work overlaps the packing, and no more than a few messages are held at once. The tasks come a
    slice at a time. A task that ran before (it failed, changed, or its worker was lost) has a row,
    set back to pending with its new definition before its message is sent (the others get theirs
    when a worker claims them). Without ``plan``, ``placed`` is a list, none ran."""
    if plan is None:
        placed = list(placed)
        count = len(placed)
    else:
        count = len(plan.reasons)
    # A first submission's tasks are all new: one run per slice, no task asked.
    all_new = plan is not None and all(reason == ("new",) for reason in plan.reasons.values())

    def is_new(task: TaskDef) -> bool:
        return all_new or (plan is not None and plan.reasons[task.task_id] == ("new",))

    size = chunk_size_for(count, workers)
    oversized: list[Placed] = []

    def packed() -> Iterator[TaskMessage]:
        left = count
        for piece in chunks(placed, size * SLICE_MESSAGES):
            # Runs of new tasks (no row yet: any bucket will do), and of tasks with rows in one bucket.
            runs = [piece] if all_new else chunks(piece, len(piece),
                                                  key=lambda item: NEW if is_new(item[0]) else item[1])
            for run in runs:
                tasks, buckets = [task for task, _ in run], [bucket for _, bucket in run]
                left -= len(tasks)
                new = plan is not None and is_new(tasks[0])
                if plan is not None and not new:
                    store.write_pending(partition_key(job_id, buckets[0]), tasks, reset=True)
                for item in pack(job_id, tasks, size, key=key, buckets=buckets, new=new, workers=workers,
                                 after=left):
                    if isinstance(item, TaskMessage):
                        yield item
                    else:
                        oversized.append((item, buckets[tasks.index(item)]))

    send = partial(store.send, queue=queue)
    # The fast path's pool keeps FAST_POOL_SIZE connections: more threads would open and drop others.
    concurrency = SEND_CONCURRENCY if store.storage.fast_queue is None else FAST_POOL_SIZE
    bounded_map(send, packed(), concurrency=concurrency)
    for run in chunks(oversized, size, key=lambda item: item[1]):
        # A definition too big for a message: its row is written now, the message names it.
        bucket, tasks = run[0][1], [task for task, _ in run]
        store.write_pending(partition_key(job_id, bucket), tasks, reset=True)
        send(TaskMessage(job_id, tuple(t.task_id for t in tasks), bucket=bucket))


__all__ = ["NEW", "Placed", "enqueue"]
