"""The azure backend's jobs: counts that tell cancelled from failed, ``batchyard jobs``, ids without case.

Batch's task counts have no "cancelled": a task its terminated job stopped counts as failed, and
one it never started stays active. :func:`batch_task_counts` moves both to ``cancelled`` once the
job is completed or terminating (one task listing then, never while the job is active). The jobs
are the ones with a job document of this backend in the system container, plus those Batch knows
as created by batchyard; Batch's own state, counts and times where Batch can be reached.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.azure.final import counts_without_final
from batchyard.backends.azure.runs import RunChain, owned_by, owner_of
from batchyard.backends.azure.task_views import list_task_views
from batchyard.backends.azure.tasks import JobFacts, batch_error, enum_text, failure_category
from batchyard.backends.base import JobView, TaskCounts
from batchyard.backends.documents import JobDocuments
from batchyard.core.errors import JobNotFoundError

log = logging.getLogger(__name__)

ENDED = ("completed", "terminating")  # a job in these states starts no task again
CANCEL_REASON = "UserTerminate"  # the reason `batchyard cancel` terminates a job with
LIST_CONCURRENCY = 8
JOB_SELECT = ["id", "state", "creationTime", "lastModified", "stateTransitionTime", "executionInfo", "metadata",
              "usesTaskDependencies"]


def ended_by_user(client: Any, job_id: str) -> int:
    """How many of the job's completed tasks ended by a user's request (Batch's TaskEnded, not a failure)."""
    count = 0
    for task in list_task_views(client, job_id, filter="state eq 'completed'", select=["id", "executionInfo"]):
        info = task.execution_info
        if info is not None and enum_text(info.result) == "failure" and \
                failure_category(info.failure_info, info.exit_code, JobFacts()) == "cancelled":
            count += 1
    return count


def batch_task_counts(client: Any, job_id: str, job_state: Callable[[], str | None]) -> TaskCounts:
    """The job's counts from Batch's; ``job_state`` is asked only when a task failed or waits."""
    try:
        c = client.get_job_task_counts(job_id).task_counts
        state = job_state() if c.failed or (c.active and not c.running) else None
        stopped = ended_by_user(client, job_id) if state in ENDED and c.failed else 0
    except Exception as exc:
        raise batch_error(exc, f"task counts of job {job_id!r}") from None
    never_started = c.active if state == "completed" and not c.running else 0  # a completed job starts none
    return TaskCounts(pending=c.active - never_started, running=c.running, succeeded=c.succeeded,
                      failed=c.failed - stopped, cancelled=stopped + never_started)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") if value else None


def _documents(documents: JobDocuments) -> dict[str, tuple[str, datetime | None, datetime | None]]:
    """The job documents in the system container, by lowercase id: (id, created, last modified)."""
    found: dict[str, tuple[str, datetime | None, datetime | None]] = {}
    try:
        for blob in documents.storage.container(documents.system_container).list_blobs(name_starts_with="jobs/"):
            parts = blob.name.split("/")
            if len(parts) == 3 and parts[2] == "job.json":
                found[parts[1].lower()] = (parts[1], blob.creation_time, blob.last_modified)
    except ResourceNotFoundError:  # nothing was ever submitted with this configuration
        pass
    return found


def _ours(documents: JobDocuments, job_id: str, backend: str) -> bool:
    """Whether the job's document says it ran on ``backend`` (the local backend may share the container)."""
    try:
        return documents.load_job_doc(job_id).get("backend", backend) == backend
    except Exception:  # unreadable or gone meanwhile: listed, its state says the rest
        return True


def job_ids_like(client: Any, documents: JobDocuments, job_id: str, backend: str) -> list[str]:
    """The ids of Batch jobs and job documents equal to ``job_id`` without case (Batch finds any spelling)."""
    found: set[str] = set()
    try:
        batch_job = client.get_job(job_id, select=["id", "metadata"])
        if owned_by(batch_job.metadata, batch_job.id):  # not a later run of another job (<id>-r2)
            found.add(batch_job.id)
    except ResourceNotFoundError:
        pass
    except Exception as exc:
        raise batch_error(exc, f"looking up job {job_id!r}") from None
    document = _documents(documents).get(job_id.lower())
    if document is not None and _ours(documents, document[0], backend):
        found.add(document[0])
    return sorted(found)


RUN_SUFFIX = re.compile(r"-r[0-9]+$", re.IGNORECASE)  # the end of a later run's Batch job id (runs.run_batch_job_id)


def refuse_a_runs_id(client: Any, documents: JobDocuments, job_id: str) -> str:
    """``job_id``; raises when it is no job of its own but the Batch job of a later run of another job (the
    user read it in the portal): its job shows it with the runs before it, which it alone would not."""
    if not RUN_SUFFIX.search(job_id) or documents.has_job(job_id):
        return job_id
    try:
        owner = owner_of(client.get_job(job_id, select=["id", "metadata"]).metadata)
    except ResourceNotFoundError:
        return job_id
    except Exception as exc:
        raise batch_error(exc, f"looking up job {job_id!r}") from None
    if owner is not None and owner.lower() != job_id.lower():
        raise JobNotFoundError(f"{job_id!r} is not a batchyard job: it is the Batch job of a later run of job "
                               f"{owner!r}, which shows it with the runs before it (`batchyard status {owner}`)")
    return job_id


def _state(job: Any) -> str:
    state = enum_text(job.state)
    reason = getattr(job.execution_info, "termination_reason", None) if job.execution_info else None
    return "cancelled" if state in ENDED and reason == CANCEL_REASON else state


def job_views(client: Any, documents: JobDocuments, backend: str, chain_of: Callable[[str], RunChain]) -> list[JobView]:
    """Every job of this backend: its documents, and Batch's view of each where Batch can be reached:
    its current run's state, and counts with what earlier runs carried (``chain_of``). A later run's
    Batch job (``<id>-r2``) is part of its job, not a job of its own."""
    docs = _documents(documents)
    with ThreadPoolExecutor(LIST_CONCURRENCY) as pool:
        keep = list(pool.map(lambda item: _ours(documents, item[0], backend), docs.values()))
    docs = {key: item for (key, item), ours in zip(list(docs.items()), keep, strict=True) if ours}
    try:
        batch = {job.id.lower(): job for job in client.list_jobs(select=JOB_SELECT)
                 if job.id.lower() in docs or any(m.name == "created-by" and m.value == "batchyard"
                                                  for m in job.metadata or [])}
    except Exception as exc:  # listed from the documents alone, each state "unknown"
        log.warning("%s", batch_error(exc, "listing jobs on Azure Batch"))
        batch = None

    def view(key: str) -> JobView:
        document = docs.get(key)
        run = chain_of(document[0]).current if document is not None else None
        job = batch.get((run.batch_job_id if run is not None else key).lower()) if batch is not None else None
        if job is None:
            assert document is not None
            job_id, created, modified = document
            return JobView(job_id, backend, "unknown" if batch is None else "missing", None, _iso(created),
                           _iso(modified))
        state = _state(job)
        try:
            counts: TaskCounts | None = batch_task_counts(client, job.id, lambda: enum_text(job.state))
            if job.uses_task_dependencies:  # only a job with a final step: its barriers and final task apart
                counts = counts_without_final(client, job.id, counts)
            if counts is not None and run is not None:  # tasks that succeeded in earlier runs
                counts = replace(counts, succeeded=counts.succeeded + run.carried)
        except Exception as exc:
            log.warning("%s", exc)
            counts = None
        updated = max(filter(None, (job.last_modified, job.state_transition_time)), default=None)
        first = batch.get(key) if batch is not None else None  # the first run's: when the job was made
        created = first.creation_time if first is not None else job.creation_time
        return JobView(document[0] if document else job.id, backend, state, counts, _iso(created), _iso(updated))

    # A Batch job batchyard made for a later run of another job is shown as that job's.
    keys = set(docs) | {key for key, job in (batch or {}).items() if owned_by(job.metadata, job.id)}
    with ThreadPoolExecutor(LIST_CONCURRENCY) as pool:
        views = list(pool.map(view, sorted(keys)))
    return sorted(views, key=lambda v: (v.created_at or "", v.job_id), reverse=True)
