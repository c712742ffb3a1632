"""The local backend's side of ``batchyard debug``: one task, built the way its worker builds it.

The truth of a task that ran is its row (argv, input, table values, the node it ran on) with
the job document (environment, resource files, image, limits): exactly what a worker turns into
its :class:`~batchyard.node.taskspec.TaskSpec` (:func:`~batchyard.backends.local.worker.build_local_spec`).
A task no worker has claimed yet has no row; one of a job over input blobs is fanned out again
from its manifest entry (the label is its input blob, and the fan-out is deterministic), while
one of a CSV-table job is refused: its values are in the queue and in the table on the
submitting machine only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from batchyard.backends.base import TaskReplay
from batchyard.backends.local.rows import entity_to_result, pending_row
from batchyard.backends.local.store import JobStore
from batchyard.backends.local.worker import build_local_spec
from batchyard.core.errors import TaskNotFoundError
from batchyard.core.job import Job, TaskDef, tasks_from_blob_names
from batchyard.node.taskspec import NodeContext

# What a local worker's node reports about itself (batchyard.backends.local.worker.Worker).
LOCAL_POOL, LOCAL_ACCOUNT, LOCAL_ACCOUNT_URL = "local", "local", "local://"
UNCLAIMED_NODE = "local-debug"  # the node id of a task that never ran: there was none


def replay_task(store: JobStore, job: Job, task_id: str, *, node_root: Path) -> TaskReplay:
    """``task_id`` of ``job`` (whose job row exists) as its worker ran it, or would run it."""
    entity = store.find_task(job.id, task_id)
    if entity is not None:
        result = entity_to_result(entity)
        source = "its task row and the job document"
    else:
        entity = pending_row(job.id, _unclaimed_definition(store, job, task_id))
        result = None
        source = "the job document and its manifest (no worker has claimed the task yet)"
    spec = build_local_spec(job, entity, store, keep_task_dir=True)
    node = NodeContext(root=node_root, node_id=str(entity.get("node_id") or UNCLAIMED_NODE), pool_id=LOCAL_POOL,
                       account_name=LOCAL_ACCOUNT, account_url=LOCAL_ACCOUNT_URL)
    return TaskReplay(spec=replace(spec, output_files=(), max_task_retry_count=0), node=node, result=result,
                      source=source)


def _unclaimed_definition(store: JobStore, job: Job, task_id: str) -> TaskDef:
    label = next((label for listed, label in store.load_manifest(job.id) if listed == task_id), None)
    if label is None:
        raise TaskNotFoundError(f"task {task_id!r} not found in job {job.id!r} (`batchyard status {job.id}` "
                                "lists its tasks)")
    if job.inputs is None:
        raise TaskNotFoundError(f"task {task_id!r} of job {job.id!r} has not been claimed by a worker yet, and its "
                                "values are a row of the job's CSV table, which stays on the submitting machine: "
                                "replay it once it has run")
    found = [task for task in tasks_from_blob_names(job, [label]) if task.task_id == task_id]
    if not found:  # the job was submitted again with other inputs settings since the manifest was written
        raise TaskNotFoundError(f"task {task_id!r} of job {job.id!r} (input {label!r}) no longer follows from "
                                "the job document; replay it once it has run")
    return found[0]
