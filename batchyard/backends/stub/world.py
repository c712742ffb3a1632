"""What the stub backend knows: jobs, their tasks' records and logs, and blobs, all in memory.

One :class:`StubWorld` per ``BATCHYARD_HOME`` (``Config.home``): every backend instance made from
the same configuration (each ``batchyard`` command run in the same process) sees the same jobs,
and a test with its own home sees only its own. A test scripts what each attempt does through
:attr:`StubWorld.script` and inspects or seeds blobs through :attr:`StubWorld.blobs`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from batchyard.core.batch_semantics import STDERR_TAIL_BYTES
from batchyard.core.job import Job, TaskDef
from batchyard.node.taskspec import AttemptRecord


@dataclass(frozen=True)
class StubOutcome:
    """What one attempt of a task does: its exit code, what it prints, how long it takes (simulated
    time: nothing waits), and the blobs it uploads as ``{(container, name): data}``."""

    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.1
    uploads: dict[tuple[str, str], bytes] = field(default_factory=dict)


Script = Callable[[TaskDef, int], StubOutcome]
"""Given a task and its attempt number (1, 2, ...), what that attempt does."""


def succeed(task: TaskDef, attempt: int) -> StubOutcome:
    """The default script: every attempt succeeds and prints the task's label."""
    return StubOutcome(stdout=f"{task.label}\n")


@dataclass
class StubTask:
    """One task's record, as a backend keeps it."""

    definition: TaskDef
    state: str = "pending"  # pending | running | succeeded | failed
    started_at: str | None = None  # when it went running (its attempts carry simulated times)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    failure_category: str | None = None
    failure_message: str | None = None
    ended_at: str | None = None
    node_id: str | None = None
    stderr_tail: str = ""
    logs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class StubJob:
    job: Job
    tasks: dict[str, StubTask] = field(default_factory=dict)  # in submission order
    cancelled: bool = False
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    # Simulated time: when each worker slot is free next (set by the first execution).
    slots: list[datetime] = field(default_factory=list)


class StubWorld:
    """The in-memory state behind every stub backend made from one configuration."""

    _worlds: ClassVar[dict[Path, StubWorld]] = {}
    _worlds_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.jobs: dict[str, StubJob] = {}
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.script: Script = succeed
        self.executing: dict[str, int] = {}  # job id -> worker slots, while its execution is started
        self.tasks_per_poll: int | None = None  # None: a started execution finishes at the next poll
        self.on_poll: Callable[[str, StubJob], None] | None = None  # a test's hook, after each step

    @classmethod
    def of(cls, home: Path) -> StubWorld:
        """The world of ``home`` (a configuration's ``BATCHYARD_HOME``), made on first use."""
        with cls._worlds_lock:
            return cls._worlds.setdefault(home.resolve(), StubWorld())

    @classmethod
    def forget(cls, home: Path) -> None:
        with cls._worlds_lock:
            cls._worlds.pop(home.resolve(), None)

    # --- blobs ----------------------------------------------------------------------------------------
    def list_blob_names(self, container: str, prefix: str = "") -> list[str]:
        with self.lock:
            return sorted(name for (box, name) in self.blobs if box == container and name.startswith(prefix))

    def download_bytes(self, container: str, name: str) -> bytes:
        with self.lock:
            return self.blobs[(container, name)]

    # --- execution ------------------------------------------------------------------------------------
    def advance(self, job_id: str) -> None:
        """One step of a started execution (called on every poll of the job's counts): the tasks
        started at the last step end, then up to :attr:`tasks_per_poll` pending ones start (all of
        them, ending at once, when it is None). Then :attr:`on_poll`, if a test set one, sees the job."""
        with self.lock:
            slots = self.executing.get(job_id)
            stub = self.jobs.get(job_id)
            if stub is None:
                return
            if slots is not None:
                for task in stub.tasks.values():
                    if task.state == "running":
                        self._finish(stub, task, slots)
                pending = [t for t in stub.tasks.values() if t.state == "pending"]
                for task in pending if self.tasks_per_poll is None else pending[:self.tasks_per_poll]:
                    task.state, task.started_at = "running", datetime.now(UTC).isoformat()
                    if self.tasks_per_poll is None:
                        self._finish(stub, task, slots)
            if self.on_poll is not None:
                self.on_poll(job_id, stub)

    def _finish(self, stub: StubJob, task: StubTask, slots: int) -> None:
        """Run every attempt of ``task`` (the script decides each) on the slot free first."""
        if not stub.slots:
            stub.slots = [datetime.now(UTC)] * slots
        retries = stub.job.constraints.max_task_retry_count
        while True:
            number = len(task.attempts) + 1
            outcome = self.script(task.definition, number)
            slot = min(range(len(stub.slots)), key=stub.slots.__getitem__)
            started = stub.slots[slot]
            ended = started + timedelta(seconds=outcome.seconds)
            stub.slots[slot] = ended
            ok = outcome.exit_code == 0
            task.attempts.append(AttemptRecord(
                number=number, started_at=started.isoformat(), ended_at=ended.isoformat(),
                exit_code=outcome.exit_code, failure_category=None if ok else "exit_code",
                failure_message=None if ok else f"command exited with code {outcome.exit_code}",
                node_id=f"stub-{slot}",
            ).to_dict())
            task.logs = {"stdout": outcome.stdout.encode(), "stderr": outcome.stderr.encode()}
            self.blobs.update(outcome.uploads)
            if ok or (retries >= 0 and number > retries):
                break
        last = task.attempts[-1]
        task.state = "succeeded" if ok else "failed"
        task.exit_code, task.failure_category = outcome.exit_code, last["failure_category"]
        task.failure_message, task.ended_at, task.node_id = last["failure_message"], last["ended_at"], last["node_id"]
        task.stderr_tail = outcome.stderr.encode()[-STDERR_TAIL_BYTES:].decode(errors="replace")
