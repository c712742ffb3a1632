"""The local backend's final step: queued by the process that waits for the job, once every per-file
task is final, so it runs after them exactly as Batch runs a task whose dependencies are satisfied.

Its row lives beside the per-file tasks' rows (task id ``final-step``, which no per-file task can
have) but is never counted with them; its state document says whether this submission runs it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import timedelta

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.base import FinalStepView, TaskCounts, TaskResult
from batchyard.backends.final_step import (
    final_task_def,
    load_state,
    plan_submission,
    save_state,
    skip_reason,
    upload_final_files,
    view_of,
)
from batchyard.backends.local.admission import job_message_key
from batchyard.backends.local.job_queues import QUEUED_FIELD, queue_for_submit
from batchyard.backends.local.rows import entity_to_result
from batchyard.backends.local.store import JobStore
from batchyard.core.final_step import FINAL_TASK_ID
from batchyard.core.job import Job, TaskDef

# The lister's SAS URLs: minted when the step is queued, valid long enough for any queue wait.
LISTING_SAS_LIFETIME = timedelta(days=7)
FINAL_STATES = ("succeeded", "failed")

Enqueue = Callable[[str, str, list[TaskDef], bytes], None]  # job id, its queue, tasks, message key


def plan_final_step(store: JobStore, job: Job, *, dependencies_reran: bool, prior_state: str | None) -> None:
    """At submit: decide whether this submission runs the final step; if so, forget its last run."""
    due = plan_submission(store, job, dependencies_reran=dependencies_reran,
                          succeeded_before=prior_state == "succeeded")
    if due and prior_state is not None:
        with contextlib.suppress(ResourceNotFoundError):
            store.tasks.delete_entity(partition_key=job.id, row_key=FINAL_TASK_ID)


def final_step_settled(store: JobStore, job: Job, counts: TaskCounts, enqueue: Enqueue) -> bool:
    """Whether the job's final step is done with (or not needed), once its per-file tasks are final;
    queues it the first time it is due and allowed."""
    if job.final is None:
        return True
    state = load_state(store, job.id)
    if not state.get("due") or state.get("skipped"):
        return True
    row = store.get_task(job.id, FINAL_TASK_ID)
    if row is not None:
        return row.get("state") in FINAL_STATES
    if state.get("queued"):
        return False
    entity = store.get_job_entity(job.id) or {}
    reason = "the job was cancelled" if entity.get("state") == "cancelled" else skip_reason(job, counts)
    if reason:
        save_state(store, job.id, {**state, "skipped": reason})
        return True
    upload_final_files(store, job, lifetime=LISTING_SAS_LIFETIME)
    save_state(store, job.id, {**state, "queued": True})
    enqueue(job.id, queue_for_submit(store, job.id), [final_task_def(job)], job_message_key(store, job.id))
    store.set_job_fields(job.id, **{QUEUED_FIELD: time.time()})  # workers idle on the queue look again
    return False


def final_step_view(store: JobStore, job: Job, counts: TaskCounts) -> FinalStepView | None:
    if job.final is None:
        return None
    row = store.get_task(job.id, FINAL_TASK_ID)
    result: TaskResult | None = entity_to_result(row) if row is not None else None
    return view_of(job, load_state(store, job.id), result, counts)
