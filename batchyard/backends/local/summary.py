"""The results a summary table shows, found without reading every task's row.

A summary shows a job's first results in an order of state and label (``Backend.summary_results``).
Every task's state is in the job's tally (kept current by the run's own polls) and every label in
its manifest, so the tasks to show are chosen from those, and only their rows are read: a handful
of queries, where reading every row took 1.7 s per 20,000 tasks after the last task ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from batchyard.backends.base import TaskResult, TaskState
from batchyard.backends.local.rows import BRIEF_COLUMNS, entity_to_result, unclaimed_result
from batchyard.backends.local.store import JobStore
from batchyard.backends.local.tally import TaskTally
from batchyard.core.bounded import Firsts


def summary_results(store: JobStore, tally: TaskTally, job_id: str, *, cancelled: bool,
                    order: Callable[[TaskResult], Any], limit: int) -> Iterator[TaskResult] | None:
    """Each state's first ``limit`` results in ``order`` (brief), from ``tally`` (refreshed here) and
    the job's manifest; None when a row's task is not in the manifest (read every row then)."""
    tally.refresh(job_cancelled=cancelled)
    manifest = store.manifest_rows(job_id) or []
    if len(tally.states) > len(manifest) or not tally.states.keys() <= {row[0] for row in manifest}:
        return None
    unclaimed = TaskState.CANCELLED if cancelled else TaskState.PENDING
    by_state: dict[TaskState, Firsts[TaskResult]] = {}
    for task_id, label, *_ in manifest:
        state = tally.states.get(task_id, unclaimed)
        firsts = by_state.setdefault(state, Firsts(limit, order))
        firsts.add(TaskResult(job_id=job_id, task_id=task_id, state=state, label=label))
    chosen = [result for firsts in by_state.values() for result in firsts.firsts()]
    rows = store.find_tasks(job_id, [r.task_id for r in chosen if r.task_id in tally.states],
                            select=list(BRIEF_COLUMNS))
    return (entity_to_result(rows[r.task_id]) if r.task_id in rows
            else unclaimed_result(job_id, r.task_id, r.label, cancelled=cancelled) for r in chosen)
