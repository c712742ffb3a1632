"""The local backend: an Azure Storage Queue and worker processes, on Azurite or a real account.

Submit writes the job document (with the job's message key), the manifest and the queue
messages (the tasks' definitions, each MACed with that key, sent concurrently, several tasks per
message for big jobs); a task too big for a message gets its row at submit and an ids-only
message. Workers run only what the job's owner submitted (:mod:`batchyard.backends.local.admission`).
Workers (``multiprocess`` processes, see :mod:`batchyard.backends.local.worker`) may run in this process
tree (``batchyard run``) or anywhere else that reaches the same account
(``batchyard worker``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchyard.backends.base import (
    Backend,
    FinalStepView,
    JobView,
    SubmitResult,
    TaskCounts,
    TaskReplay,
    TaskResult,
    dumps,
    final_state,
)
from batchyard.backends.documents import ManifestWriter, TaskSource, fan_out
from batchyard.backends.local.admission import message_key_for_submit
from batchyard.backends.local.bulk import cancel_pending_rows, delete_task_rows
from batchyard.backends.local.enqueue import NEW, Placed, enqueue
from batchyard.backends.local.final_run import final_step_settled, final_step_view, plan_final_step
from batchyard.backends.local.job_queues import QUEUED_FIELD, delete_job_queue, queue_for_submit
from batchyard.backends.local.listing import job_ids_like, job_views
from batchyard.backends.local.messages import check_id
from batchyard.backends.local.replay import replay_task
from batchyard.backends.local.rows import BRIEF_COLUMNS, bucket_in, bucket_of, entity_to_result, unclaimed_result
from batchyard.backends.local.store import JobStore, StorageLostError
from batchyard.backends.local.summary import summary_results
from batchyard.backends.local.tally import TaskTally
from batchyard.backends.local.worker import WorkerOptions, worker_process_main
from batchyard.backends.outputs import job_outputs
from batchyard.core import interrupts
from batchyard.core.batch_semantics import log_blob_name
from batchyard.core.config import Config
from batchyard.core.errors import BackendError, JobNotFoundError, TaskNotFoundError
from batchyard.core.final_step import FINAL_TASK_ID, without_final
from batchyard.core.job import Job, TaskDef
from batchyard.core.rerun import Decider, PriorTask, RerunOption, RerunPlan, resource_digests
from batchyard.core.secret_handoff import hide_credentials
from batchyard.core.spill import Spill
from batchyard.storage.account import Storage

log = logging.getLogger(__name__)

# A submit keeps up to this many tasks in memory between its plan and its messages (~0.85 KB each),
# the rest in a temporary file (1,000,000 held took 912 MiB; 100,000 held put the peak of a `batchyard run`
# of 100,000 tasks at 159 MiB, and 20,000 cost no time measurably).
HELD_TASKS = 20_000
MAX_RESPAWNS = 8


class LocalBackend(Backend):
    """Tasks on a storage queue, run by worker processes on this machine (or any that joins)."""

    name = "local"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._conn = local_storage_connection_string(config)
        self.storage = Storage.from_connection_string(self._conn, fast_path=config.storage.fast_path)
        self.store = JobStore(self.storage, config)
        self._procs: list[Any] = []
        self._stop: Any = None
        self._ctx: Any = None
        self._respawns = 0
        self._tallies: dict[tuple[Any, ...], TaskTally] = {}
        self._workers_args: tuple[Any, ...] = ()

    @classmethod
    def runs_tasks_here(cls, config: Config) -> bool:
        return True  # workers started here; a `batchyard worker` elsewhere needs the same paths

    # --- submit ----------------------------------------------------------------------------------------
    def preflight(self) -> None:
        self.storage.preflight()

    def fan_out(self, job: Job, *, resources: dict[str, str] | None = None) -> list[TaskDef]:
        """The job's tasks (uploads ``inputs.local_dir`` first, so they are counted); with ``resources``
        (target -> content MD5), each with its fingerprint."""
        return fan_out(self.storage, job, resources=resources)

    def submit(self, job: Job, *, rerun: RerunOption = None,
               on_plan: Callable[[RerunPlan], None] | None = None) -> SubmitResult:
        self.refuse_other_spelling(job.id)
        if job.container_image:  # fail before anything is queued, not in every task
            _require_image(job.container_image)
        self.store.ensure()
        digests = self.store.upload_resources(job)
        for out in job.outputs:
            self.storage.ensure_container(out.container)
        source = TaskSource(self.storage, job, resources=resource_digests(job, digests))
        rerun, final_named = without_final(rerun)
        spec_hash = hashlib.sha256(dumps([job.model_dump(mode="json"), digests]).encode()).hexdigest()[:16]
        # One pass reads the tasks, plans the run, writes the manifest (compressed, as it goes) and keeps
        # the tasks to queue: in memory up to HELD_TASKS, past that in a temporary file (core/spill.py),
        # so a submit of a million tasks holds none of them and parses none twice.
        # A task that has a row keeps it where it is; a new one's row goes to the bucket of its position.
        prior, buckets = self._prior(job.id)
        decider = Decider(job.id, prior, rerun=rerun)
        manifest = ManifestWriter(spec_hash, job=job)
        with Spill[Placed](keep=HELD_TASKS, encode=lambda placed: (placed[0].as_row(), placed[1]),
                           decode=lambda row: (TaskDef(*row[0]), row[1])) as to_queue:
            for position, task in enumerate(source):
                decider.add(task)
                manifest.add(task)
                if task.task_id in decider.plan.reasons:
                    bucket = buckets.get(task.task_id.lower(), NEW) if buckets else NEW
                    to_queue.append((task, bucket_of(position) if bucket is NEW else bucket))
            plan = decider.finish()
            source.check_not_empty(plan.total)
            if on_plan is not None:
                on_plan(plan)
            key = message_key_for_submit(self.store, job.id)
            queue = queue_for_submit(self.store, job.id)
            self.store.record_job(job, total=plan.total, spec_hash=spec_hash, backend=self.name, message_key=key,
                                  queue=queue)
            self.store.put_manifest(job.id, manifest.finish())
            if plan.dropped:  # no longer tasks of the job: their rows go (a worker running one stops it)
                delete_task_rows(self.store, job.id, only=frozenset(plan.dropped))
            self._enqueue(job.id, queue, to_queue, key.encode(), plan=plan)
        if job.final is not None:  # it depends on every task: it runs again when any of them does
            final = self.store.get_task(job.id, FINAL_TASK_ID)
            plan_final_step(self.store, job, dependencies_reran=plan.any_rerun() or final_named,
                            prior_state=final.get("state") if final else None)
        # Workers that found the job's queue empty look at it again when this changes.
        self.store.set_job_fields(job.id, **{QUEUED_FIELD: time.time()})
        return SubmitResult(job_id=job.id, total=plan.total, enqueued=len(plan.reasons), already_succeeded=plan.kept,
                            already_running=plan.running, rerun_failed=plan.counts()["failed"], rerun=plan)

    def prior_tasks(self, job_id: str) -> dict[str, PriorTask]:
        """From the task rows: state, fingerprint, and whether a live claim runs it now."""
        return self._prior(job_id)[0]

    def _prior(self, job_id: str) -> tuple[dict[str, PriorTask], dict[str, str | None]]:
        """:meth:`prior_tasks`, and the bucket of each task's row (None: the job id's own partition)."""
        if self.store.get_job_entity(job_id) is None:
            return {}, {}
        now = time.time()
        prior: dict[str, PriorTask] = {}
        buckets: dict[str, str | None] = {}
        for entity in self.store.task_entities(job_id, select=["PartitionKey", "RowKey", "state", "claim_expires",
                                                               "failure_category", "fingerprint"]):
            state = str(final_state(entity.get("state") or "pending", entity.get("failure_category")))
            key = entity["RowKey"].lower()
            prior[key] = PriorTask(state=state, fingerprint=entity.get("fingerprint") or "",
                                   live=state == "running" and float(entity.get("claim_expires") or 0) > now)
            buckets[key] = bucket_in(entity["PartitionKey"])
        return prior, buckets

    def output_blobs(self, job_id: str) -> Iterator[tuple[str, str]]:
        """The outputs the task records stand for (:mod:`batchyard.backends.outputs`)."""
        return job_outputs(self.storage, self.store, self, job_id)

    def _enqueue(self, job_id: str, queue: str, placed: Iterable[Placed], key: bytes, *,
                 plan: RerunPlan | None = None) -> None:
        enqueue(self.store, job_id, queue, placed, key, workers=self.config.workers, plan=plan)

    # --- workers ---------------------------------------------------------------------------------------
    def start_execution(self, job: Job | None = None, *, workers: int | None = None,
                        options: WorkerOptions | None = None, work_dir: Path | None = None) -> None:
        import multiprocess

        # Workers fork from this process: its startup environment, which a task can read, holds no key.
        hide_credentials(not_dumpable=False)
        count = workers or self.config.workers
        # fork: a worker starts in milliseconds with everything imported (docs/architecture.md);
        # each creates its storage clients afresh (worker_process_main), never using inherited ones.
        self._ctx = multiprocess.get_context("fork")
        self._stop = self._ctx.Event()
        if job is not None:  # `batchyard run JOB`: its workers take only that job's messages
            options = replace(options or self._worker_options(), jobs=(job.id,))
        self._workers_args = (options, str(work_dir) if work_dir else None)
        self._procs = []
        for index in range(count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        """Start worker ``index`` in its place in ``_procs`` (kept before it starts: an interrupt that
        comes as it starts is raised with it there, so stop_execution stops it with the rest)."""
        options, work_dir = self._workers_args
        proc = self._ctx.Process(
            target=worker_process_main, name=f"batchyard-worker-{index}",
            args=(self._conn, self.config, index, self._stop, options, work_dir), daemon=True,
        )
        if index < len(self._procs):
            self._procs[index] = proc
        else:
            self._procs.append(proc)
        with interrupts.held():  # a Ctrl-C or SIGTERM in the fork's callbacks would be dropped there
            proc.start()

    def _settled(self, job_id: str, counts: TaskCounts) -> bool:
        """Every per-file task final, then the final step (queued here once they are) final too."""
        return counts.finished and final_step_settled(self.store, self.job(job_id), counts, self._enqueue_final)

    def _enqueue_final(self, job_id: str, queue: str, tasks: list[TaskDef], key: bytes) -> None:
        """The final step's message: its row is in the job id's own partition, never in a bucket."""
        self._enqueue(job_id, queue, [(task, None) for task in tasks], key)

    def final_step(self, job_id: str) -> FinalStepView | None:
        self._require_job(job_id)
        return final_step_view(self.store, self.job(job_id), self.task_counts(job_id))

    def _check_alive(self) -> None:
        """Replace workers that died (a crash or a kill), up to a limit; fail if storage is lost."""
        for i, proc in enumerate(self._procs):
            if proc.is_alive() or proc.exitcode == 0 or self._stop is None or self._stop.is_set():
                continue  # running, or finished on its own (idle exit)
            if proc.exitcode == 3:
                raise BackendError("a worker found the task queue gone: the job is lost (see the log above)")
            if self._respawns >= MAX_RESPAWNS:
                raise BackendError(f"workers keep dying (last exit code {proc.exitcode}); giving up")
            log.warning("worker %d exited with code %s; starting a new one", i, proc.exitcode)
            self._respawns += 1
            self._spawn(i)

    def _worker_options(self, **fields: Any) -> WorkerOptions:
        local = self.config.local
        return WorkerOptions(lease_s=local.lease_seconds, max_dequeue_count=local.max_dequeue_count,
                             keep_task_dirs=local.keep_task_dirs, **fields)

    def serve_workers(self, *, workers: int | None = None, idle_exit_s: float | None = None,
                      jobs: Sequence[str] | None = None) -> str:
        """Workers for every job of this configuration, or only ``jobs`` (``batchyard worker``), with
        the [local] settings. Each job must exist (JobNotFoundError naming it)."""
        for job_id in jobs or ():
            self._require_job(job_id)
        if not jobs:
            # Started before any submit (a fresh storage account, or another machine first): the tables
            # are made now, so the workers wait for jobs instead of taking the missing table for storage
            # that lost its data. Once they serve, a table that disappears is still that loud failure.
            self.store.ensure()
        options = self._worker_options(idle_exit_s=idle_exit_s, jobs=tuple(jobs) if jobs else None)
        count = workers or self.config.workers
        self.start_execution(None, workers=count, options=options)
        served = f"job(s) {', '.join(jobs)}" if jobs else f"every job in table {self.store.jobs.table_name!r}, in turn"
        return f"{count} worker(s) serving {served}"

    def join_execution(self, *, poll: float = 1.0) -> None:
        """Block while any worker runs (``batchyard worker``), replacing crashed ones."""
        while any(p.is_alive() for p in self._procs):
            self._procs[0].join(timeout=poll)
            self._check_alive()

    def stop_execution(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        deadline = time.monotonic() + 15
        for proc in self._procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        self._procs, self._stop = [], None

    # --- queries ---------------------------------------------------------------------------------------
    def _require_job(self, job_id: str) -> dict[str, Any]:
        try:
            entity = self.store.get_job_entity(job_id)
        except StorageLostError:
            # No jobs table: nothing was ever submitted here (or the storage lost its data).
            raise JobNotFoundError(
                f"job {job_id!r} not found: no job has been submitted to storage account "
                f"{self.storage.account.account_name!r} with this configuration (or its records were lost)"
            ) from None
        if entity is None:
            raise JobNotFoundError(f"job {job_id!r} not found on storage account {self.storage.account.account_name!r}")
        return entity

    def _tally(self, job_id: str, entity: dict[str, Any]) -> TaskTally:
        """One tally per job and submission (a submission may delete the rows of tasks it dropped):
        later polls read only the rows that changed."""
        key = (job_id, entity.get("spec_hash"), entity.get("created"), entity.get("total"), entity.get("updated"))
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = TaskTally(self.store, job_id, total=int(entity.get("total") or 0))
        return tally

    def task_counts(self, job_id: str) -> TaskCounts:
        entity = self._require_job(job_id)
        return self._tally(job_id, entity).refresh(job_cancelled=entity.get("state") == "cancelled")

    def list_task_results(self, job_id: str, *, brief: bool = False) -> Iterator[TaskResult]:
        """Every task's result as it streams from its row; then the tasks no worker claimed (no
        row): pending, or cancelled in a cancelled job. Holds the task ids, never the results.
        ``brief`` reads only a summary's columns of each row (less than half the time)."""
        job_row = self._require_job(job_id)
        cancelled = job_row.get("state") == "cancelled"
        seen: set[str] = set()
        rows = self.store.task_entities(job_id, select=list(BRIEF_COLUMNS) if brief else None)
        for entity in self._tally(job_id, job_row).watching(rows):
            if entity["RowKey"] == FINAL_TASK_ID:  # shown apart: final_step()
                continue
            seen.add(entity["RowKey"])
            yield entity_to_result(entity)
        for task_id, label, *_ in self.store.manifest_rows(job_id) or []:  # not claimed yet: no row
            if task_id not in seen:
                yield unclaimed_result(job_id, task_id, label, cancelled=cancelled)

    def summary_results(self, job_id: str, *, order: Callable[[TaskResult], Any],
                        limit: int) -> Iterator[TaskResult]:
        """From the job's tally and manifest, reading only the rows shown (:mod:`.summary`)."""
        job_row = self._require_job(job_id)
        chosen = summary_results(self.store, self._tally(job_id, job_row), job_id, order=order, limit=limit,
                                 cancelled=job_row.get("state") == "cancelled")
        return self.list_task_results(job_id, brief=True) if chosen is None else chosen

    def read_task_log(self, job_id: str, task_id: str, *, stream: str = "stdout") -> bytes:
        try:
            check_id(task_id, "task id")
        except ValueError as exc:
            raise TaskNotFoundError(f"task {task_id!r} not found in job {job_id!r}: {exc}") from None
        job_row = self._require_job(job_id)
        entity = self.store.find_task(job_id, task_id)
        if entity is None:
            if any(t == task_id for t, _ in self.store.load_manifest(job_id)):
                if job_row.get("state") == "cancelled":
                    raise TaskNotFoundError(f"task {task_id!r} has no {stream}: the job was cancelled before it ran")
                raise TaskNotFoundError(f"task {task_id!r} has no {stream} yet (state pending)")
            raise TaskNotFoundError(f"task {task_id!r} not found in job {job_id!r}")
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.storage.download_bytes(self.store.log_container, log_blob_name(job_id, task_id, stream))
        except ResourceNotFoundError:
            if entity.get("state") in ("succeeded", "failed") and int(entity.get("attempt_count") or 0) > 0:
                return b""  # the command wrote nothing there (empty logs are not uploaded)
            raise TaskNotFoundError(
                f"task {task_id!r} has no {stream} yet (state {entity.get('state')})") from None

    def job(self, job_id: str) -> Job:
        return self.store.load_job(job_id)

    def list_jobs(self) -> list[JobView]:
        return job_views(self.store)

    def job_ids_like(self, job_id: str) -> list[str]:
        return job_ids_like(self.store, job_id)

    # --- control ---------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        """The job's state is the cancellation: workers ask it before they claim a task and stop
        what they run when it changes, and a task no worker claimed (no row) reads as cancelled
        from then on. So only rows still ``pending`` (tasks run before, queued again) are written,
        100 to a transaction: the cost is one write, not one per task."""
        # Its messages stay: a worker that takes one records its tasks cancelled (a task claimed but
        # not started when the job was cancelled is given back, and its message is what ends it).
        self._require_job(job_id)
        self.store.set_job_state(job_id, "cancelled")
        cancel_pending_rows(self.store, job_id)

    def delete(self, job_id: str) -> None:
        """The job's queue first (every message of it goes, no worker takes one again), then its records:
        the task rows in parallel transactions, then the job's row and documents."""
        entity = self._require_job(job_id)
        delete_job_queue(self.store, entity)
        delete_task_rows(self.store, job_id)
        self.store.delete_job(job_id)

    def close(self) -> None:
        self.stop_execution()

    # --- debug -----------------------------------------------------------------------------------------
    def replay_task(self, job_id: str, task_id: str, *, node_root: Path) -> TaskReplay:
        """The task from its row and the job document (:mod:`batchyard.backends.local.replay`)."""
        self._require_job(job_id)
        return replay_task(self.store, self.job(job_id), task_id, node_root=node_root)


def local_storage_connection_string(config: Config) -> str:
    """The configured account, or the user's local Azurite (started if needed).

    Only the local backend (and what runs on it) falls back to Azurite: its workers run on this
    machine, where loopback reaches it. The azure backend's nodes could not (see its backend).
    """
    if config.storage_connection_string:
        return config.storage_connection_string
    from batchyard.core.redact import register_secret
    from batchyard.emulator.azurite import Azurite

    log.info("no storage configured: using the local Azurite (started if needed)")
    conn = Azurite(home=config.home).start().connection_string()
    register_secret(conn)
    return conn


def _require_image(image: str) -> None:
    """Raise a clear error when the engine is missing or lacks the image (never pulled implicitly)."""
    from batchyard.node.docker import ContainerEngineError, engine

    try:
        engine().images.get(image)
    except ContainerEngineError:
        raise
    except Exception:
        raise ContainerEngineError(f"container_image {image!r} is not on the Docker engine; pull, load or build "
                                   "it there first (batchyard never pulls implicitly)") from None
