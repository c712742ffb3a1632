"""One task's life on a node: stage, run, upload, record.

Shared unchanged by the local backend's nodes and the Batch API emulator's nodes, so a
command sees the same world under both (and under real Azure Batch, whose layout and
variables this copies; the rules both share with Azure are in
:mod:`batchyard.core.batch_semantics`):

    $AZ_BATCH_NODE_ROOT_DIR/
        shared/                       AZ_BATCH_NODE_SHARED_DIR
        startup/                      AZ_BATCH_NODE_STARTUP_DIR
        workitems/<job>/job-1/<task>/ AZ_BATCH_TASK_DIR
            wd/                       AZ_BATCH_TASK_WORKING_DIR (the command's cwd)
            stdout.txt  stderr.txt

Guarantees to the command:
- it runs with ``argv`` exactly as given (no shell), cwd = its working dir, in its own
  process group; at the wall-clock limit the whole group (and any descendant that left
  it) is killed;
- every resource file is fully downloaded before it starts (missing input -> the task
  fails as ``input_missing`` and is not retried);
- it never sees batchyard's own secrets in its environment;
- outputs are uploaded only after it exits, per ``upload_on``; a file that resolves
  outside the working dir (a symlink out) is never followed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from batchyard.core.batch_semantics import (
    JOB_CANCELLED,
    PERMANENT_FAILURES,
    batch_exit_code,
    log_file_name,
    output_blob_name,
    staging_code,
    tail_offset,
    tail_text,
)
from batchyard.core.errors import AuthenticationError, BatchyardError, SourceMissingError, StorageError, UnsafePathError
from batchyard.core.paths import fnmatch_name, match_outputs, pattern_base, safe_relative_path
from batchyard.core.redact import redact
from batchyard.node import docker
from batchyard.node.environment import task_environment
from batchyard.node.process_tree import WATCHDOG, kill_process_tree
from batchyard.node.taskspec import (
    AttemptRecord,
    NodeContext,
    OutputFile,
    ResourceFile,
    TaskOutcome,
    TaskSpec,
    now_iso,
)
from batchyard.storage.transfer import BlobTransfer

# Importable from here too: the paths helpers (batchyard.core.paths) and the task types (taskspec).
__all__ = [
    "PERMANENT_FAILURES", "AttemptRecord", "NodeContext", "OutputFile", "ResourceFile", "StagedAttempt",
    "TaskFinish", "TaskOutcome", "TaskSpec", "fnmatch_name", "kill_process_tree", "match_outputs", "now_iso",
    "planned_downloads", "run_attempt", "run_task", "run_task_commands", "safe_relative_path", "should_retry",
    "stage_ahead", "task_environment",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- run
def _stderr_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(tail_offset(path.stat().st_size))
            return tail_text(fh.read())
    except OSError:
        return ""


class _Attempt:
    """State of one attempt, so each step can fail with its own category."""

    def __init__(self, spec: TaskSpec, node: NodeContext, number: int, slot: int) -> None:
        self.spec, self.node, self.number, self.slot = spec, node, number, slot
        self.task_dir = node.task_dir(spec.job_id, spec.task_id)
        self.wd = self.task_dir / "wd"
        self.started_at = now_iso()
        self.ended_at: str | None = None  # set when the attempt's slot was free before its record
        self.exit_code: int | None = None

    def record(self, category: str | None, reason: str | None, batch_code: str | None = None) -> AttemptRecord:
        return AttemptRecord(
            number=self.number, started_at=self.started_at, ended_at=self.ended_at or now_iso(),
            exit_code=self.exit_code,
            failure_category=category, failure_message=redact(reason) if reason else None,
            node_id=self.node.node_id, slot=self.slot, batch_code=batch_code,
        )


def _stage(attempt: _Attempt, transfer: BlobTransfer) -> None:
    # A retry starts from a clean working dir, like a fresh task on another node.
    if attempt.task_dir.exists():
        shutil.rmtree(attempt.task_dir, ignore_errors=True)
        if attempt.task_dir.exists():  # the last attempt's command left what cannot be removed
            raise UnsafePathError(f"the task dir {attempt.task_dir} could not be emptied for a new attempt")
    attempt.wd.mkdir(parents=True, exist_ok=True)
    for rf in attempt.spec.resource_files:
        # A relative path without '..' stays inside: the working dir was just made (or emptied)
        # and nothing but this loop, which writes regular files only, has written into it yet, so
        # no symlink can lead out (resolving each path here cost ~0.2 ms per file).
        dest = attempt.wd / safe_relative_path(rf.file_path, what=f"resource file {rf.file_path!r}")
        if rf.cache_key:
            _stage_cached(attempt.node, rf, dest, transfer)
        else:
            transfer.download(dest, container=rf.container, name=rf.blob, url=rf.http_url)


def _stage_cached(node: NodeContext, rf: ResourceFile, dest: Path, transfer: BlobTransfer) -> None:
    key = safe_relative_path(rf.cache_key or "", what="resource cache key")
    cached = node.root / "cache" / key
    if not cached.is_file():  # download() writes a .part file and renames: a partial copy is never used
        transfer.download(cached, container=rf.container, name=rf.blob, url=rf.http_url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)


def _execute(attempt: _Attempt, cancel: threading.Event | None) -> str | None:
    """Run the command; returns None, 'timeout' or 'cancelled'."""
    spec = attempt.spec
    env = task_environment(spec, attempt.node, attempt.task_dir)
    if spec.container_image:
        attempt.exit_code, stopped = docker.run(spec, attempt.node, attempt.task_dir, env, cancel)
        return stopped
    task_dir = attempt.task_dir
    with (task_dir / log_file_name("stdout")).open("wb") as out, (task_dir / log_file_name("stderr")).open("wb") as err:
        proc = subprocess.Popen(
            list(spec.argv), cwd=attempt.wd, env=env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=err, start_new_session=True, close_fds=True,
        )
        deadline = time.monotonic() + spec.max_wall_clock_seconds if spec.max_wall_clock_seconds else None
        watch = WATCHDOG.watch(proc, deadline=deadline, cancel=cancel, task_dir=attempt.task_dir)
        # Recorded as Batch reports it (a signal death as a shell shows it: SIGKILL at the wall clock is
        # 137), here where every dispatcher's record starts, so local, emulator and Azure agree.
        try:
            attempt.exit_code = batch_exit_code(proc.wait())
        finally:
            stopped = WATCHDOG.release(watch)
        if stopped:
            attempt.exit_code = batch_exit_code(proc.returncode)
            return stopped
        # The leader exited; children it left in its group would outlive the task.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return None


def _upload_plan(attempt: _Attempt, ran_ok: bool) -> _Plan:
    """The files to upload for this outcome, in order, as (path, blob name, output); with the
    failure (category, reason) found on the way, which stops the plan there."""
    plan: list[tuple[Path, str, OutputFile]] = []
    for output in attempt.spec.output_files:
        wanted = output.upload_on == "completion" or (output.upload_on == "success") == ran_ok
        if not wanted:
            continue
        try:
            matches = match_outputs(attempt.wd, output.pattern)
        except UnsafePathError as exc:  # a pattern reaching out of the task dir (from an API caller)
            return plan, "unsafe_path", str(exc)
        if not matches:
            if output.optional or not ran_ok:
                continue
            return plan, "output_missing", f"output pattern {output.pattern!r} matched no file in the working dir"
        _, has_wildcard = pattern_base(output.pattern.removeprefix("../"))
        for path, rel in matches:
            if output.skip_empty and path.stat().st_size == 0:
                continue
            plan.append((path, output_blob_name(output.path, rel, wildcard=has_wildcard), output))
    return plan, None, None


_Plan = tuple[list[tuple[Path, str, OutputFile]], str | None, str | None]


def _upload(attempt: _Attempt, transfer: BlobTransfer, ran_ok: bool,
            planned: _Plan | None = None) -> tuple[str | None, str | None, list[str]]:
    """Upload outputs for this outcome (``planned`` by :func:`_upload_plan` already, or now);
    returns (category, reason, uploaded names)."""
    plan, category, reason = planned or _upload_plan(attempt, ran_ok)
    uploaded: list[str] = []
    for path, name, output in plan:
        try:
            transfer.upload(path, blob_name=name, container=output.container, container_url=output.container_url)
        except (StorageError, AuthenticationError) as exc:
            return "upload_failed", str(exc), uploaded
        uploaded.append(name)
    return category, reason, uploaded


def _stage_checked(attempt: _Attempt, transfer: BlobTransfer) -> AttemptRecord | None:
    """Stage the attempt's files; the failed attempt's record, or None when the command may start."""
    try:
        _stage(attempt, transfer)
    except UnsafePathError as exc:
        return attempt.record("unsafe_path", str(exc))
    except (StorageError, AuthenticationError) as exc:  # a refused SAS is the task's failure, not a crash
        missing_input = isinstance(exc, SourceMissingError) and any(rf.is_input for rf in attempt.spec.resource_files)
        return attempt.record("input_missing" if missing_input else "staging_failed", str(exc), staging_code(exc))
    return None


def _run_command(attempt: _Attempt, cancel: threading.Event | None) -> tuple[AttemptRecord | None, str | None,
                                                                             str | None]:
    """Run the staged command: (the record if it ended the attempt early, category, reason)."""
    spec = attempt.spec
    try:
        stopped = _execute(attempt, cancel)
    except BatchyardError as exc:  # no container engine, image missing: its text says the fix
        with contextlib.suppress(OSError):
            (attempt.task_dir / log_file_name("stderr")).write_text(f"batchyard: {exc}\n")
        return attempt.record("start_failed", str(exc)), None, None
    except OSError as exc:  # command not found, not executable
        with contextlib.suppress(OSError):
            (attempt.task_dir / log_file_name("stderr")).write_text(
                f"batchyard: cannot start {spec.argv[0]!r}: {exc}\n")
        return attempt.record("start_failed", f"cannot start {spec.argv[0]!r}: {exc.strerror or exc}"), None, None
    if stopped == "timeout":
        return None, "timeout", f"killed after max_wall_clock_time ({spec.max_wall_clock_seconds:g} s)"
    if stopped == "cancelled":
        return attempt.record("cancelled", JOB_CANCELLED), None, None
    if attempt.exit_code != 0:
        return None, "exit_code", f"command exited with code {attempt.exit_code}"
    return None, None, None


def _upload_and_record(attempt: _Attempt, transfer: BlobTransfer, category: str | None,
                       reason: str | None, planned: _Plan | None = None) -> tuple[AttemptRecord, list[str]]:
    up_category, up_reason, uploaded = _upload(attempt, transfer, ran_ok=category is None, planned=planned)
    if category is None and up_category is not None:
        category, reason = up_category, up_reason
    return attempt.record(category, reason), uploaded


class StagedAttempt:
    """An attempt whose files were staged ahead of time (while another task's command ran).

    Made by :func:`stage_ahead`; handed to :func:`run_task_commands`, or :meth:`discard`-ed if the
    task is not run after all.
    """

    def __init__(self, attempt: _Attempt, failed: AttemptRecord | None) -> None:
        self._attempt, self._failed = attempt, failed

    @property
    def failure(self) -> AttemptRecord | None:
        """The record of a staging that failed (its reason says which file); None: all is staged."""
        return self._failed

    def discard(self) -> None:
        shutil.rmtree(self._attempt.task_dir, ignore_errors=True)


def stage_ahead(spec: TaskSpec, *, node: NodeContext, transfer: BlobTransfer, number: int = 1,
                slot: int = 0) -> StagedAttempt:
    """Stage attempt ``number`` of ``spec`` now; never raises for a staging failure (it is kept)."""
    attempt = _Attempt(spec, node, number, slot)
    return StagedAttempt(attempt, _stage_checked(attempt, transfer))


def run_attempt(
    spec: TaskSpec, *, node: NodeContext, transfer: BlobTransfer, number: int = 1, slot: int = 0,
    cancel: threading.Event | None = None,
) -> tuple[AttemptRecord, list[str]]:
    """Run one attempt end to end. Never raises for task-level failures: they are recorded.

    Its small files are fetched, and its small outputs and logs put, each set in one burst (as
    a node agent moves a task's files side by side, not one after another); what a burst did
    not get or put is moved alone, with the usual retries and errors.
    """
    attempt = _Attempt(spec, node, number, slot)
    with transfer.prefetched(planned_downloads(spec, node)):
        early = _stage_checked(attempt, transfer)
    if early is None:
        early, category, reason = _run_command(attempt, cancel)
    if early is not None:
        return early, []
    planned = _upload_plan(attempt, ran_ok=category is None)
    with transfer.uploaded_ahead([(path, name, out.container, out.container_url) for path, name, out in planned[0]]):
        return _upload_and_record(attempt, transfer, category, reason, planned)


def should_retry(record: AttemptRecord, spec: TaskSpec) -> bool:
    if record.succeeded or record.failure_category in PERMANENT_FAILURES:
        return False
    return spec.max_task_retry_count < 0 or record.number <= spec.max_task_retry_count


def run_task(
    spec: TaskSpec, *, node: NodeContext, transfer: BlobTransfer, first_attempt: int = 1, slot: int = 0,
    cancel: threading.Event | None = None,
    on_attempt: Callable[[AttemptRecord], None] | None = None,
) -> TaskOutcome:
    """Run attempts until one succeeds, a failure is permanent, or retries are used up."""
    return run_task_commands(spec, node=node, transfer=transfer, first_attempt=first_attempt, slot=slot,
                             cancel=cancel, on_attempt=on_attempt)()


def run_task_commands(
    spec: TaskSpec, *, node: NodeContext, transfer: BlobTransfer, first_attempt: int = 1, slot: int = 0,
    cancel: threading.Event | None = None, on_attempt: Callable[[AttemptRecord], None] | None = None,
    staged: StagedAttempt | None = None,
) -> TaskFinish:
    """Run the task's attempts up to the last one's command (:func:`run_task` without its end);
    the returned ``finish`` does the rest.

    ``finish()`` uploads the last attempt's outputs and logs, removes the task dir and returns
    the outcome; the local backend calls it on another thread while the next task's command
    runs. This changes no decision: whether to retry is known before the upload, because an upload can
    only turn a success into a permanent failure (``output_missing``, ``upload_failed``), never
    into a retry. An attempt that is retried is uploaded here, before its working dir is reset.
    ``staged`` is the first attempt, staged ahead by :func:`stage_ahead`. Such a pipelined task's
    attempts span the slot's time only: the first starts when its command does (its staging
    overlapped the previous command) and the last ends when its command does (its upload
    overlaps the next), so a slot's attempts never overlap on a timeline.
    """
    attempts: list[AttemptRecord] = []
    number = first_attempt
    while True:
        if staged is not None and number == first_attempt:
            attempt, early = staged._attempt, staged._failed
            # Staged while the slot's previous command ran: on the slot's timeline it starts now.
            attempt.started_at = now_iso()
        else:
            attempt = _Attempt(spec, node, number, slot)
            early = _stage_checked(attempt, transfer)
        if early is None:
            early, category, reason = _run_command(attempt, cancel)
        if early is None and (category is None or not should_retry(attempt.record(category, reason), spec)):
            if staged is not None:  # pipelined: the outputs go up while the slot's next command runs
                attempt.ended_at = now_iso()
            return TaskFinish(spec, node, transfer, attempts, attempt, category, reason, on_attempt)
        record = early or _upload_and_record(attempt, transfer, category, reason)[0]
        attempts.append(record)
        if on_attempt is not None:
            on_attempt(record)
        if not should_retry(record, spec):  # recorded and uploaded already: nothing is left but the outcome
            return TaskFinish(spec, node, transfer, attempts, None, None, None, on_attempt)
        number += 1


@dataclass
class TaskFinish:
    """What is left of a task after its last command: upload its outputs, record, clean up.

    Call it once. :meth:`uploads` says beforehand which files that call will upload, so a
    caller can put several tasks' outputs in one burst first (``BlobTransfer.uploaded_ahead``).
    """

    spec: TaskSpec
    node: NodeContext
    transfer: BlobTransfer
    attempts: list[AttemptRecord]
    attempt: _Attempt | None  # None: the last attempt is recorded and its outputs uploaded already
    category: str | None
    reason: str | None
    on_attempt: Callable[[AttemptRecord], None] | None
    planned: _Plan | None = None  # made by uploads(), used by the call (the command has exited)

    def uploads(self) -> list[tuple[Path, str, str | None, str | None]]:
        """(path, blob name, container, container URL) of each file the call will upload."""
        if self.attempt is None:
            return []
        self.planned = _upload_plan(self.attempt, ran_ok=self.category is None)
        return [(path, name, output.container, output.container_url) for path, name, output in self.planned[0]]

    def __call__(self) -> TaskOutcome:
        if self.attempt is None:
            return _outcome(self.spec, self.node, self.attempts, [])
        record, uploaded = _upload_and_record(self.attempt, self.transfer, self.category, self.reason,
                                              self.planned)
        self.attempts.append(record)
        if self.on_attempt is not None:
            self.on_attempt(record)
        return _outcome(self.spec, self.node, self.attempts, uploaded)


def planned_downloads(spec: TaskSpec, node: NodeContext) -> list[tuple[str | None, str | None, str | None]]:
    """(container, blob, URL) of each file that staging ``spec`` will download (not cached yet)."""
    refs = []
    for rf in spec.resource_files:
        if rf.cache_key and (node.root / "cache" / rf.cache_key).is_file():
            continue
        refs.append((rf.container, rf.blob, rf.http_url))
    return refs


def _outcome(spec: TaskSpec, node: NodeContext, attempts: list[AttemptRecord], uploaded: list[str]) -> TaskOutcome:
    task_dir = node.task_dir(spec.job_id, spec.task_id)
    tail = _stderr_tail(task_dir / log_file_name("stderr"))
    if not spec.keep_task_dir:
        shutil.rmtree(task_dir, ignore_errors=True)
    return TaskOutcome(succeeded=attempts[-1].succeeded, attempts=tuple(attempts), stderr_tail=tail,
                       uploaded=tuple(uploaded))
