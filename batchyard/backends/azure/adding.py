"""Writing a run to Batch: its job, and its tasks with SAS URLs issued for this submit.

Every task a submit adds gets URLs signed now, valid for ``sas_lifetime`` from now: a re-run adds
its tasks again (deleting a failed one first) rather than reactivating them, because a reactivated
task keeps the URLs it was first added with, which may have expired.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from batchyard.backends.azure.adder import TaskAdder
from batchyard.backends.azure.final import add_final_step, satisfies_on_any_end
from batchyard.backends.azure.registries import ContainerSetup
from batchyard.backends.azure.reruns import Placement
from batchyard.backends.azure.runs import OWNER_KEY, RunChain, RunRecords, owned_by, run_batch_job_id
from batchyard.backends.azure.task_bodies import TaskBodies
from batchyard.backends.azure.tasks import TaskUrls, batch_error, error_code, sas_lifetime
from batchyard.backends.documents import JobDocuments
from batchyard.backends.final_step import final_as_job
from batchyard.core.config import Config
from batchyard.core.errors import BackendError
from batchyard.core.job import Job, TaskDef, parse_duration
from batchyard.storage.account import Storage

log = logging.getLogger(__name__)

CONTROL_CONCURRENCY = 8  # task deletions in flight
RUN_ID_TRIES = 20  # run numbers tried when other jobs hold a run's Batch job id


class RunIdTaken(BackendError):
    """The Batch job id of a run is held by another job."""


class JobWriter:
    """Creates a run's Batch job and adds its tasks."""

    def __init__(self, client: Any, storage: Storage, documents: JobDocuments, config: Config) -> None:
        self.client = client
        self.storage = storage
        self.documents = documents
        self.config = config

    def _owned(self, batch_job_id: str, job_id: str) -> bool:
        """Whether an existing Batch job is a run of ``job_id`` (its metadata names no other job)."""
        try:
            job = self.client.get_job(batch_job_id, select=["id", "metadata"])
        except Exception as exc:
            raise batch_error(exc, f"reading job {batch_job_id!r}") from None
        return owned_by(job.metadata, job_id)

    def create_job(self, job: Job, batch_job_id: str, pool_id: str) -> None:
        """Create the run's Batch job; :class:`RunIdTaken` if another job holds its id."""
        options = bm.BatchJobCreateOptions(
            id=batch_job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id), uses_task_dependencies=job.final is not None,
            # noaction: the job stays open while a submit may still add tasks; batchyard terminates it
            # at the end of the run (ending.py).
            all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.NO_ACTION,
            common_environment_settings=[bm.EnvironmentSetting(name=k, value=v)
                                         for k, v in job.environment.items()] or None,
            metadata=[bm.BatchMetadataItem(name="created-by", value="batchyard"),
                      bm.BatchMetadataItem(name=OWNER_KEY, value=job.id)],
        )
        try:
            self.client.create_job(options)
        except HttpResponseError as exc:
            if error_code(exc) != "JobExists":
                raise batch_error(exc, f"creating job {batch_job_id!r} on pool {pool_id!r}") from None
            if batch_job_id.lower() != job.id.lower() and not self._owned(batch_job_id, job.id):
                raise RunIdTaken(batch_job_id) from None
            # else a concurrent submit of the same job won the race: same job, reuse it

    def open_and_add(self, job: Job, chain: RunChain, runs: RunRecords, *, batch_job: bm.BatchJob | None,
                     is_open: bool, pool_id: str, placed: Placement, required: list[str],
                     containers: ContainerSetup | None) -> None:
        """Open a run if the current one ended, then (re-)add the tasks with fresh URLs."""
        if not is_open:
            if batch_job is not None and not chain.runs:  # a job submitted before runs were recorded
                chain.update_current()
            if batch_job is not None or not chain.runs:  # a new run (the first one has the job's id)
                chain.opened(carried=placed.carried, pool_id=pool_id)
            else:  # recorded, but its Batch job is gone (deleted by hand, or a crash before creating it)
                chain.update_current(carried=placed.carried, pool_id=pool_id)
            runs.save(chain)
            self._create_run(job, chain, runs, pool_id)
        elif not chain.runs or chain.current.carried != placed.carried:
            # Recorded now (a job submitted before runs were recorded), or a task carried from an
            # earlier run re-runs in this one, which counts it from now on.
            chain.update_current(pool_id=chain.current.pool_id or pool_id, carried=placed.carried)
            runs.save(chain)
        self.delete_tasks(chain.current.batch_job_id, [t.task_id for t in placed.readd])
        self.add(job, chain.current.batch_job_id, tasks=placed.add + placed.readd, required=required,
                 containers=containers)

    def _create_run(self, job: Job, chain: RunChain, runs: RunRecords, pool_id: str) -> None:
        """Create the chain's new run; where another job holds its Batch job id (a user may name a
        job ``<id>-r2``), the next number's, recorded before each try."""
        for _ in range(RUN_ID_TRIES):
            try:
                self.create_job(job, chain.current.batch_job_id, pool_id)
                return
            except RunIdTaken as taken:
                log.info("job %s: Batch job %s is another job's; its run takes the next number", job.id, taken)
                number = chain.current.number + 1
                chain.update_current(number=number, batch_job_id=run_batch_job_id(job.id, number))
                runs.save(chain)
        chain.runs.pop()  # never left recorded under an id another job holds
        runs.save(chain)
        raise BackendError(f"job {job.id}: the Batch job ids of its next {RUN_ID_TRIES} runs are all taken by other "
                           "jobs; delete those Batch jobs or use a new job id")

    def delete_tasks(self, batch_job_id: str, task_ids: list[str]) -> None:
        """Delete failed tasks so they can be added again: reactivation would keep their expired SAS URLs."""
        def one(task_id: str) -> None:
            try:
                self.client.delete_task(batch_job_id, task_id)
            except ResourceNotFoundError:
                pass
            except Exception as exc:
                raise batch_error(exc, f"deleting failed task {task_id!r} to add it again") from None

        with ThreadPoolExecutor(CONTROL_CONCURRENCY) as pool:
            list(pool.map(one, task_ids))

    def urls(self, job: Job, lifetime: timedelta) -> TaskUrls:
        resources = tuple(
            (rf.target, self.storage.blob_sas_url(self.documents.system_container,
                                                  self.documents.resource_blob(job.id, rf.target),
                                                  expiry=lifetime, permission="r"))
            for rf in job.resource_files)
        outputs = {out.container: self.storage.container_sas_url(out.container, expiry=lifetime, permission="cw")
                   for out in job.outputs}
        logs = self.storage.container_sas_url(self.documents.log_container, expiry=lifetime, permission="cw")
        return TaskUrls(resource_files=resources, output_containers=outputs, log_container_url=logs)

    def add(self, job: Job, batch_job_id: str, *, tasks: list[TaskDef], required: list[str],
             containers: ContainerSetup | None = None) -> None:
        if not tasks:
            return
        lifetime, warnings = sas_lifetime(job, margin=timedelta(seconds=parse_duration(self.config.azure.sas_margin)))
        for warning in warnings:
            log.warning("%s", warning)
        bodies = TaskBodies(job, urls=self.urls(job, lifetime), required=required,
                            registry=containers.task_registry if containers else None)
        satisfy = satisfies_on_any_end(job)  # a per-file failure releases the final step too

        def options() -> Iterator[dict[str, Any]]:
            """Each task's body, built as the adder takes it (a few requests ahead, never all at once)."""
            for task in tasks:
                input_url = None
                if task.input_blob is not None and task.input_container is not None:
                    input_url = self.storage.blob_sas_url(task.input_container, task.input_blob, expiry=lifetime,
                                                          permission="r")
                body = bodies.body(task, input_url=input_url)
                yield {**body, "exitConditions": satisfy} if satisfy else body

        report = TaskAdder(self.client, batch_job_id).add(options())
        if report.existed:
            log.info("job %s: %d task(s) were already on Azure Batch (an earlier submit added them)",
                     job.id, report.existed)

    def add_final(self, job: Job, batch_job_id: str, *, per_file_ids: list[str], replaced: list[str],
                  containers: ContainerSetup | None = None) -> None:
        """The final step and its barriers, after deleting those of an earlier submit (``replaced``)."""
        self.delete_tasks(batch_job_id, replaced)
        lifetime, _ = sas_lifetime(job, margin=timedelta(seconds=parse_duration(self.config.azure.sas_margin)))
        add_final_step(self.client, self.documents, job, batch_job_id, per_file_ids,
                       urls=self.urls(final_as_job(job), lifetime), lifetime=lifetime,
                       registry=containers.task_registry if containers else None)


__all__ = ["JobWriter"]
