"""Reading a job's results on the azure backend: every Batch job of its chain, newest first.

A task's result is the one of the newest run that has it (a re-run adds again every task that had
not succeeded, so older runs only contribute the tasks that succeeded there). An older run's task
that the job's last submission no longer has (a row edited away, a narrower glob) is not read: the
job is its last submission. Logs come from the
log container first (uploaded when each attempt ended, the same blob for every run), else from
the node while the task runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.azure.runs import RunChain
from batchyard.backends.azure.task_views import list_task_views
from batchyard.backends.azure.tasks import (
    JobFacts,
    batch_error,
    enum_text,
    error_code,
    required_patterns,
    task_result,
)
from batchyard.backends.base import TaskResult
from batchyard.backends.documents import JobDocuments
from batchyard.core.batch_semantics import log_blob_name, log_file_name, tail_offset, tail_text
from batchyard.core.errors import JobNotFoundError, TaskNotFoundError
from batchyard.core.final_step import is_final_or_barrier
from batchyard.storage.account import Storage

STDERR_TAILS_MAX = 200  # failed tasks whose stderr tail is fetched per listing (one or two calls each)
TASK_SELECT = ["id", "displayName", "state", "executionInfo", "nodeInfo"]


class ResultReader:
    """Task results and logs of a job, across the Batch jobs of its chain."""

    def __init__(self, client: Any, storage: Storage, documents: JobDocuments,
                 chain: Callable[[str], RunChain], job_state: Callable[[str], str | None]) -> None:
        self.client = client
        self.storage = storage
        self.documents = documents
        self._chain = chain
        self._job_state = job_state  # a Batch job's state ("" when it does not exist)

    def facts(self, job_id: str, batch_job_id: str) -> JobFacts:
        """What reading a task's result needs to know of its job (batchyard's and the Batch job it ran in)."""
        completed = self._job_state(batch_job_id) == "completed"
        try:
            job = self.documents.load_job(job_id)
        except JobNotFoundError:
            return JobFacts(job_completed=completed)
        resources = tuple(self.documents.resource_blob(job.id, rf.target) for rf in job.resource_files)
        return JobFacts(has_required_outputs=bool(required_patterns(job)), resource_names=resources,
                        job_completed=completed)

    def list_task_results(self, job_id: str, *, brief: bool = False) -> Iterator[TaskResult]:
        """Every task's result across the job's runs (``brief``: without the failed ones' stderr tails,
        each a blob read)."""
        seen: set[str] = set()
        tails = 0
        ids = self._chain(job_id).batch_job_ids()
        current = self._submitted(job_id) if len(ids) > 1 else None
        for index, batch_job_id in enumerate(ids):
            facts = self.facts(job_id, batch_job_id)
            try:
                for task in list_task_views(self.client, batch_job_id, select=TASK_SELECT):
                    key = task.id.lower()
                    if key in seen:
                        continue
                    seen.add(key)
                    if index and current and key not in current and not is_final_or_barrier(key):
                        continue  # an earlier run's task the last submission dropped: no longer the job's
                    tail = ""
                    failed = (enum_text(task.state) == "completed"
                              and enum_text(getattr(task.execution_info, "result", None)) != "success")
                    if failed and not brief and tails < STDERR_TAILS_MAX:
                        tails += 1
                        tail = self._stderr_tail(job_id, batch_job_id, task.id)
                    yield task_result(job_id, task, facts, stderr_tail=tail)
            except ResourceNotFoundError:
                if index == 0 and len(ids) == 1:
                    raise JobNotFoundError(f"job {job_id!r} not found on Azure Batch") from None
                continue  # an older run's Batch job deleted by hand: its results are gone
            except (JobNotFoundError, TaskNotFoundError):
                raise
            except Exception as exc:
                raise batch_error(exc, f"listing tasks of job {job_id!r}") from None

    def _submitted(self, job_id: str) -> frozenset[str]:
        """The task ids (without case) of the job's last submission; empty when it has no manifest."""
        return frozenset(task_id.lower() for task_id, _ in self.documents.load_manifest(job_id))

    def _stderr_tail(self, job_id: str, batch_job_id: str, task_id: str) -> str:
        container = self.storage.container(self.documents.log_container)
        blob = container.get_blob_client(log_blob_name(job_id, task_id, "stderr"))
        try:
            size = blob.get_blob_properties().size
            start = tail_offset(size)
            data = blob.download_blob(offset=start, length=size - start).readall() if size else b""
        except ResourceNotFoundError:
            try:  # not uploaded (yet): the node may still have it
                props = self.client.get_task_file_properties(batch_job_id, task_id, log_file_name("stderr"))
                size = int(props.content_length or 0)
                if not size:
                    return ""
                start = tail_offset(size)
                data = b"".join(self.client.download_task_file(batch_job_id, task_id, log_file_name("stderr"),
                                                               ocp_range=f"bytes={start}-{size - 1}"))
            except Exception:
                return ""
        return tail_text(data)

    def read_task_log(self, job_id: str, task_id: str, *, stream: str = "stdout") -> bytes:
        try:
            return self.storage.download_bytes(self.documents.log_container, log_blob_name(job_id, task_id, stream))
        except ResourceNotFoundError:
            pass
        job_found = False
        for batch_job_id in self._chain(job_id).batch_job_ids():
            try:  # the task is still running (or its upload failed): read it from the node
                return b"".join(self.client.download_task_file(batch_job_id, task_id, log_file_name(stream)))
            except ResourceNotFoundError as exc:
                code = error_code(exc)
                job_found = job_found or code != "JobNotFound"
                if code not in ("JobNotFound", "TaskNotFound"):  # the task exists; its file does not (yet)
                    raise TaskNotFoundError(f"task {task_id!r} of job {job_id!r} has no {stream} yet") from None
            except Exception as exc:
                raise batch_error(exc, f"reading {stream} of task {task_id!r}") from None
        if not job_found:
            raise JobNotFoundError(f"job {job_id!r} not found on Azure Batch")
        raise TaskNotFoundError(f"task {task_id!r} not found in job {job_id!r}")


__all__ = ["ResultReader"]
