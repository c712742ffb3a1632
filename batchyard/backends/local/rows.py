"""A task's row in the local backend's tasks table, where it lives, and what is read back from it.

Where: a job's task rows are spread over partitions of about :data:`ROWS_PER_PARTITION` rows,
``<job id>~<bucket>``, the bucket a task's position in the submission that first queued it divided
by that (``~`` is in no Batch id, so no other job's partition can look like one of these). A
table service looks a row up within its partition: on Azurite each look-up filters every row of
the partition one by one, so with one partition per job a claim or a result of a job of 100,000
tasks cost ~20 times what it costs at 1,000 (docs/performance.md). The final step's row, and every
row of a job recorded before buckets, are in the partition named by the job id alone. A task's
partition travels in its queue message (under the definitions' MAC); a reader without one asks
the job's partitions by row key (:func:`job_rows_filter`).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from batchyard.backends.base import TaskResult, TaskState, dumps, final_state
from batchyard.core.batch_semantics import JOB_CANCELLED
from batchyard.core.job import TaskDef

ROWS_PER_PARTITION = 1000
BUCKET_MARK = "~"


def partition_key(job_id: str, bucket: str | None) -> str:
    """The partition of a job's rows in ``bucket`` (None: the job id's own partition)."""
    return job_id if bucket is None else f"{job_id}{BUCKET_MARK}{bucket}"


def bucket_of(position: int) -> str:
    """The bucket of the task at ``position`` (from 0) in the submission that first queues it (one
    string per bucket, however many tasks share it: a submit holds one beside each task it queues)."""
    return _bucket_name(position // ROWS_PER_PARTITION)


@functools.lru_cache(maxsize=4096)
def _bucket_name(bucket: int) -> str:
    return str(bucket)


def job_of(partition: str) -> str:
    return partition.split(BUCKET_MARK, 1)[0]


def bucket_in(partition: str) -> str | None:
    """The bucket of a partition of :func:`partition_key` (None: the job id's own)."""
    _, mark, bucket = partition.partition(BUCKET_MARK)
    return bucket if mark else None


def job_rows_filter(job_id: str) -> tuple[str, dict[str, str]]:
    """A ``$filter`` (and its parameters) for every row of the job: its own partition and its buckets."""
    # Spaced: the SDK finds each @name between spaces.
    return ("( PartitionKey eq @job or ( PartitionKey gt @first and PartitionKey lt @after ) )",
            {"job": job_id, "first": f"{job_id}{BUCKET_MARK}", "after": f"{job_id}{BUCKET_MARK}{BUCKET_MARK}"})


# A row's columns that a brief result (Backend.list_task_results) is made of.
BRIEF_COLUMNS = ("PartitionKey", "RowKey", "state", "label", "exit_code", "failure_category", "failure_message",
                 "attempt_count")


def entity_to_result(entity: dict[str, Any]) -> TaskResult:
    attempts = json.loads(entity.get("attempts_json") or "[]")
    return TaskResult(
        job_id=job_of(entity["PartitionKey"]), task_id=entity["RowKey"],
        state=final_state(entity.get("state") or "pending", entity.get("failure_category")),
        label=entity.get("label", ""), exit_code=entity.get("exit_code"),
        failure_category=entity.get("failure_category"), failure_message=entity.get("failure_message"),
        attempts=int(entity.get("attempt_count") or 0), started_at=entity.get("started_at"),
        ended_at=entity.get("ended_at"), node_id=entity.get("node_id"),
        stderr_tail=entity.get("stderr_tail") or "", attempt_records=tuple(attempts),
    )


def unclaimed_result(job_id: str, task_id: str, label: str, *, cancelled: bool) -> TaskResult:
    """A task no worker claimed (it has no row): pending, or cancelled with its job."""
    if not cancelled:
        return TaskResult(job_id=job_id, task_id=task_id, state=TaskState.PENDING, label=label)
    return TaskResult(job_id=job_id, task_id=task_id, state=TaskState.CANCELLED, label=label,
                      failure_category="cancelled", failure_message=JOB_CANCELLED)


def task_def_from_entity(entity: dict[str, Any]) -> TaskDef:
    return TaskDef(
        task_id=entity["RowKey"], argv=tuple(json.loads(entity["argv_json"])),
        input_container=entity.get("input_container") or None, input_blob=entity.get("input_blob") or None,
        input_path=entity.get("input_path") or None,
        params=tuple(tuple(p) for p in json.loads(entity.get("params_json") or "[]")),
        fingerprint=entity.get("fingerprint") or "",
    )


def pending_row(partition: str, task: TaskDef) -> dict[str, Any]:
    """A task's row before anything happened to it (written at submit, or created at claim time)."""
    return {
        "PartitionKey": partition, "RowKey": task.task_id, "state": "pending", "label": task.label,
        "argv_json": dumps(list(task.argv)), "input_container": task.input_container or "",
        "input_blob": task.input_blob or "", "input_path": task.input_path or "",
        "params_json": dumps([list(p) for p in task.params]), "attempt_count": 0, "attempts_json": "[]",
        "claim_owner": "", "claim_expires": 0.0, "deliveries": 0, "fingerprint": task.fingerprint,
    }


__all__ = ["BRIEF_COLUMNS", "ROWS_PER_PARTITION", "bucket_in", "bucket_of", "entity_to_result", "job_of",
           "job_rows_filter", "partition_key", "pending_row", "task_def_from_entity", "unclaimed_result"]
