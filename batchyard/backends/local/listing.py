"""The local backend's jobs as ``batchyard jobs`` lists them, and its job ids compared without case.

Every job has one row in the jobs table (its state, total, created and updated times); its counts
come from its task rows (:class:`~batchyard.backends.local.tally.TaskTally`), and it was last
updated when its row or its newest task row was written.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from batchyard.backends.base import JobView, TaskCounts
from batchyard.backends.local.store import JobStore
from batchyard.backends.local.tally import TaskTally

LIST_CONCURRENCY = 8


def job_ids_like(store: JobStore, job_id: str) -> list[str]:
    """The ids of the jobs whose id equals ``job_id`` compared without case (the table compares with case)."""
    wanted = job_id.lower()
    return [row["RowKey"] for row in store.list_jobs(select=["RowKey"]) if str(row["RowKey"]).lower() == wanted]


def _iso(epoch: Any) -> str | None:
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="milliseconds") if epoch else None


def job_view(store: JobStore, row: dict[str, Any]) -> JobView:
    """One job's view from its row: the tally reads its task rows once."""
    tally = TaskTally(store, row["RowKey"], total=int(row.get("total") or 0))
    counts: TaskCounts = tally.refresh(job_cancelled=row.get("state") == "cancelled")
    updated = _iso(row.get("updated"))
    if tally.newest is not None:
        newest = tally.newest.astimezone(UTC).isoformat(timespec="milliseconds")
        updated = max(updated or newest, newest)
    if row.get("state") == "cancelled":
        state = "cancelled"
    else:
        state = "completed" if counts.finished and counts.total else "active"
    return JobView(job_id=row["RowKey"], backend=str(row.get("backend") or "local"), state=state, counts=counts,
                   created_at=_iso(row.get("created")), updated_at=updated)


def job_views(store: JobStore) -> list[JobView]:
    """Every job of this storage account and configuration, newest first."""
    rows = list(store.list_jobs())
    with ThreadPoolExecutor(LIST_CONCURRENCY) as pool:
        views = list(pool.map(lambda row: job_view(store, row), rows))
    return sorted(views, key=lambda v: (v.created_at or "", v.job_id), reverse=True)
