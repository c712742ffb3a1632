"""The local backend's worker: take a message, claim its tasks, run them, record, delete.

Delivery is at least once and results are exactly once:

- a message is received with a visibility lease that a keeper thread renews while the
  command runs, together with the task row's claim (``claim_expires``);
- before running, the worker claims the task row with an ETag-guarded update; a row
  already final is skipped (duplicate message), one claimed by a live worker is left to
  it, one whose claim expired (its worker died) is taken over and the lost attempt noted;
- the final result is written with the claim's ETag, so a worker that lost its claim
  (paused past its lease) cannot overwrite the result of the one that took over;
- only then is the message deleted. A message that is not the job owner's work (see
  :mod:`batchyard.backends.local.admission`: malformed, naming another job than its queue's, a
  definition without the job's MAC) goes to ``<queue>-poison`` with the reason, once, and is
  deleted; so does one delivered more than ``max_dequeue_count`` times, whose unfinished tasks are
  failed as ``poison``. One of a job deleted meanwhile is dropped (logged at debug only).

Messages come from the queues of the jobs the worker serves, in turn
(:mod:`batchyard.backends.local.job_queues`): every job of its configuration, or
``WorkerOptions.jobs``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.final_step import LISTER_TARGET, LOCATIONS_TARGET, final_as_job, final_blob
from batchyard.backends.local.admission import Admission, Refused, poison_once, record_poisoned
from batchyard.backends.local.claims import ClaimKeeper
from batchyard.backends.local.grouped_rows import GROUP_WINDOW_S, MAX_GROUP, RECORD_DELAY_S
from batchyard.backends.local.job_queues import JobQueue, JobQueues
from batchyard.backends.local.pipeline import UPLOAD_HOLD_S, MessageRun, log_redelivered
from batchyard.backends.local.rows import task_def_from_entity
from batchyard.backends.local.store import JobStore, StorageLostError
from batchyard.core.batch_semantics import LOG_STREAMS, log_blob_name, log_file_name
from batchyard.core.config import Config
from batchyard.core.final_step import FINAL_TASK_ID
from batchyard.core.job import Job, OutputSpec, output_prefix
from batchyard.core.redact import redact
from batchyard.node.runner import (
    NodeContext,
    OutputFile,
    ResourceFile,
    TaskSpec,
)
from batchyard.storage.account import Storage
from batchyard.storage.transfer import BlobTransfer

log = logging.getLogger(__name__)

JOB_CACHE_S = 2.0


@dataclass(frozen=True)
class WorkerOptions:
    lease_s: float = 30.0
    max_dequeue_count: int = 5
    keep_task_dirs: bool = False
    idle_exit_s: float | None = None  # exit after this long with nothing to do (None: never)
    poll_max_s: float = 1.0
    # Timing knobs of the pipeline. Left alone they follow the machine: grouping and bursts depend
    # on how long the recent commands took. Tests pin them, so what they check does not depend on
    # how busy the machine is (docs/testing.md).
    pace_s: float | None = None  # assume every command takes this long (None: measure them)
    upload_hold_s: float = UPLOAD_HOLD_S  # finished outputs wait this long for the running command
    record_delay_s: float = RECORD_DELAY_S  # a finished result waits this long for others
    jobs: tuple[str, ...] | None = None  # serve only these jobs (None: every job of the configuration)


Checkpoint = Callable[[str], None]
"""A test hook: called with the name of a point the worker reaches (see :data:`CHECKPOINTS`). It
runs on the worker's own thread, so a hook that blocks holds the worker at that point."""

CHECKPOINTS = (
    "next-message-left",  # during a message's last command: the next message stays in the queue
    "next-message-opened",  # during a message's last command: the next message was taken and opened
)


def log_output(job_id: str, task_id: str, log_container: str) -> tuple[OutputFile, OutputFile]:
    """stdout/stderr are uploaded after every attempt, like Batch's ``../std*.txt`` output files."""
    return tuple(  # type: ignore[return-value]
        OutputFile(pattern=f"../{log_file_name(stream)}", path=log_blob_name(job_id, task_id, stream),
                   upload_on="completion", optional=True, container=log_container, skip_empty=True)
        for stream in LOG_STREAMS
    )


def build_local_spec(job: Job, entity: dict[str, Any], store: JobStore, *, keep_task_dir: bool,
                     retry_bonus: int = 0, spec_hash: str = "") -> TaskSpec:
    """The TaskSpec of one task row under the local backend (blobs by account reference)."""
    task = task_def_from_entity(entity)
    extra: list[ResourceFile] = []
    if task.task_id == FINAL_TASK_ID and job.final is not None:  # its outputs, the lister and the locations
        extra = [ResourceFile(file_path=target, container=store.system_container, blob=final_blob(job.id, target))
                 for target in (LISTER_TARGET, LOCATIONS_TARGET)]
        job = final_as_job(job)
    # The spec hash changes whenever a re-submit could have changed a resource file, so a node's
    # cached copy is only reused for the exact submission it came from.
    resources = [
        ResourceFile(file_path=rf.target, container=store.system_container,
                     blob=store.resource_blob(job.id, rf.target),
                     cache_key=f"{job.id}/{spec_hash}/{rf.target}" if spec_hash else None)
        for rf in job.resource_files
    ] + extra
    if task.input_blob is not None and task.input_path is not None:
        resources.append(ResourceFile(file_path=task.input_path, container=task.input_container,
                                      blob=task.input_blob, is_input=True))
    outputs = [_output(job, out, task) for out in job.outputs]
    outputs.extend(log_output(job.id, task.task_id, store.log_container))
    retries = job.constraints.max_task_retry_count
    return TaskSpec(
        job_id=job.id, task_id=task.task_id, argv=task.argv,
        environment={**job.environment, **dict(task.environment(job))},
        resource_files=tuple(resources), output_files=tuple(outputs),
        max_wall_clock_seconds=job.constraints.max_wall_clock_time,
        max_task_retry_count=retries if retries < 0 else retries + retry_bonus,
        keep_task_dir=keep_task_dir, container_image=job.container_image, elevated=job.elevated,
    )


def _output(job: Job, out: OutputSpec, task: Any) -> OutputFile:
    prefix = output_prefix(job, out, task)
    return OutputFile(pattern=out.pattern, path=prefix, upload_on=out.upload_on, optional=out.optional,
                      container=out.container)


class Worker:
    """One worker slot: a loop over queue messages, running one task at a time."""

    def __init__(self, storage: Storage, config: Config, *, index: int = 0,
                 options: WorkerOptions | None = None, work_dir: Path | None = None,
                 checkpoint: Checkpoint | None = None) -> None:
        self.storage = storage
        self.checkpoint: Checkpoint = checkpoint or (lambda point: None)
        self.config = config
        self.store = JobStore(storage, config)
        self.transfer = BlobTransfer(storage)
        self.options = options or WorkerOptions(
            lease_s=config.local.lease_seconds, max_dequeue_count=config.local.max_dequeue_count,
            keep_task_dirs=config.local.keep_task_dirs,
        )
        host = socket.gethostname()
        self.node_id = f"{host}-w{index}"
        self.owner = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        root = (work_dir or Path(config.local.work_dir or config.home / "work")) / f"node-{os.getpid()}-{index}"
        self.node = NodeContext(root=root, node_id=self.node_id, pool_id="local", account_name="local",
                                account_url="local://", is_dedicated=True)
        self._jobs: dict[str, tuple[float, dict[str, Any], Job | None]] = {}
        self.admission = Admission(self.store, self._job, max_dequeue_count=self.options.max_dequeue_count)
        self.queues = JobQueues(self.store, jobs=self.options.jobs)
        self.tasks_run = 0
        self._pace: float | None = None  # seconds per command, recently
        # The pipeline's helper (see batchyard.backends.local.pipeline): while a command runs, it finishes the
        # task before and prepares the one after.
        self.helper = ThreadPoolExecutor(1, thread_name_prefix="pipeline")

    def note_pace(self, seconds: float) -> None:
        """Fold one task's command time into the worker's recent pace (a moving average)."""
        self._pace = seconds if self._pace is None else 0.7 * self._pace + 0.3 * seconds

    def group_size(self) -> int:
        """How many tasks one claim covers (see :class:`batchyard.backends.local.grouped_rows.RowGroups`)."""
        pace = self.options.pace_s if self.options.pace_s is not None else self._pace
        if pace is None:
            return 1
        return max(1, min(MAX_GROUP, int(GROUP_WINDOW_S / max(pace, 1e-3))))

    def task_spec(self, job: Job, entity: dict[str, Any], attempts: list[dict[str, Any]]) -> TaskSpec:
        """The spec of a claimed task's row; each attempt lost with a worker adds one retry."""
        lost = sum(1 for a in attempts if a.get("failure_category") == "lost")
        job_entity, _ = self._job(job.id)
        return build_local_spec(job, entity, self.store, keep_task_dir=self.options.keep_task_dirs,
                                retry_bonus=lost, spec_hash=str((job_entity or {}).get("spec_hash") or ""))

    def close(self) -> None:
        self.helper.shutdown(wait=True)

    # --- job info ------------------------------------------------------------------------------------
    def _job(self, job_id: str) -> tuple[dict[str, Any] | None, Job | None]:
        cached = self._jobs.get(job_id)
        if cached and cached[0] > time.monotonic():
            return cached[1], cached[2]
        entity = self.store.get_job_entity(job_id)
        if entity is None:
            return None, None
        job = cached[2] if cached and cached[1].get("spec_hash") == entity.get("spec_hash") else None
        if job is None:
            job = self.store.load_job(job_id)
        self._jobs[job_id] = (time.monotonic() + JOB_CACHE_S, entity, job)
        return entity, job

    def job_cancelled(self, job_id: str) -> bool:
        entity, _ = self._job(job_id)
        return entity is None or entity.get("state") == "cancelled"

    # --- loop ----------------------------------------------------------------------------------------
    def serve(self, stop: threading.Event | Any) -> None:
        """Handle messages until ``stop`` is set (or idle past ``idle_exit_s``)."""
        self.node.root.mkdir(parents=True, exist_ok=True)
        delay, idle_since = 0.02, time.monotonic()
        errors = 0
        close: Callable[[], None] | None = None  # the last message's close, done during the next one
        fetched: MessageRun | None = None  # the next message, opened while the last command ran
        try:
            while not stop.is_set():
                run, fetched = fetched, None
                if run is None:
                    try:
                        received = self._receive()
                        errors = 0
                    except StorageLostError:
                        raise
                    except Exception as exc:
                        errors += 1
                        wait = min(10.0, 0.5 * 2 ** min(errors, 5))
                        log.warning("storage unavailable (%s); retrying in %.1f s",
                                    redact(str(exc).splitlines()[0]), wait)
                        stop.wait(wait)
                        continue
                    if received is None:
                        if close is not None:  # nothing follows: finish the last message now
                            close, done = None, close
                            done()
                        idle_exit = self.options.idle_exit_s
                        if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                            return
                        stop.wait(delay)
                        delay = min(self.options.poll_max_s, delay * 2)
                        continue
                    run = self.open_message(*received)
                delay, idle_since = 0.02, time.monotonic()
                if run is None:  # poisoned, or could not be opened (it comes back)
                    continue
                carry, close = close, None
                try:
                    close, fetched = run.run(carry=carry, prefetch=partial(self._prefetch, stop))
                except StorageLostError:
                    raise
                except Exception as exc:  # the message comes back after its lease; nothing is lost
                    log_redelivered("handling a message", exc)
        finally:
            if close is not None:
                close()
            if fetched is not None:
                fetched.abandon()

    def _receive(self) -> tuple[Any, JobQueue] | None:
        """The next message of the jobs served, and the queue it came from (None: no job has one)."""
        return self.queues.receive(visibility_timeout=int(self.options.lease_s))

    def _prefetch(self, stop: threading.Event | Any) -> MessageRun | None:
        """The next message, taken and opened while this message's last command runs.

        Only while tasks are short (the same test as grouping claims): a long task's worker
        would hold the next message idle for as long as the command runs, where another worker
        could start it at once.
        """
        if stop.is_set() or self.group_size() <= 1:
            self.checkpoint("next-message-left")
            return None
        try:
            received = self._receive()
        except Exception:  # the main loop's next receive reports it
            return None
        opened = None if received is None else self.open_message(*received)
        self.checkpoint("next-message-opened" if opened is not None else "next-message-left")
        return opened

    def open_message(self, message: Any, source: JobQueue) -> MessageRun | None:
        """Check a message received from ``source`` and prepare its first task; None if there is
        nothing to run.

        A message refused by :class:`Admission` (malformed, over-delivered, not the job owner's
        work) goes to the poison queue; one of a deleted job is dropped. A message that fails to
        open is left to come back after its lease.
        """
        try:
            parsed, job = self.admission.admit(message, source.job_id)
        except Refused as refused:
            try:
                self._refuse(message, refused, source)
            except StorageLostError:
                raise
            except Exception as exc:
                log_redelivered("poisoning a message", exc)
            return None
        except StorageLostError:
            raise
        except Exception as exc:
            log_redelivered("checking a message", exc)
            return None
        keeper = ClaimKeeper(self.store, message, source.client, lease_s=self.options.lease_s,
                             job_cancelled=self.job_cancelled)
        keeper.start()
        run = MessageRun(self, job, parsed, keeper, message)
        try:
            run.open()
        except Exception as exc:
            run.abandon(release=False)
            if isinstance(exc, StorageLostError):
                raise
            log_redelivered("opening a message", exc)
            return None
        return run

    def _refuse(self, message: Any, refused: Refused, source: JobQueue) -> None:
        """Drop a deleted job's message; poison any other (once), record the owner's tasks as poison,
        and delete it all the same if they cannot be recorded: a message that cannot be recorded
        must not come back forever."""
        self.admission.log_refusal(message.id, refused)
        if refused.dropped:
            with contextlib.suppress(ResourceNotFoundError):  # its queue usually went with the job
                source.client.delete_message(message.id, message.pop_receipt)
            return
        poison_once(self.store, message, refused)  # if this fails the message comes back, undeleted
        try:
            if refused.verified is not None:
                record_poisoned(self.store, refused.verified, refused.reason)
        except StorageLostError:
            raise
        except Exception as exc:
            log.warning("message %s: its tasks could not be recorded as poison (it is deleted all the same): %s",
                        message.id, redact(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
        finally:
            with contextlib.suppress(ResourceNotFoundError):
                source.client.delete_message(message.id, message.pop_receipt)


class _StopOrTerminated:
    """The group's stop event, or this process told to terminate (see worker_process_main)."""

    def __init__(self, shared: Any) -> None:
        self.shared, self.terminated = shared, False

    def terminate(self, signum: int, frame: Any) -> None:
        self.terminated = True

    def is_set(self) -> bool:
        return self.terminated or bool(self.shared.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                return False
            self.shared.wait(left)
        return True


def _terminate_with_parent() -> None:
    """Ask the kernel for SIGTERM when the process that started this one exits (Linux only)."""
    import ctypes
    import signal

    import multiprocess

    parent = multiprocess.parent_process()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a lost parent is found by the lease, as before
        return
    if parent is not None and os.getppid() != parent.pid:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_process_main(connection_string: str, config: Config, index: int, stop: Any,
                        options: WorkerOptions | None = None, work_dir: str | None = None) -> None:
    """Entry point of a worker process (clients are created here, never inherited across fork)."""
    import signal

    from batchyard.core.redact import install_log_filter
    from batchyard.core.secret_handoff import hide_credentials

    install_log_filter()
    hide_credentials()  # a worker started as its own process holds the key in its environment
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # Told to terminate, or orphaned (the kernel sends SIGTERM when the parent dies, however it died):
    # this worker takes no new task and ends after its running one, never serving unowned. The handler
    # only sets a flag: taking the shared event's lock in a handler could deadlock with the main thread.
    stop = _StopOrTerminated(stop)
    signal.signal(signal.SIGTERM, stop.terminate)
    _terminate_with_parent()
    storage = Storage.from_connection_string(connection_string, fast_path=config.storage.fast_path)
    worker = Worker(storage, config, index=index, options=options, work_dir=Path(work_dir) if work_dir else None)
    try:
        worker.serve(stop)
    except StorageLostError as exc:
        log.error("%s", exc)
        raise SystemExit(3) from None
    finally:
        worker.close()
        if not worker.options.keep_task_dirs:  # the node's resource cache and empty task dirs
            shutil.rmtree(worker.node.root, ignore_errors=True)
