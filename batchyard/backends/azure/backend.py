"""The azure backend: real Azure Batch (or the Batch API emulator) through ``azure-batch`` 15.x.

One Batch job per batchyard job (same id) on one pool; one Batch task per TaskDef, whose
input blob and resource files arrive as read-only SAS URLs and whose outputs (and
stdout/stderr) leave through create/write-only container SAS URLs. Records live in Batch
itself; the job documents (:mod:`batchyard.backends.documents`, as the local backend's) and
pool records go to the configured storage account, where this backend creates no queue and
no table. Storage must be configured (:mod:`batchyard.backends.azure.clients`). See docs/azure.md.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from batchyard.backends.azure.clients import is_loopback_url, make_client, make_storage
from batchyard.backends.azure.jobs import batch_task_counts, job_ids_like, job_views
from batchyard.backends.azure.pools import PoolManager, per_job_pool_id
from batchyard.backends.azure.preview import SubmitPreview, preview_submit
from batchyard.backends.azure.registries import ContainerSetup, container_setup
from batchyard.backends.azure.tasks import (
    JobFacts,
    TaskAdder,
    TaskUrls,
    batch_error,
    build_task,
    enum_text,
    error_code,
    required_patterns,
    sas_lifetime,
    task_result,
)
from batchyard.backends.base import Backend, JobView, PoolView, SubmitResult, TaskCounts, TaskResult, dumps
from batchyard.backends.documents import JobDocuments, fan_out
from batchyard.core.batch_semantics import log_blob_name, log_file_name, tail_offset, tail_text
from batchyard.core.config import Config
from batchyard.core.errors import BackendError, JobNotFoundError, TaskNotFoundError
from batchyard.core.job import Job, TaskDef, parse_duration

log = logging.getLogger(__name__)

STDERR_TAILS_MAX = 200  # failed tasks whose stderr tail is fetched per listing (one or two calls each)
CONTROL_CONCURRENCY = 8  # reactivations/deletions in flight
TASK_SELECT = ["id", "displayName", "state", "executionInfo", "nodeInfo"]
COUNTS_LAG_GRACE_S = 30.0  # Batch's task counts lag a few seconds behind adds


class AzureBackend(Backend):
    """Jobs on Azure Batch (or its emulator): the pool runs the tasks, batchyard only submits and reads."""

    name = "azure"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.storage = make_storage(config)  # refuses a missing or unreachable storage account first
        self.documents = JobDocuments(self.storage, config)
        self._client: BatchClient | None = None
        self._pools: PoolManager | None = None
        self._expected: dict[str, int] = {}
        self._short_since: dict[str, float] = {}  # wait: when counts first looked final but short
        self._watch: tuple[str, str] | None = None  # (job id, pool id) that wait() watches
        self._last_alive_check = 0.0
        self._job_state_cache: dict[str, tuple[float, str]] = {}

    @property
    def client(self) -> BatchClient:
        if self._client is None:
            self._client = make_client(self.config)
        return self._client

    @property
    def pools(self) -> PoolManager:
        if self._pools is None:
            self._pools = PoolManager(self.client, self.storage, self.config)
        return self._pools

    @classmethod
    def runs_tasks_here(cls, config: Config) -> bool:  # the Batch emulator: Azure Batch is never on loopback
        return bool(config.azure.batch_url) and is_loopback_url(config.azure.batch_url or "")

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise batch_error(exc, what) from None

    # --- submit ----------------------------------------------------------------------------------------
    def preflight(self) -> None:
        self.storage.preflight()
        self._call(f"Batch preflight (account {self.config.azure.batch_account or '?'} at "
                   f"{self.config.azure.batch_url})",
                   lambda: next(iter(self.client.list_pools(max_results=1, select=["id"])), None))

    def fan_out(self, job: Job) -> list[TaskDef]:
        """The job's tasks, exactly as the local backend fans them out."""
        return fan_out(self.storage, job)

    def _get_job(self, job_id: str) -> bm.BatchJob | None:
        try:
            return self.client.get_job(job_id)
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise batch_error(exc, f"reading job {job_id!r}") from None

    def _existing_tasks(self, job_id: str) -> dict[str, bm.BatchTask]:
        tasks = self._call(f"listing tasks of job {job_id!r}", lambda: list(
            self.client.list_tasks(job_id, select=["id", "state", "executionInfo"])))
        return {t.id.lower(): t for t in tasks}

    def submit(self, job: Job) -> SubmitResult:
        self.refuse_other_spelling(job.id)  # Batch would take `myjob` for `MyJob`; its documents would not
        required = required_patterns(job)
        # Registries first: a missing password must fail before any container, pool or job exists.
        containers = container_setup(job.container_image, self.config) if job.container_image else None
        self.documents.ensure()
        self.documents.upload_resources(job)
        for out in job.outputs:
            self.storage.ensure_container(out.container)
        tasks = self.fan_out(job)
        batch_job = self._get_job(job.id)
        existing = self._existing_tasks(job.id) if batch_job is not None else {}
        to_add: list[TaskDef] = []
        to_reactivate: list[str] = []
        done = running = 0
        for task in tasks:
            prior = existing.get(task.task_id.lower())
            if prior is None:
                to_add.append(task)
            elif enum_text(prior.state) != "completed":
                running += 1
            elif prior.execution_info is not None and enum_text(prior.execution_info.result) == "success":
                done += 1
            else:
                to_reactivate.append(prior.id)
        work = bool(to_add or to_reactivate)
        if batch_job is not None and work and enum_text(batch_job.state) in ("completed", "terminating", "deleting"):
            state = enum_text(batch_job.state)
            raise BackendError(f"job {job.id} is {state} on Azure Batch, so its {len(to_add) + len(to_reactivate)} "
                               f"missing or failed task(s) cannot run; `batchyard delete {job.id}` first or use "
                               "a new id")
        spec_hash = hashlib.sha256(dumps(job.model_dump(mode="json")).encode()).hexdigest()[:16]
        self.documents.save_job(job, spec_hash=spec_hash, backend=self.name)
        self._expected[job.id] = len(tasks)
        pool_id, created = (None, False)
        if work:
            pool_id, created = self.pools.resolve(job.id, containers=containers)
            if batch_job is None:
                self._create_job(job, pool_id)
            self._reactivate(job, to_reactivate, to_add, {t.task_id.lower(): t for t in tasks})
            self._add(job, tasks=to_add, required=required, containers=containers)
        elif batch_job is not None and batch_job.pool_info is not None:
            pool_id = batch_job.pool_info.pool_id
        if pool_id:
            self._watch = (job.id, pool_id)
        if created:  # tasks are queued already: nodes come up while we wait here
            self.pools.wait_steady(pool_id, timeout_s=parse_duration(self.config.azure.steady_timeout),  # type: ignore[arg-type]
                                   poll_s=self.config.azure.poll_interval)
        return SubmitResult(job_id=job.id, total=len(tasks), enqueued=len(to_add) + len(to_reactivate),
                            already_succeeded=done, already_running=running, rerun_failed=len(to_reactivate))

    def _create_job(self, job: Job, pool_id: str) -> None:
        options = bm.BatchJobCreateOptions(
            id=job.id, pool_info=bm.BatchPoolInfo(pool_id=pool_id), uses_task_dependencies=False,
            # noaction: the job stays open after its tasks end, so a re-run can reactivate or add tasks.
            all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.NO_ACTION,
            common_environment_settings=[bm.EnvironmentSetting(name=k, value=v)
                                         for k, v in job.environment.items()] or None,
            metadata=[bm.BatchMetadataItem(name="created-by", value="batchyard")],
        )
        try:
            self.client.create_job(options)
        except HttpResponseError as exc:
            if error_code(exc) != "JobExists":  # a concurrent submit won the race: same job, reuse it
                raise batch_error(exc, f"creating job {job.id!r} on pool {pool_id!r}") from None

    def _reactivate(self, job: Job, task_ids: list[str], to_add: list[TaskDef], by_id: dict[str, TaskDef]) -> None:
        """Reactivate failed tasks; one Batch refuses (e.g. retention expired) is deleted and re-added."""
        if not task_ids:
            return

        def one(task_id: str) -> str | None:
            try:
                self.client.reactivate_task(job.id, task_id)
                return None
            except HttpResponseError as exc:
                log.info("task %s cannot be reactivated (%s); deleting and adding it again",
                         task_id, error_code(exc) or exc.status_code)
            try:
                self.client.delete_task(job.id, task_id)
            except ResourceNotFoundError:
                pass
            except Exception as exc:
                raise batch_error(exc, f"deleting failed task {task_id!r} to re-add it") from None
            return task_id

        with ThreadPoolExecutor(CONTROL_CONCURRENCY) as pool:
            for readd in pool.map(one, task_ids):
                if readd is not None and readd.lower() in by_id:
                    to_add.append(by_id[readd.lower()])

    def _urls(self, job: Job, lifetime: timedelta) -> TaskUrls:
        resources = tuple(
            (rf.target, self.storage.blob_sas_url(self.documents.system_container,
                                                  self.documents.resource_blob(job.id, rf.target),
                                                  expiry=lifetime, permission="r"))
            for rf in job.resource_files)
        outputs = {out.container: self.storage.container_sas_url(out.container, expiry=lifetime, permission="cw")
                   for out in job.outputs}
        logs = self.storage.container_sas_url(self.documents.log_container, expiry=lifetime, permission="cw")
        return TaskUrls(resource_files=resources, output_containers=outputs, log_container_url=logs)

    def _add(self, job: Job, *, tasks: list[TaskDef], required: list[str],
             containers: ContainerSetup | None = None) -> None:
        if not tasks:
            return
        lifetime, warnings = sas_lifetime(job, margin=timedelta(seconds=parse_duration(self.config.azure.sas_margin)))
        for warning in warnings:
            log.warning("%s", warning)
        urls = self._urls(job, lifetime)
        options = []
        for task in tasks:
            input_url = None
            if task.input_blob is not None and task.input_container is not None:
                input_url = self.storage.blob_sas_url(task.input_container, task.input_blob, expiry=lifetime,
                                                      permission="r")
            options.append(build_task(job, task, urls=urls, input_url=input_url, required=required,
                                      registry=containers.task_registry if containers else None))
        report = TaskAdder(self.client, job.id).add(options)
        if report.existed:
            log.info("job %s: %d task(s) were already on Azure Batch (an earlier submit added them)",
                     job.id, report.existed)

    # --- waiting ---------------------------------------------------------------------------------------
    def task_counts(self, job_id: str) -> TaskCounts:
        return batch_task_counts(self.client, job_id, lambda: self._job_state(job_id))

    def _job_state(self, job_id: str, *, max_age_s: float = 5.0) -> str | None:
        cached = self._job_state_cache.get(job_id)
        if cached and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        job = self._get_job(job_id)
        state = enum_text(job.state) if job is not None else None
        self._job_state_cache[job_id] = (time.monotonic(), state or "")
        return state

    def wait(self, job_id: str, *, on_progress: Any = None, poll_interval: float | None = None,
             timeout: float | None = None) -> TaskCounts:
        """Poll task counts until every task is final; then, if all succeeded, finish the job."""
        self._short_since.pop(job_id, None)
        return super().wait(job_id, on_progress=on_progress, timeout=timeout,
                            poll_interval=poll_interval or self.config.azure.poll_interval)

    def _settled(self, job_id: str, counts: TaskCounts) -> bool:
        # Batch's counts lag behind adds by a few seconds, so "finished" only counts once the total
        # reaches what this process submitted (or after a grace period).
        if not counts.finished:
            return False
        if counts.total >= self._expected.get(job_id, 0):
            return True
        short_since = self._short_since.setdefault(job_id, time.monotonic())
        return time.monotonic() - short_since > COUNTS_LAG_GRACE_S

    def _on_settled(self, job_id: str, counts: TaskCounts) -> None:
        self._short_since.pop(job_id, None)
        if counts.total and not (counts.failed or counts.cancelled):
            self.finish(job_id)

    def finish(self, job_id: str) -> None:
        """Every task succeeded: terminate the job (frees the active-job quota), drop its per-job pool."""
        try:
            self._terminate(job_id, "AllTasksSucceeded")
        except HttpResponseError as exc:
            if error_code(exc) not in ("JobCompleted", "JobBeingTerminated"):
                raise batch_error(exc, f"terminating job {job_id!r}") from None
        self._job_state_cache.pop(job_id, None)
        self._delete_per_job_pool(job_id)

    def _terminate(self, job_id: str, reason: str) -> None:
        # azure-batch 15.1.0 sends no Content-Type without options (and the serializer fails on it),
        # so options are always given; the class is not exported from azure.batch.models.
        from azure.batch.models._models import BatchJobTerminateOptions

        poller = self.client.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason=reason),
                                                 polling_interval=1)
        poller.wait(30)

    def _delete_per_job_pool(self, job_id: str) -> None:
        pool_id = per_job_pool_id(job_id)
        record = self.pools.get_record(pool_id)
        if record is None or record.job_id != job_id or self.config.azure.keep_auto_pool:
            return
        self.pools.delete(pool_id, wait_s=30)
        log.info("deleted per-job pool %s", pool_id)

    def _check_alive(self) -> None:
        """Surface a pool that cannot get nodes (quota, capacity) instead of waiting forever."""
        if self._watch is None or time.monotonic() - self._last_alive_check < 10:
            return
        self._last_alive_check = time.monotonic()
        pool = self.pools.get(self._watch[1])
        if pool is None:
            raise BackendError(f"pool {self._watch[1]!r} of job {self._watch[0]!r} no longer exists on Azure Batch")
        problem = self.pools.resize_errors(pool)
        if problem:
            raise BackendError(problem)

    # --- queries ---------------------------------------------------------------------------------------
    def _facts(self, job_id: str) -> JobFacts:
        try:
            job = self.job(job_id)
        except JobNotFoundError:
            return JobFacts(job_completed=self._job_state(job_id, max_age_s=0) == "completed")
        resources = tuple(self.documents.resource_blob(job.id, rf.target) for rf in job.resource_files)
        return JobFacts(has_required_outputs=bool(required_patterns(job)), resource_names=resources,
                        job_completed=self._job_state(job_id, max_age_s=0) == "completed")

    def list_task_results(self, job_id: str) -> Iterator[TaskResult]:
        facts = self._facts(job_id)
        try:
            tasks = iter(self.client.list_tasks(job_id, select=TASK_SELECT))
            tails = 0
            for task in tasks:
                tail = ""
                failed = (enum_text(task.state) == "completed"
                          and enum_text(getattr(task.execution_info, "result", None)) != "success")
                if failed and tails < STDERR_TAILS_MAX:
                    tails += 1
                    tail = self._stderr_tail(job_id, task.id)
                yield task_result(job_id, task, facts, stderr_tail=tail)
        except (JobNotFoundError, TaskNotFoundError):
            raise
        except Exception as exc:
            raise batch_error(exc, f"listing tasks of job {job_id!r}") from None

    def _stderr_tail(self, job_id: str, task_id: str) -> str:
        container = self.storage.container(self.documents.log_container)
        blob = container.get_blob_client(log_blob_name(job_id, task_id, "stderr"))
        try:
            size = blob.get_blob_properties().size
            start = tail_offset(size)
            data = blob.download_blob(offset=start, length=size - start).readall() if size else b""
        except ResourceNotFoundError:
            try:  # not uploaded (yet): the node may still have it
                props = self.client.get_task_file_properties(job_id, task_id, log_file_name("stderr"))
                size = int(props.content_length or 0)
                if not size:
                    return ""
                start = tail_offset(size)
                data = b"".join(self.client.download_task_file(job_id, task_id, log_file_name("stderr"),
                                                               ocp_range=f"bytes={start}-{size - 1}"))
            except Exception:
                return ""
        return tail_text(data)

    def read_task_log(self, job_id: str, task_id: str, *, stream: str = "stdout") -> bytes:
        try:
            return self.storage.download_bytes(self.documents.log_container, log_blob_name(job_id, task_id, stream))
        except ResourceNotFoundError:
            pass
        try:  # the task is still running (or its upload failed): read it from the node
            return b"".join(self.client.download_task_file(job_id, task_id, log_file_name(stream)))
        except ResourceNotFoundError as exc:
            code = error_code(exc)
            if code == "JobNotFound":
                raise JobNotFoundError(f"job {job_id!r} not found on Azure Batch") from None
            if code == "TaskNotFound":
                raise TaskNotFoundError(f"task {task_id!r} not found in job {job_id!r}") from None
            raise TaskNotFoundError(f"task {task_id!r} of job {job_id!r} has no {stream} yet") from None
        except Exception as exc:
            raise batch_error(exc, f"reading {stream} of task {task_id!r}") from None

    def job(self, job_id: str) -> Job:
        return self.documents.load_job(job_id)

    def list_jobs(self) -> list[JobView]:
        return job_views(self.client, self.documents, self.name)

    def job_ids_like(self, job_id: str) -> list[str]:
        return job_ids_like(self.client, self.documents, job_id, self.name)

    # --- control ---------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        try:
            self._terminate(job_id, "UserTerminate")
        except ResourceNotFoundError:
            raise JobNotFoundError(f"job {job_id!r} not found on Azure Batch") from None
        except HttpResponseError as exc:
            if error_code(exc) not in ("JobCompleted", "JobBeingTerminated"):
                raise batch_error(exc, f"cancelling job {job_id!r}") from None
        self._job_state_cache.pop(job_id, None)

    def delete(self, job_id: str) -> None:
        found = False
        try:
            self.client.begin_delete_job(job_id, polling_interval=1).wait(60)
            found = True
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            if error_code(exc) != "JobBeingDeleted":
                raise batch_error(exc, f"deleting job {job_id!r}") from None
            found = True
        record = self.pools.get_record(per_job_pool_id(job_id))
        if record is not None and record.job_id == job_id:
            self.pools.delete(record.pool_id)
        if self.documents.has_job(job_id):
            found = True
            self.documents.delete_documents(job_id)
        if not found:
            raise JobNotFoundError(f"job {job_id!r} not found on Azure Batch nor on storage account "
                                   f"{self.storage.account.account_name!r}")
        self._expected.pop(job_id, None)

    # --- pools ----------------------------------------------------------------------------------------
    def created_pools(self) -> list[PoolView]:
        return self.pools.views()

    def delete_created_pool(self, pool_id: str) -> bool:
        return self.pools.delete_created(pool_id)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._pools = None

    @staticmethod
    def preview_submit(job: Job, *, sas_margin: timedelta, account_url: str, system_container: str,
                       log_container: str) -> SubmitPreview:
        """What submit would send for ``job``, sending nothing: the SAS lifetime and its warnings, the
        required output patterns, each task's exact request size (:class:`~.preview.SubmitPreview`).
        ``batchyard plan`` reaches it through the backend registry, needing no account or client."""
        return preview_submit(job, sas_margin=sas_margin, account_url=account_url,
                              system_container=system_container, log_container=log_container)


__all__ = ["AzureBackend", "make_client"]
