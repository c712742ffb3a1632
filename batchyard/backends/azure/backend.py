"""The azure backend: real Azure Batch (or the Batch API emulator) through ``azure-batch`` 15.x.

One Batch job per run of a batchyard job (:mod:`batchyard.backends.azure.runs`: the first has the
job's id; a re-run after a run ended opens ``<job id>-r<N>``) on one pool; one Batch task per
TaskDef, whose input blob and resource files arrive as read-only SAS URLs and whose outputs (and
stdout/stderr) leave through create/write-only container SAS URLs, issued afresh for every task a
submit adds. Records live in Batch itself; the job documents (:mod:`batchyard.backends.documents`)
and pool records go to the configured storage account, where this backend creates no queue and
no table. Every end of a run terminates the Batch job and releases the per-job pool
(:mod:`batchyard.backends.azure.ending`). See docs/azure.md.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.azure.adding import JobWriter
from batchyard.backends.azure.clients import is_loopback_url, make_client, make_storage
from batchyard.backends.azure.ending import RunEnds, delete_job, fate_text
from batchyard.backends.azure.final import counts_without_final, final_dependencies, final_settled, final_step_view
from batchyard.backends.azure.jobs import batch_task_counts, job_ids_like, job_views, refuse_a_runs_id
from batchyard.backends.azure.nodes import NodeWatch
from batchyard.backends.azure.pools import PoolManager
from batchyard.backends.azure.preflight import JobChecks, auth_finding
from batchyard.backends.azure.preview import SubmitPreview, preview_submit
from batchyard.backends.azure.registries import container_setup
from batchyard.backends.azure.replay import replay_task
from batchyard.backends.azure.reruns import ChainRecords, chain_records, place
from batchyard.backends.azure.results import ResultReader
from batchyard.backends.azure.runs import RunChain, RunRecords, owned_by
from batchyard.backends.azure.tasks import batch_error, enum_text, required_patterns, task_result
from batchyard.backends.base import (
    Backend,
    FinalStepView,
    JobView,
    PoolSummary,
    PoolView,
    SubmitResult,
    TaskCounts,
    TaskReplay,
    TaskResult,
    dumps,
)
from batchyard.backends.documents import JobDocuments, fan_out
from batchyard.backends.final_step import load_state, plan_submission
from batchyard.backends.outputs import job_outputs
from batchyard.core.config import Config
from batchyard.core.errors import BackendError, BatchyardError, JobNotFoundError
from batchyard.core.final_step import FINAL_TASK_ID, is_final_or_barrier, without_final
from batchyard.core.findings import Finding
from batchyard.core.job import Job, TaskDef, parse_duration
from batchyard.core.rerun import PriorTask, RerunOption, RerunPlan, resource_digests

log = logging.getLogger(__name__)

COUNTS_LAG_GRACE_S = 30.0  # Batch's task counts lag a few seconds behind adds
CLOSED = ("completed", "terminating")  # Batch adds no task to such a job and reactivates none in it


class AzureBackend(Backend):
    """Jobs on Azure Batch (or its emulator): the pool runs the tasks, batchyard only submits and reads."""

    name = "azure"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.storage = make_storage(config)  # refuses a missing or unreachable storage account first
        self.documents = JobDocuments(self.storage, config)
        self.runs = RunRecords(self.documents, client=lambda: self.client)
        self._client: BatchClient | None = None
        self._pools: PoolManager | None = None
        self._chains: dict[str, RunChain] = {}
        self._expected: dict[str, int] = {}
        self._short_since: dict[str, float] = {}  # wait: when counts first looked final but short
        self._watch: tuple[str, str] | None = None  # (job id, pool id) that wait() watches
        self._submitted_run: str | None = None  # the job whose run this process opened and has not ended
        self._last_alive_check = 0.0
        self._job_state_cache: dict[str, tuple[float, str]] = {}
        self._final_runs: dict[str, str | None] = {}

    @property
    def client(self) -> BatchClient:
        if self._client is None:
            self._client = make_client(self.config)
        return self._client

    def _connect(self) -> None:
        """The parts that talk to Batch, made on first use (so status of a job on storage needs no client)."""
        if self._pools is None:
            client = self.client
            self._pools = PoolManager(client, self.storage, self.config)
            self._nodes = NodeWatch(client)
            self._ends = RunEnds(client, self._pools, self._nodes, self.runs, self.config)
            self._reader = ResultReader(client, self.storage, self.documents, self._chain,
                                        lambda batch_job_id: self._job_state(batch_job_id, max_age_s=0))
            self._checks = JobChecks(client, self._pools, self.config, self._chain)
            self._writer = JobWriter(client, self.storage, self.documents, self.config)

    @property
    def pools(self) -> PoolManager:
        self._connect()
        return self._pools  # type: ignore[return-value]

    @property
    def nodes(self) -> NodeWatch:
        self._connect()
        return self._nodes

    @property
    def ends(self) -> RunEnds:
        self._connect()
        return self._ends

    @property
    def reader(self) -> ResultReader:
        self._connect()
        return self._reader

    @property
    def checks(self) -> JobChecks:
        self._connect()
        return self._checks

    @property
    def writer(self) -> JobWriter:
        self._connect()
        return self._writer

    def _chain(self, job_id: str, *, fresh: bool = False) -> RunChain:
        if fresh or job_id not in self._chains:
            self._chains[job_id] = self.runs.load(job_id)
        return self._chains[job_id]

    @classmethod
    def runs_tasks_here(cls, config: Config) -> bool:  # the Batch emulator: Azure Batch is never on loopback
        return bool(config.azure.batch_url) and is_loopback_url(config.azure.batch_url or "")

    def preflight(self) -> None:
        """The storage preflight, then one cheap authenticated Batch call (list one pool id)."""
        self.storage.preflight()
        self.checks.authenticate()

    def preflight_findings(self, job: Job) -> list[Finding]:
        try:
            checks = self.checks  # makes the client: settings it refuses are findings too
        except BatchyardError as exc:
            return [auth_finding(exc)]
        return checks.findings(job)

    def fan_out(self, job: Job, *, resources: dict[str, str] | None = None) -> list[TaskDef]:
        """The job's tasks, exactly as the local backend fans them out."""
        return fan_out(self.storage, job, resources=resources)

    def _get_job(self, batch_job_id: str) -> bm.BatchJob | None:
        try:
            return self.client.get_job(batch_job_id)
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise batch_error(exc, f"reading job {batch_job_id!r}") from None

    def prior_tasks(self, job_id: str) -> dict[str, PriorTask]:
        """Each task's newest record across the job's chain of Batch jobs (:mod:`.reruns`)."""
        return self._records(self._chain(job_id, fresh=True)).prior

    def _records(self, chain: RunChain) -> ChainRecords:
        batch_job = self._get_job(chain.current.batch_job_id)
        is_open = batch_job is not None and enum_text(batch_job.state) not in CLOSED
        return chain_records(self.client, chain, open_batch_job=chain.current.batch_job_id if is_open else None)

    def submit(self, job: Job, *, rerun: RerunOption = None,
               on_plan: Callable[[RerunPlan], None] | None = None) -> SubmitResult:
        self.refuse_other_spelling(job.id)  # Batch would take `myjob` for `MyJob`; its documents would not
        required = required_patterns(job)
        # Registries and pool rules first: a missing password or a pool Batch would refuse must fail
        # before any container, pool or job exists.
        containers = container_setup(job.container_image, self.config) if job.container_image else None
        self.checks.refuse_errors(job)
        chain = self._chain(job.id, fresh=True)
        current = chain.current
        batch_job = self._get_job(current.batch_job_id)
        if batch_job is not None and not owned_by(batch_job.metadata, job.id):  # a user's job named `<id>-r2`
            raise BackendError(f"job {job.id}: Batch job {current.batch_job_id!r} is a later run of another job, "
                               "made by batchyard for it; use another id for this job")
        self.documents.ensure()
        digests = self.documents.upload_resources(job)
        for out in job.outputs:
            self.storage.ensure_container(out.container)
        tasks = self.fan_out(job, resources=resource_digests(job, digests))
        state = enum_text(batch_job.state) if batch_job is not None else ""
        if state == "deleting":
            raise BackendError(f"job {job.id} is being deleted on Azure Batch (Batch job {current.batch_job_id}); "
                               "run it again once `batchyard delete` has finished, or use a new id")
        is_open = batch_job is not None and state not in CLOSED
        records = chain_records(self.client, chain, open_batch_job=current.batch_job_id if is_open else None)
        rerun, final_named = without_final(rerun)
        plan = self.rerun_plan(job, tasks, rerun=rerun, prior=records.prior)
        if on_plan is not None:
            on_plan(plan)
        placed = place(tasks, plan, records, current=current.batch_job_id, is_open=is_open)
        spec_hash = hashlib.sha256(dumps(job.model_dump(mode="json")).encode()).hexdigest()[:16]
        self.documents.save_job(job, spec_hash=spec_hash, backend=self.name)
        self.documents.save_manifest(job.id, spec_hash, tasks, job=job)
        final_record = records.prior.get(FINAL_TASK_ID)
        final_due = job.final is not None and plan_submission(  # it depends on every task: re-runs with any
            self.documents, job, dependencies_reran=plan.any_rerun() or final_named,
            succeeded_before=final_record is not None and final_record.state == "succeeded")
        self._expected[job.id] = len(tasks)
        self._final_runs.pop(job.id, None)
        pool_id, created = None, False
        if placed.add or placed.readd or final_due:
            pool_id, created = self.pools.resolve(job.id, containers=containers)
            try:
                self.writer.open_and_add(job, chain, self.runs, batch_job=batch_job, is_open=is_open,
                                         pool_id=pool_id, placed=placed, required=required, containers=containers)
                if final_due:
                    ids, replaced = final_dependencies(tasks, placed, records.where, current=chain.current.batch_job_id,
                                                       is_open=is_open)
                    self.writer.add_final(job, chain.current.batch_job_id, per_file_ids=ids, replaced=replaced,
                                          containers=containers)
                if created:  # tasks are queued already: nodes come up while we wait here
                    self.pools.wait_steady(pool_id, timeout_s=parse_duration(self.config.azure.steady_timeout),
                                           poll_s=self.config.azure.poll_interval)
            except (KeyboardInterrupt, BackendError) as exc:
                self._end_failed_submit(job.id, exc)
        elif batch_job is not None and batch_job.pool_info is not None:
            pool_id = batch_job.pool_info.pool_id
        self._watch = (job.id, pool_id) if pool_id else None
        self._submitted_run = job.id if placed.add or placed.readd or final_due else None
        return SubmitResult(job_id=job.id, total=len(tasks), enqueued=len(placed.add) + len(placed.readd),
                            already_succeeded=plan.kept, already_running=plan.running,
                            rerun_failed=plan.counts()["failed"], rerun=plan)

    def _end_failed_submit(self, job_id: str, exc: BaseException) -> None:
        """A submit stopped after its pool existed (Ctrl-C, resize errors): end the run, then re-raise."""
        note = self.end_run(job_id, "UserInterrupted" if isinstance(exc, KeyboardInterrupt) else "SubmitFailed")
        where = f"; {note}" if note else ""
        if isinstance(exc, KeyboardInterrupt):
            log.warning("interrupted: job %s stopped on Azure Batch (records kept)%s", job_id, where)
            raise exc
        raise BackendError(f"{exc}\njob {job_id} stopped (Batch job terminated, records kept){where}") from None

    # --- waiting ---------------------------------------------------------------------------------------
    def task_counts(self, job_id: str) -> TaskCounts:
        run = self._chain(job_id).current
        counts = batch_task_counts(self.client, run.batch_job_id, lambda: self._job_state(run.batch_job_id))
        if self._final_run(job_id) == run.batch_job_id:  # its barriers and final task are not per-file tasks
            counts = counts_without_final(self.client, run.batch_job_id, counts)
        # Tasks that succeeded in an earlier run of the chain were not added again (carried over).
        return replace(counts, succeeded=counts.succeeded + run.carried)

    def _job_state(self, batch_job_id: str, *, max_age_s: float = 5.0) -> str | None:
        cached = self._job_state_cache.get(batch_job_id)
        if cached and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        job = self._get_job(batch_job_id)
        state = enum_text(job.state) if job is not None else None
        self._job_state_cache[batch_job_id] = (time.monotonic(), state or "")
        return state

    def wait(self, job_id: str, *, on_progress: Any = None, poll_interval: float | None = None,
             timeout: float | None = None) -> TaskCounts:
        """Poll task counts until every task is final; then end the run (ending.py)."""
        self._short_since.pop(job_id, None)
        if self._watch is None or self._watch[0] != job_id:
            self._watch = self._watched_pool(job_id)
        return super().wait(job_id, on_progress=on_progress, timeout=timeout,
                            poll_interval=poll_interval or self.config.azure.poll_interval)

    def _watched_pool(self, job_id: str) -> tuple[str, str] | None:
        run = self._chain(job_id).current
        pool_id = run.pool_id
        if pool_id is None:
            batch_job = self._get_job(run.batch_job_id)
            pool_id = batch_job.pool_info.pool_id if batch_job is not None and batch_job.pool_info else None
        return (job_id, pool_id) if pool_id and run.usage is None else None

    def run_to_end(self, job: Job, **options: Any) -> TaskCounts:
        """As every backend's; Ctrl-C also ends the run (Batch job terminated, per-job pool released)."""
        try:
            counts = super().run_to_end(job, **options)
        except KeyboardInterrupt:
            self._end_interrupted_run(job.id)
            raise
        self._submitted_run = None  # the wait ended the run
        return counts

    def _end_interrupted_run(self, job_id: str) -> None:
        self._watch = self._submitted_run = None
        note = self.end_run(job_id, "UserInterrupted")
        log.warning("interrupted: job %s stopped on Azure Batch (records kept)%s; `batchyard run` again runs "
                    "what is left", job_id, f"; {note}" if note else "")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # Ctrl-C between a submit and the wait (the caller printing, say) ends the run as one in the wait
        # does: a pool made for it must not bill on. `status --watch` submits nothing, so it never ends one.
        if exc_type is KeyboardInterrupt and self._submitted_run is not None:
            self._end_interrupted_run(self._submitted_run)
        super().__exit__(exc_type, *exc)

    def _settled(self, job_id: str, counts: TaskCounts) -> bool:
        # Batch's counts lag behind adds by a few seconds, so "finished" only counts once the total
        # reaches what this process submitted (or after a grace period).
        if not counts.finished:
            return False
        if counts.total < self._expected.get(job_id, 0):
            short_since = self._short_since.setdefault(job_id, time.monotonic())
            if time.monotonic() - short_since <= COUNTS_LAG_GRACE_S:
                return False
        run = self._chain(job_id).current.batch_job_id
        if self._final_run(job_id) != run:
            return True
        return final_settled(self.client, run, self.job(job_id), counts, self.documents)

    def _final_run(self, job_id: str) -> str | None:
        """The Batch job of the run that has the job's final step (None: no final step due)."""
        if job_id not in self._final_runs:
            self._final_runs[job_id] = load_state(self.documents, job_id).get("batch_job_id")
        return self._final_runs[job_id]

    def final_step(self, job_id: str) -> FinalStepView | None:
        return final_step_view(self.client, self.documents, self.job(job_id), self.task_counts(job_id),
                               self._chain(job_id, fresh=True).batch_job_ids(), task_result)

    def _on_settled(self, job_id: str, counts: TaskCounts) -> None:
        self._short_since.pop(job_id, None)
        if counts.total:
            self._watch = None
            self.end_finished_run(job_id, counts)

    def end_finished_run(self, job_id: str, counts: TaskCounts | None = None) -> None:
        counts = counts or self.task_counts(job_id)
        self.end_run(job_id, "AllTasksSucceeded" if not (counts.failed or counts.cancelled) else "TasksFailed")

    def end_run(self, job_id: str, reason: str) -> str:
        """Terminate the current run's Batch job and release its per-job pool; a line saying what became of it."""
        chain = self._chain(job_id, fresh=True)
        self.ends.end(chain, reason)
        self._job_state_cache.pop(chain.current.batch_job_id, None)
        usage = chain.current.usage
        return fate_text(usage) if usage is not None and usage.ended_at else ""

    def _check_alive(self) -> None:
        """Stop waiting when nothing can run: resize errors, a vanished pool, or no node that can take tasks."""
        interval = min(10.0, max(1.0, 5 * self.config.azure.poll_interval))
        if self._watch is None or time.monotonic() - self._last_alive_check < interval:
            return
        self._last_alive_check = time.monotonic()
        job_id, pool_id = self._watch
        pool = self.pools.get(pool_id)
        if pool is None:
            if self._job_state(self._chain(job_id).current.batch_job_id, max_age_s=0) in CLOSED:
                return  # cancelled elsewhere: the counts show the end at the next poll
            problem = f"pool {pool_id!r} of job {job_id!r} no longer exists on Azure Batch"
        else:
            grace = min(parse_duration(self.config.azure.steady_timeout),
                        pool.resize_timeout.total_seconds() if pool.resize_timeout else 15 * 60.0)
            problem = self.pools.resize_errors(pool) or self.nodes.problem(pool, grace_s=grace)
        if problem:
            self._watch = None
            note = self.end_run(job_id, "PoolUnusable")
            where = note or f"pool {pool_id} is shared ([azure] pool_id): left as it is"
            raise BackendError(f"{problem}\njob {job_id} stopped (Batch job terminated, records kept); {where}. "
                               "Fix the pool, then `batchyard run` again runs its tasks")

    # --- queries ---------------------------------------------------------------------------------------
    def list_task_results(self, job_id: str, *, brief: bool = False) -> Iterator[TaskResult]:
        self._chain(job_id, fresh=True)
        return (r for r in self.reader.list_task_results(job_id, brief=brief) if not is_final_or_barrier(r.task_id))

    def output_blobs(self, job_id: str) -> Iterator[tuple[str, str]]:
        """The outputs the task records stand for (:mod:`batchyard.backends.outputs`)."""
        return job_outputs(self.storage, self.documents, self, job_id)

    def read_task_log(self, job_id: str, task_id: str, *, stream: str = "stdout") -> bytes:
        return self.reader.read_task_log(job_id, task_id, stream=stream)

    def job(self, job_id: str) -> Job:
        return self.documents.load_job(job_id)

    def pool_summary(self, job_id: str) -> PoolSummary | None:
        chain = self._chain(job_id, fresh=True)
        pool_id = chain.current.pool_id
        if pool_id is None:
            batch_job = self._get_job(chain.current.batch_job_id)
            pool_id = batch_job.pool_info.pool_id if batch_job is not None and batch_job.pool_info else None
        return self.ends.summary(chain, pool_id)

    def list_jobs(self) -> list[JobView]:
        return job_views(self.client, self.documents, self.name, self._chain)

    def job_ids_like(self, job_id: str) -> list[str]:
        return job_ids_like(self.client, self.documents, job_id, self.name)

    def resolve_job_id(self, job_id: str) -> str:
        return refuse_a_runs_id(self.client, self.documents, super().resolve_job_id(job_id))

    # --- control ---------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        """Terminate the job's current Batch job (records stay) and release its per-job pool."""
        chain = self._chain(job_id, fresh=True)
        if not self.ends.end(chain, "UserTerminate") and not self.documents.has_job(job_id):
            raise JobNotFoundError(f"job {job_id!r} not found on Azure Batch")
        self._job_state_cache.pop(chain.current.batch_job_id, None)

    def delete(self, job_id: str) -> None:
        delete_job(self.client, self.pools, self.documents, self._chain(job_id, fresh=True).batch_job_ids(), job_id)
        self._expected.pop(job_id, None)
        self._chains.pop(job_id, None)

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

    def replay_task(self, job_id: str, task_id: str, *, node_root: Path) -> TaskReplay:
        return replay_task(self.client, self.storage, self.config, self.documents, job_id, task_id,
                           node_root=node_root, batch_job_ids=self._chain(job_id).batch_job_ids(),
                           facts=self.reader.facts)


__all__ = ["AzureBackend", "make_client"]
