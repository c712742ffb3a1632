"""The backend interface: the one contract every place-to-run keeps.

What a job's command can rely on, on every backend:

- **Working directory.** It starts in ``$AZ_BATCH_TASK_WORKING_DIR`` (an empty ``wd/``
  inside ``$AZ_BATCH_TASK_DIR``), holding its input at ``{input}`` and every resource
  file, fully downloaded. Its stdout and stderr go to ``stdout.txt`` / ``stderr.txt``
  in the task dir and are kept as the task's logs.
- **Environment.** The ``AZ_BATCH_*`` variables Azure Batch sets (job, task, node, pool,
  directories), then the job's ``[environment]``, then each placeholder's value (``INPUT``,
  ``INPUT_STEM``..., ``JOB_ID``, ``TASK_ID``) and the task table's columns. Never batchyard's
  own credentials.
- **Arguments.** ``argv`` is the job's command split like a POSIX shell would, with
  each placeholder value substituted as exactly one argument (shell-quoted inside a
  ``sh -c`` script). No shell runs unless the command itself starts one.
- **Limits.** At ``max_wall_clock_time`` the command and all its descendants are
  killed (``timeout``, not retried). A non-zero exit is retried up to
  ``max_task_retry_count`` times in a fresh working dir.
- **Outputs.** Uploaded after it exits, per ``upload_on``; a non-optional pattern that
  matches nothing fails the task (``output_missing``).
- **Delivery.** At least once: a task may start again if its worker or node is lost, so
  commands should be safe to re-run. A task recorded as succeeded runs again for the same
  job id only when its fingerprint changed or a re-run is asked for (:mod:`batchyard.core.rerun`),
  and each run of a task has exactly one final record.
- **Replay.** ``batchyard debug`` runs one task again here, as it ran (:meth:`Backend.replay_task`).
- **Final step.** A job's ``[final]`` task runs after the per-file ones; counts never include it
  (:meth:`Backend.final_step`, :mod:`batchyard.backends.final_step`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchyard.backends.polling import PollSchedule
from batchyard.backends.views import PoolSummary, PoolView
from batchyard.core.errors import BackendError, JobNotFoundError
from batchyard.core.wire_json import compact_json as dumps  # noqa: F401  (the stores' name for it)

if TYPE_CHECKING:
    from batchyard.core.config import Config
    from batchyard.core.findings import Finding
    from batchyard.core.job import Job, TaskDef
    from batchyard.core.rerun import PriorTask, RerunOption, RerunPlan
    from batchyard.node.taskspec import NodeContext, TaskSpec
    from batchyard.storage.account import Storage

class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped (or never started) because its job was cancelled: not a failure of its own


def final_state(failed_state: str, failure_category: str | None) -> TaskState:
    """A task's state from a record whose state says failed or not: a task that failed as
    ``cancelled`` (its job was cancelled) is cancelled, not failed."""
    if failed_state == TaskState.FAILED and failure_category == "cancelled":
        return TaskState.CANCELLED
    return TaskState(failed_state)


@dataclass(frozen=True)
class TaskResult:
    """What is known about one task; ``status --json`` prints a list of these."""

    job_id: str
    task_id: str
    state: TaskState
    label: str = ""
    exit_code: int | None = None
    failure_category: str | None = None
    failure_message: str | None = None
    attempts: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    node_id: str | None = None
    stderr_tail: str = ""
    attempt_records: tuple[dict[str, Any], ...] = field(default=())

    @property
    def retry_count(self) -> int:
        return max(0, self.attempts - 1)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)  # a shallow copy: asdict's deep one was 3/4 of `status --json`'s time
        data["state"] = str(self.state)
        data["retry_count"] = self.retry_count
        data["attempt_records"] = [dict(record) for record in self.attempt_records]
        return data


@dataclass(frozen=True)
class FinalStepView:
    """A job's final step as ``status`` shows it, apart from the per-file tasks. ``state``: waiting (for the
    per-file tasks), pending, running, succeeded, failed, cancelled, skipped (``reason`` says why), or
    unchanged (it succeeded before and nothing it depends on re-ran)."""

    state: str
    run_when: str
    reason: str = ""
    result: TaskResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "result": self.result.to_dict() if self.result is not None else None}


@dataclass(frozen=True)
class TaskCounts:
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.running + self.succeeded + self.failed + self.cancelled

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def finished(self) -> bool:
        return self.pending == 0 and self.running == 0

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class SubmitResult:
    """What a submit did: ``enqueued`` tasks will run; the others were already done or running."""

    job_id: str
    total: int
    enqueued: int
    already_succeeded: int = 0
    already_running: int = 0
    rerun_failed: int = 0
    rerun: RerunPlan | None = None  # which tasks this submit runs, and why


@dataclass(frozen=True)
class TaskReplay:
    """One task, ready to run again on this machine (``batchyard debug``; :meth:`Backend.replay_task`).

    ``spec`` is the task as it ran: its argv, environment, container image and wall-clock limit;
    its resource files (and input) by (container, blob) on the backend's ``storage``, so they are
    read with the user's credentials, never with the task's SAS, which may have expired (a URL on
    another account stays a URL). It has no output file, so a replay uploads nothing and the
    job's outputs and logs stay as the run left them; one attempt, no retry; its task dir is kept.
    ``node`` is the node root given, named as the node the task ran on (node id, pool, account),
    which the ``AZ_BATCH_*`` variables show.
    """

    spec: TaskSpec
    node: NodeContext
    result: TaskResult | None  # what the task's record says; None when it has none yet
    source: str  # where the definition was read, for people ("Batch's task", "the task row"...)


@dataclass(frozen=True)
class JobView:
    """One job as ``batchyard jobs`` lists it. ``state``: active, completed (every task final),
    cancelled, or what Azure Batch says (terminating, deleting, disabled...; missing when only
    batchyard's documents are left, unknown when Batch cannot be reached). Times are ISO 8601, UTC."""

    job_id: str
    backend: str
    state: str
    counts: TaskCounts | None  # None when they cannot be known (Batch unreachable, job gone)
    created_at: str | None
    updated_at: str | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = self.counts.to_dict() if self.counts is not None else None
        return data


ProgressCallback = Callable[[TaskCounts], None]


class Backend(ABC):
    """A place to run jobs. Construct through :func:`batchyard.backends.get_backend`.

    Besides the contract, every backend has ``storage``: the account its job documents, inputs,
    outputs and logs live on. Two optional parts, which a backend without them refuses with a
    :class:`BackendError` saying so (the CLI reaches them only through this interface):

    - workers on this machine: :meth:`serve_workers` (``batchyard worker``), then
      :meth:`join_execution` and :meth:`stop_execution` (the local backend);
    - pools it created: :meth:`created_pools`, :meth:`delete_created_pool`
      (``batchyard pool``; the azure backend).

    And one that both built-in backends have: :meth:`replay_task` (``batchyard debug``).
    """

    name: str = ""
    storage: Storage

    def __init__(self, config: Config) -> None:
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # --- the contract ---------------------------------------------------------------------------------
    @abstractmethod
    def preflight(self) -> None:
        """Cheap authenticated calls that fail fast, naming what is wrong, before anything is submitted."""

    @abstractmethod
    def submit(self, job: Job, *, rerun: RerunOption = None,
               on_plan: Callable[[RerunPlan], None] | None = None) -> SubmitResult:
        """Create the job (or find it) and queue every task that :meth:`rerun_plan` says runs.

        Task ids are deterministic, so submitting the same job again keeps every task that
        succeeded with the same fingerprint and queues the changed, failed, cancelled and missing
        ones; ``rerun`` (``"all"`` or task ids) runs those again whatever their records say.
        ``on_plan`` is called with the plan before anything is queued.
        """

    @abstractmethod
    def task_counts(self, job_id: str) -> TaskCounts:
        """Counts by state, cheap enough to poll."""

    @abstractmethod
    def list_task_results(self, job_id: str, *, brief: bool = False) -> Iterator[TaskResult]:
        """Every task's result (an iterator: large jobs are paged).

        ``brief``: only what a summary shows (id, label, state, exit code, attempts, failure
        category and message); the rest of each result may be left empty, so a backend can read
        less (a run's summary of 100,000 tasks is read after the last task ends)."""

    def summary_results(self, job_id: str, *, order: Callable[[TaskResult], Any], limit: int) -> Iterator[TaskResult]:
        """Brief results (see :meth:`list_task_results`) holding at least each state's first ``limit``
        in ``order``: what a summary table shows. Every task's, unless a backend knows each task's
        state and label without its result, and reads only those."""
        return self.list_task_results(job_id, brief=True)

    @abstractmethod
    def read_task_log(self, job_id: str, task_id: str, *, stream: str = "stdout") -> bytes:
        """The task's ``stdout`` or ``stderr`` as the command wrote it."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job: no new task starts, running ones are killed; records stay."""

    def end_finished_run(self, job_id: str) -> None:  # noqa: B027  (nothing to release by default)
        """What a job whose tasks have all ended still holds, released as the end of `run` would (azure:
        its run's Batch job terminated, its per-job pool deleted); its state stays how it ended."""

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """Remove the job, its task records and anything batchyard created for it only."""

    @abstractmethod
    def job(self, job_id: str) -> Job:
        """The job as it was submitted."""

    # --- change-aware re-runs (core/rerun.py) ---------------------------------------------------------
    def prior_tasks(self, job_id: str) -> dict[str, PriorTask]:
        """What the records say of each task's last run, by lower-cased task id ({} for a new job)."""
        return {}

    def rerun_plan(self, job: Job, tasks: Sequence[TaskDef], *, rerun: RerunOption = None,
                   prior: Mapping[str, PriorTask] | None = None) -> RerunPlan:
        """Which of ``tasks`` (fanned out now, each with its fingerprint) a run of ``job`` runs, and why:
        the one place every backend's submit decides it (``prior``: the records, when the caller has
        read them already; else :meth:`prior_tasks`), for ``run`` and whatever depends on the tasks."""
        from batchyard.core.rerun import decide

        return decide(job.id, tasks, self.prior_tasks(job.id) if prior is None else prior, rerun=rerun)

    def output_locations(self, job_id: str) -> list[tuple[str, str]]:
        """(container, blob prefix) pairs where the job's outputs land."""
        return self.job(job_id).output_locations()

    @classmethod
    def runs_tasks_here(cls, config: Config) -> bool:
        """Whether this backend, so configured, runs tasks on this machine (so a task may use this
        machine's paths, e.g. the submitting Python of an inline job)."""
        return False

    # --- jobs by id, compared without case as Azure Batch compares them ---------------------------------
    def list_jobs(self) -> list[JobView]:
        """Every job this backend knows, with its state, counts and times (``batchyard jobs``)."""
        raise BackendError(f"the {self.name} backend cannot list its jobs")

    def job_ids_like(self, job_id: str) -> list[str]:
        """The ids of this backend's jobs that equal ``job_id`` compared without case, as submitted."""
        return [view.job_id for view in self.list_jobs() if view.job_id.lower() == job_id.lower()]

    def resolve_job_id(self, job_id: str) -> str:
        """The id a job was submitted with, for any spelling of it (``myjob`` finds ``MyJob``): Azure
        Batch compares job ids without case, and so does every backend. ``job_id`` itself when no job
        has it (the caller's own not-found error follows)."""
        found = self.job_ids_like(job_id)
        if job_id in found or not found:
            return job_id
        if len(found) > 1:
            raise BackendError(f"job {job_id!r} matches several jobs that differ only in case: "
                               f"{', '.join(map(repr, sorted(found)))}; give the exact id")
        return found[0]

    def refuse_other_spelling(self, job_id: str) -> None:
        """Refuse to submit ``job_id`` when a job exists under another spelling of it (same id, other case)."""
        from batchyard.core.errors import JobValidationError

        other = next((found for found in self.job_ids_like(job_id) if found != job_id), None)
        if other is not None:
            raise JobValidationError(f"job {job_id}", [("id", (
                f"{job_id!r} and the existing job {other!r} differ only in case, and job ids are compared "
                f"without case (as on Azure Batch): they would be one job. Use {other!r} to work on that "
                "job, or another id"))])

    # --- shared behaviour -----------------------------------------------------------------------------
    def start_execution(self, job: Job, *, workers: int | None = None) -> None:  # noqa: B027
        """Bring up whatever runs tasks for this process (local workers); a no-op for a cloud."""

    def stop_execution(self) -> None:  # noqa: B027
        """Stop what :meth:`start_execution` started."""

    def wait(self, job_id: str, *, on_progress: ProgressCallback | None = None, poll_interval: float = 1.0,
             timeout: float | None = None) -> TaskCounts:
        """Poll task counts until every task is final (or ``timeout`` seconds pass), on a
        :class:`PollSchedule`: backing off, yet seeing the job's end soon after it comes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        schedule = PollSchedule(poll_interval)
        polls = 0
        while True:
            try:
                counts = self.task_counts(job_id)
            except JobNotFoundError:
                if not polls:
                    raise
                raise JobNotFoundError(f"job {job_id!r} was deleted while this command waited for it "
                                       "(`batchyard delete`): its running tasks were stopped and nothing more of "
                                       "it is recorded") from None
            polls += 1
            now = time.monotonic()
            if on_progress is not None:
                on_progress(counts)
            if self._settled(job_id, counts):
                self._on_settled(job_id, counts)
                return counts
            if deadline is not None and now >= deadline:
                return counts
            self._check_alive()
            time.sleep(schedule.pause(now, counts))

    def _settled(self, job_id: str, counts: TaskCounts) -> bool:
        """Whether ``wait`` is done: every task final (a backend whose counts lag adds a condition)."""
        return counts.finished

    def _on_settled(self, job_id: str, counts: TaskCounts) -> None:  # noqa: B027  (optional hook)
        """Called once by ``wait`` when every task is final (not on a timeout)."""

    def run_to_end(self, job: Job, *, workers: int | None = None, timeout: float | None = None,
                   poll_interval: float = 1.0, on_progress: ProgressCallback | None = None,
                   **execution: Any) -> TaskCounts:
        """Start what runs the tasks, wait until every task is final (or ``timeout``), stop it again.

        ``execution`` goes to :meth:`start_execution` (the local backend takes ``options`` there).
        """
        self.start_execution(job, workers=workers, **execution)
        try:
            return self.wait(job.id, on_progress=on_progress, poll_interval=poll_interval, timeout=timeout)
        finally:
            self.stop_execution()

    def serve_workers(self, *, workers: int | None = None, idle_exit_s: float | None = None,
                      jobs: Sequence[str] | None = None) -> str:
        """Start workers here for every job of this backend, or ``jobs`` (``batchyard worker``); returns a
        line saying what they serve. ``idle_exit_s``: they exit after that long without work."""
        raise BackendError(f"the {self.name} backend runs no workers on this machine (its tasks run where it "
                           "sends them); `batchyard worker` serves the local backend")

    def join_execution(self) -> None:  # noqa: B027  (nothing runs here by default)
        """Block while what :meth:`serve_workers` or :meth:`start_execution` started still runs."""

    def created_pools(self) -> list[PoolView]:
        """The pools this backend created, with their state (``batchyard pool list``)."""
        raise BackendError(f"the {self.name} backend has no pools")

    def delete_created_pool(self, pool_id: str) -> bool:
        """Delete a pool this backend created (False if it was already gone); refuse any other pool."""
        raise BackendError(f"the {self.name} backend has no pools")

    def replay_task(self, job_id: str, task_id: str, *, node_root: Path) -> TaskReplay:
        """``task_id`` of ``job_id`` as it ran (or, not started yet, as it would run), to run again
        under ``node_root`` on this machine: see :class:`TaskReplay` for what it holds.

        The definition is read where this backend keeps its truth (the local backend: the task's
        row and the job document; the azure backend: Batch's task and job). An unknown job or
        task raises :class:`~batchyard.core.errors.JobNotFoundError` /
        :class:`~batchyard.core.errors.TaskNotFoundError`. Nothing is changed anywhere.
        """
        raise BackendError(f"the {self.name} backend cannot replay a task on this machine")

    def final_step(self, job_id: str) -> FinalStepView | None:
        """The job's final step apart from its per-file tasks; None for a job without one."""
        return None

    def pool_summary(self, job_id: str) -> PoolSummary | None:
        """The pool the job runs (or ran) on; None for a backend without pools."""
        return None

    def preflight_findings(self, job: Job) -> list[Finding]:
        """What would stop the job where this backend runs it (credentials first), as ``plan`` lists it."""
        return []

    def _check_alive(self) -> None:  # noqa: B027  (optional hook, not abstract)
        """Raise if whatever runs the tasks has died (so ``wait`` does not wait forever)."""

    def output_blobs(self, job_id: str) -> Iterator[tuple[str, str]]:
        """(container, blob name) of every output of the job that ``download`` serves: here every blob
        under its output locations; the built-in backends follow the task records instead
        (:mod:`batchyard.backends.outputs`)."""
        for container, prefix in self.output_locations(job_id):
            for name in self.storage.list_blob_names(container, prefix):
                yield container, name

    def download_outputs(self, job_id: str, dest: Path) -> list[Path]:
        """Copy every output blob of the job (:meth:`output_blobs`) under ``dest/<container>/<blob name>``."""
        from batchyard.storage.downloads import download_blobs

        return download_blobs(self.storage, self.output_blobs(job_id), dest)

    def close(self) -> None:  # noqa: B027
        """Release clients and processes."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_execution()
        self.close()
