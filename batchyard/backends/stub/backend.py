"""The stub backend: the :class:`~batchyard.backends.base.Backend` contract kept in memory.

Submit fans the job out as every backend does (a CSV task table, or the blobs of the input
container, here the world's in-memory ones; ``inputs.local_dir`` files are read into them) and
is idempotent the same way (:mod:`batchyard.core.rerun`): succeeded tasks with the same fingerprint
are kept, changed, failed and new ones queued again. Nothing runs
until :meth:`StubBackend.start_execution`; then every poll of the counts advances the job (see
:meth:`StubWorld.advance`), each attempt doing what the world's script says. Unknown jobs and
tasks raise the errors the other backends raise, with the same messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from batchyard.backends.base import Backend, JobView, SubmitResult, TaskCounts, TaskResult, final_state
from batchyard.backends.stub.world import StubJob, StubTask, StubWorld
from batchyard.core.config import Config
from batchyard.core.errors import JobNotFoundError, JobValidationError, TaskNotFoundError
from batchyard.core.job import Job, TaskDef, tasks_from_blob_names, tasks_from_table
from batchyard.core.rerun import PriorTask, RerunOption, RerunPlan, blob_identity, with_fingerprints

FINAL = ("succeeded", "failed")


class StubBackend(Backend):
    """Jobs in memory (one :class:`StubWorld` per ``BATCHYARD_HOME``); register it with
    :func:`batchyard.backends.stub.register`."""

    name = "stub"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.world = StubWorld.of(config.home)
        self.storage = self.world  # what Backend.download_outputs reads blobs from
        self._started: list[str] = []

    # --- submit ----------------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Nothing to reach: always ready."""

    def fan_out(self, job: Job) -> list[TaskDef]:
        if job.tasks is not None:
            return list(tasks_from_table(job))
        assert job.inputs is not None
        if job.inputs.local_dir:
            self._read_local_dir(job)
        names = self.world.list_blob_names(job.inputs.container, job.inputs.prefix)
        tasks = list(tasks_from_blob_names(job, names))
        if not tasks:
            raise JobValidationError(f"job {job.id}", [(
                "inputs", f"no blob in container {job.inputs.container!r} under prefix {job.inputs.prefix!r} "
                          f"matches glob {job.inputs.glob!r}")])
        return tasks

    def _read_local_dir(self, job: Job) -> None:
        assert job.inputs is not None and job.inputs.local_dir is not None
        folder = (job.base_dir / job.inputs.local_dir).resolve()
        if not folder.is_dir():
            raise JobValidationError(f"job {job.id}", [("inputs.local_dir", f"{folder} is not a folder")])
        with self.world.lock:
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
                name = job.inputs.prefix + path.relative_to(folder).as_posix()
                self.world.blobs[(job.inputs.container, name)] = path.read_bytes()

    def submit(self, job: Job, *, rerun: RerunOption = None,
               on_plan: Callable[[RerunPlan], None] | None = None) -> SubmitResult:
        tasks = self._fingerprinted(job, self.fan_out(job))
        plan = self.rerun_plan(job, tasks, rerun=rerun)
        if on_plan is not None:
            on_plan(plan)
        with self.world.lock:
            stub = self.world.jobs.get(job.id)
            if stub is None:
                stub = self.world.jobs[job.id] = StubJob(job)
            stub.job, stub.cancelled = job, False
            known = stub.tasks
            stub.tasks = {}
            for task in tasks:
                record = known.get(task.task_id)
                stub.tasks[task.task_id] = StubTask(task) if task.task_id in plan.reasons or record is None else record
        return SubmitResult(job_id=job.id, total=len(tasks), enqueued=len(plan.reasons), already_succeeded=plan.kept,
                            already_running=plan.running, rerun_failed=plan.counts()["failed"], rerun=plan)

    def _fingerprinted(self, job: Job, tasks: list[TaskDef]) -> list[TaskDef]:
        """Each task with its fingerprint: the world's blobs are their own identity (MD5 and size)."""
        digests = {rf.target: hashlib.md5((job.base_dir / rf.source).read_bytes(), usedforsecurity=False).hexdigest()
                   for rf in job.resource_files if (job.base_dir / rf.source).is_file()}
        with self.world.lock:
            identities = {name: blob_identity(md5=hashlib.md5(data, usedforsecurity=False).digest(), etag=None,
                                              size=len(data))
                          for (container, name), data in self.world.blobs.items()
                          if job.inputs is not None and container == job.inputs.container}
        return with_fingerprints(job, tasks, resources=digests, identities=identities)

    def prior_tasks(self, job_id: str) -> dict[str, PriorTask]:
        with self.world.lock:
            stub = self.world.jobs.get(job_id)
            records = dict(stub.tasks) if stub is not None else {}
        return {task_id.lower(): PriorTask(state=str(final_state(r.state, r.failure_category)),
                                           fingerprint=r.definition.fingerprint, live=r.state == "running")
                for task_id, r in records.items()}

    # --- execution -------------------------------------------------------------------------------------
    def start_execution(self, job: Job | None = None, *, workers: int | None = None) -> None:
        """Let the job's tasks run (all jobs of this world when ``job`` is None) on ``workers`` slots."""
        with self.world.lock:
            ids = [job.id] if job is not None else list(self.world.jobs)
            for job_id in ids:
                self.world.executing[job_id] = workers or self.config.workers
            self._started.extend(ids)

    def stop_execution(self) -> None:
        with self.world.lock:
            for job_id in self._started:
                self.world.executing.pop(job_id, None)
            self._started.clear()

    # --- queries ---------------------------------------------------------------------------------------
    def _require(self, job_id: str) -> StubJob:
        stub = self.world.jobs.get(job_id)
        if stub is None:
            raise JobNotFoundError(f"job {job_id!r} not found")
        return stub

    def task_counts(self, job_id: str) -> TaskCounts:
        self.world.advance(job_id)
        with self.world.lock:
            return _counts(self._require(job_id))

    def list_jobs(self) -> list[JobView]:
        with self.world.lock:
            return [_view(stub) for stub in self.world.jobs.values()]

    def list_task_results(self, job_id: str, *, brief: bool = False) -> Iterator[TaskResult]:
        with self.world.lock:
            tasks = list(self._require(job_id).tasks.values())
            results = [_result(job_id, t) for t in tasks]
        yield from results

    def read_task_log(self, job_id: str, task_id: str, *, stream: str = "stdout") -> bytes:
        with self.world.lock:
            task = self._require(job_id).tasks.get(task_id)
            if task is None:
                raise TaskNotFoundError(f"task {task_id!r} not found in job {job_id!r}")
            if not task.attempts:
                raise TaskNotFoundError(f"task {task_id!r} has no {stream} yet (state {task.state})")
            return task.logs.get(stream, b"")

    def job(self, job_id: str) -> Job:
        with self.world.lock:
            return self._require(job_id).job

    # --- control ---------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        """Tasks not final yet fail as ``cancelled`` (none runs any more); records stay."""
        now = datetime.now(UTC).isoformat()
        with self.world.lock:
            stub = self._require(job_id)
            stub.cancelled = True
            self.world.executing.pop(job_id, None)
            for task in stub.tasks.values():
                if task.state not in FINAL:
                    task.state, task.failure_category = "failed", "cancelled"
                    task.failure_message, task.ended_at = "the job was cancelled", now

    def delete(self, job_id: str) -> None:
        with self.world.lock:
            self._require(job_id)
            del self.world.jobs[job_id]
            self.world.executing.pop(job_id, None)

    def download_outputs(self, job_id: str, dest: Path) -> list[Path]:
        self.job(job_id)  # an unknown job is an error, not an empty download
        return super().download_outputs(job_id, dest)


def _result(job_id: str, task: StubTask) -> TaskResult:
    first = task.attempts[0] if task.attempts else {}
    return TaskResult(
        job_id=job_id, task_id=task.definition.task_id, state=final_state(task.state, task.failure_category),
        label=task.definition.label,
        exit_code=task.exit_code, failure_category=task.failure_category, failure_message=task.failure_message,
        attempts=len(task.attempts), started_at=first.get("started_at", task.started_at), ended_at=task.ended_at,
        node_id=task.node_id, stderr_tail=task.stderr_tail, attempt_records=tuple(task.attempts),
    )


def _counts(stub: StubJob) -> TaskCounts:
    states = [final_state(t.state, t.failure_category) for t in stub.tasks.values()]
    return TaskCounts(pending=states.count("pending"), running=states.count("running"),
                      succeeded=states.count("succeeded"), failed=states.count("failed"),
                      cancelled=states.count("cancelled"))


def _view(stub: StubJob) -> JobView:
    counts = _counts(stub)
    state = "cancelled" if stub.cancelled else "completed" if counts.total and counts.finished else "active"
    times = [t.ended_at for t in stub.tasks.values() if t.ended_at]
    return JobView(job_id=stub.job.id, backend="stub", state=state, counts=counts, created_at=stub.created_at,
                   updated_at=max(times, default=stub.created_at))
