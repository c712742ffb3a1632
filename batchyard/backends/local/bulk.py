"""A whole job's task rows at once: cancelling the pending ones, deleting them all.

Both go by table transactions of up to 100 rows of one partition (a job's rows are in several:
:mod:`batchyard.backends.local.rows`), several in flight, so
their cost per row stays what a row in a transaction costs (~1 ms of Azurite's CPU) instead of a
request per row. A task no worker has claimed has no row (:mod:`batchyard.backends.local.store`):
in a cancelled job it reads as cancelled (:mod:`batchyard.backends.local.tally`), so cancelling
writes nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from batchyard.backends.local.store import JobStore
from batchyard.core.batch_semantics import JOB_CANCELLED, final_record
from batchyard.core.bounded import chunks
from batchyard.storage.account import translate_error

ROWS_PER_TRANSACTION = 100  # the service's limit for one transaction
TRANSACTIONS_IN_FLIGHT = 8

_Item = TypeVar("_Item")


def _each_in_flight(chunks: Iterable[list[_Item]], write: Callable[[list[_Item]], int]) -> int:
    """``write`` every chunk, :data:`TRANSACTIONS_IN_FLIGHT` at a time, reading ahead no further
    than twice that (memory stays bounded whatever the job's size); the sum of what they return."""
    total = 0
    running: set[Future[int]] = set()
    with ThreadPoolExecutor(TRANSACTIONS_IN_FLIGHT) as pool:
        for chunk in chunks:
            if len(running) >= 2 * TRANSACTIONS_IN_FLIGHT:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                total += sum(future.result() for future in done)
            running.add(pool.submit(write, chunk))
        total += sum(future.result() for future in running)
    return total


def cancel_pending_rows(store: JobStore, job_id: str) -> int:
    """Record every task row of the job still ``pending`` as cancelled; how many were.

    Each transaction is guarded by every row's ETag: one a worker claimed meanwhile makes the
    service refuse it, and that chunk is then written row by row, each read again first (a task
    now running is stopped by its worker, which records it).
    """
    fields = final_record("cancelled", JOB_CANCELLED, attempts=[])

    def write(chunk: list[dict[str, Any]]) -> int:
        merges = [(store.final_update(row["PartitionKey"], row["RowKey"], fields), row["_etag"]) for row in chunk]
        if store.write_group([], merges) is not None:
            return len(chunk)
        written = 0
        for row in chunk:
            current = store.get_task(row["PartitionKey"], row["RowKey"])
            if current is not None and current.get("state") == "pending":
                written += store.record_final(row["PartitionKey"], row["RowKey"], etag=current["_etag"],
                                              fields=fields) is not None
        return written

    pending = store.task_entities(job_id, state="pending", select=["PartitionKey", "RowKey"])
    return _each_in_flight(chunks(pending, ROWS_PER_TRANSACTION, key=_partition), write)


def delete_task_rows(store: JobStore, job_id: str, *, only: frozenset[str] | None = None) -> int:
    """Delete every task row of the job (``only``: the rows of those task ids, compared without case);
    how many there were."""

    def write(chunk: list[dict[str, Any]]) -> int:
        ops = [("delete", {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"]}) for row in chunk]
        try:
            store.tasks.submit_transaction(ops)  # type: ignore[arg-type]
        except Exception as exc:
            raise translate_error(exc, f"deleting {len(ops)} task records of job {job_id!r}") from None
        return len(ops)

    rows = store.task_entities(job_id, select=["PartitionKey", "RowKey"])
    if only is not None:
        rows = (row for row in rows if row["RowKey"].lower() in only)
    return _each_in_flight(chunks(rows, ROWS_PER_TRANSACTION, key=_partition), write)


def _partition(row: dict[str, Any]) -> str:
    return str(row["PartitionKey"])
