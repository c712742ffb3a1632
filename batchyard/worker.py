"""The local backend's worker: take a message, claim its tasks, run them, record, delete.

Delivery is at least once and results are exactly once:

- a message is received with a visibility lease that a keeper thread renews while the
  command runs, together with the task row's claim (``claim_expires``);
- before running, the worker claims the task row with an ETag-guarded update; a row
  already final is skipped (duplicate message), one claimed by a live worker is left to
  it, one whose claim expired (its worker died) is taken over and the lost attempt noted;
- the final result is written with the claim's ETag, so a worker that lost its claim
  (paused past its lease) cannot overwrite the result of the one that took over;
- only then is the message deleted. A message that cannot be parsed, names an unknown
  job, or was delivered more than ``max_dequeue_count`` times goes to ``<queue>-poison``
  with the reason, and its unfinished tasks are failed as ``poison``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from .config import Config
from .errors import JobNotFoundError, JobValidationError
from .job import Job, OutputSpec, output_prefix
from .records import JobStore, StorageLostError, TaskMessage, task_def_from_entity
from .redact import redact
from .runner import (
    AttemptRecord,
    NodeContext,
    OutputFile,
    ResourceFile,
    StagedAttempt,
    TaskOutcome,
    TaskSpec,
    now_iso,
    stage_ahead,
    start_task,
)
from .storage import BlobTransfer, Storage

log = logging.getLogger(__name__)

JOB_CACHE_S = 2.0
MAX_FINISHING = 2  # tasks whose outputs may wait for upload while the next command runs


@dataclass(frozen=True)
class WorkerOptions:
    lease_s: float = 30.0
    max_dequeue_count: int = 5
    keep_task_dirs: bool = False
    idle_exit_s: float | None = None  # exit after this long with nothing to do (None: never)
    poll_max_s: float = 1.0


def log_output(job_id: str, task_id: str, log_container: str) -> tuple[OutputFile, OutputFile]:
    """stdout/stderr are uploaded after every attempt, like Batch's ``../std*.txt`` output files."""
    return tuple(  # type: ignore[return-value]
        OutputFile(pattern=f"../{name}", path=f"{job_id}/{task_id}/{name}", upload_on="completion",
                   optional=True, container=log_container, skip_empty=True)
        for name in ("stdout.txt", "stderr.txt")
    )


def build_local_spec(job: Job, entity: dict[str, Any], store: JobStore, *, keep_task_dir: bool,
                     retry_bonus: int = 0, spec_hash: str = "") -> TaskSpec:
    """The TaskSpec of one task row under the local backend (blobs by account reference)."""
    task = task_def_from_entity(entity)
    # The spec hash changes whenever a re-submit could have changed a resource file, so a node's
    # cached copy is only reused for the exact submission it came from.
    resources = [
        ResourceFile(file_path=rf.target, container=store.system_container,
                     blob=store.resource_blob(job.id, rf.target),
                     cache_key=f"{job.id}/{spec_hash}/{rf.target}" if spec_hash else None)
        for rf in job.resource_files
    ]
    if task.input_blob is not None and task.input_path is not None:
        resources.append(ResourceFile(file_path=task.input_path, container=task.input_container,
                                      blob=task.input_blob, is_input=True))
    outputs = [_output(job, out, task) for out in job.outputs]
    outputs.extend(log_output(job.id, task.task_id, store.log_container))
    retries = job.constraints.max_task_retry_count
    return TaskSpec(
        job_id=job.id, task_id=task.task_id, argv=task.argv,
        environment={**job.environment, **dict(task.params)},
        resource_files=tuple(resources), output_files=tuple(outputs),
        max_wall_clock_seconds=job.constraints.max_wall_clock_time,
        max_task_retry_count=retries if retries < 0 else retries + retry_bonus,
        keep_task_dir=keep_task_dir, container_image=job.container_image,
    )


def _output(job: Job, out: OutputSpec, task: Any) -> OutputFile:
    prefix = output_prefix(job, out, task)
    return OutputFile(pattern=out.pattern, path=prefix, upload_on=out.upload_on, optional=out.optional,
                      container=out.container)


@dataclass
class _Claim:
    """One task this worker holds: the row's current ETag, and the flag that stops its command."""

    job_id: str
    etag: str
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False


class _Keeper(threading.Thread):
    """Renews the message lease and the claims of the message's tasks this worker holds.

    Two tasks can be held at once: one whose command runs, and the one before it whose
    outputs are being uploaded. ``renewing`` is held around each claim renewal and around the
    final write of a task, so the final write always carries the row's current ETag.
    """

    def __init__(self, worker: Worker, message: Any) -> None:
        super().__init__(daemon=True, name="lease-keeper")
        self.worker = worker
        self.message_id = message.id
        self.pop_receipt = message.pop_receipt
        self.lock = threading.Lock()
        self.renewing = threading.Lock()
        self.claims: dict[str, _Claim] = {}
        self.lost_message = False
        self._stop_event = threading.Event()

    def track(self, job_id: str, task_id: str, etag: str) -> _Claim:
        claim = _Claim(job_id, etag)
        with self.lock:
            self.claims[task_id] = claim
        return claim

    def untrack(self, task_id: str) -> None:
        with self.lock:
            self.claims.pop(task_id, None)

    def run(self) -> None:
        lease = self.worker.options.lease_s
        interval = max(0.2, min(lease / 3.0, 10.0))
        while not self._stop_event.wait(interval):
            try:
                self._renew(lease)
            except Exception as exc:  # never let the keeper die: without it the lease lapses
                log.warning("lease keeper: %s", redact(f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))

    def _renew(self, lease: float) -> None:
        store = self.worker.store
        try:
            receipt = store.queue.update_message(self.message_id, self.pop_receipt, visibility_timeout=int(lease) or 1)
            self.pop_receipt = receipt.pop_receipt
        except ResourceNotFoundError:
            self.lost_message = True  # our receipt is stale: someone else has the message
        except Exception as exc:  # transient: the next tick tries again; the claim still protects us
            log.warning("renewing message lease failed: %s", redact(str(exc).splitlines()[0]))
        with self.lock:
            held = list(self.claims.items())
        for task_id, claim in held:
            with self.renewing:
                with self.lock:
                    if self.claims.get(task_id) is not claim:
                        continue  # finished meanwhile
                try:
                    new_etag = store.renew_claim(claim.job_id, task_id, lease_s=lease, etag=claim.etag)
                except Exception as exc:
                    log.warning("renewing task claim failed: %s", redact(str(exc).splitlines()[0]))
                    continue
                if new_etag is None:
                    claim.lost = True
                    claim.cancel.set()  # someone else owns the task now: stop our copy of the command
                else:
                    claim.etag = new_etag
            if self.worker.job_cancelled(claim.job_id):
                claim.cancel.set()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


@dataclass
class _Ready:
    """A claimed task, its spec built and its first attempt staged: ready to start its command."""

    task_id: str
    spec: TaskSpec
    claim: _Claim
    first_attempt: int
    prior_attempts: list[dict[str, Any]]
    staged: StagedAttempt


class Worker:
    """One worker slot: a loop over queue messages, running one task at a time."""

    def __init__(self, storage: Storage, config: Config, *, index: int = 0,
                 options: WorkerOptions | None = None, work_dir: Path | None = None) -> None:
        self.storage = storage
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
        self.tasks_run = 0
        # The pipeline's two helpers (see _run_message): one stages the next task, one finishes the last.
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="stage-ahead")
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="finisher")

    def close(self) -> None:
        self._ahead.shutdown(wait=True)
        self._finisher.shutdown(wait=True)

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
        while not stop.is_set():
            try:
                messages = list(self.store.queue.receive_messages(
                    messages_per_page=1, max_messages=1, visibility_timeout=int(self.options.lease_s)))
                errors = 0
            except ResourceNotFoundError:
                raise StorageLostError(
                    f"queue {self.store.queue_name!r} is gone from the storage account: the job's pending "
                    "tasks are lost. Re-run the job to re-create the queue and re-queue them."
                ) from None
            except Exception as exc:
                errors += 1
                wait = min(10.0, 0.5 * 2 ** min(errors, 5))
                log.warning("storage unavailable (%s); retrying in %.1f s", redact(str(exc).splitlines()[0]), wait)
                stop.wait(wait)
                continue
            if not messages:
                if self.options.idle_exit_s is not None and time.monotonic() - idle_since > self.options.idle_exit_s:
                    return
                stop.wait(delay)
                delay = min(self.options.poll_max_s, delay * 2)
                continue
            delay, idle_since = 0.02, time.monotonic()
            for message in messages:
                try:
                    self.handle(message)
                except StorageLostError:
                    raise
                except Exception as exc:  # the message comes back after its lease; nothing is lost
                    log.error("handling a message failed (it will be redelivered): %s",
                              redact(f"{type(exc).__name__}: {exc}"))

    def handle(self, message: Any) -> None:
        try:
            parsed = TaskMessage.decode(message.content)
        except ValueError as exc:
            self._poison(message, f"malformed message: {exc}", None)
            return
        if message.dequeue_count > self.options.max_dequeue_count:
            self._poison(message, f"delivered {message.dequeue_count} times (max_dequeue_count="
                                  f"{self.options.max_dequeue_count})", parsed)
            return
        try:
            entity, job = self._job(parsed.job_id)
        except (JobValidationError, JobNotFoundError) as exc:  # a stored job that no longer loads is permanent
            self._poison(message, f"job {parsed.job_id!r} cannot be loaded: {exc}", parsed)
            return
        if entity is None or job is None:
            self._poison(message, f"job {parsed.job_id!r} not found", None)
            return
        keeper = _Keeper(self, message)
        keeper.start()
        try:
            self._run_message(job, parsed, keeper)
        finally:
            keeper.stop()
        if not keeper.lost_message:
            with contextlib.suppress(ResourceNotFoundError):
                self.store.queue.delete_message(message.id, keeper.pop_receipt)

    def _run_message(self, job: Job, message: TaskMessage, keeper: _Keeper) -> None:
        """Run a message's tasks one after another, as a pipeline of three steps.

        While task *i*'s command runs, a thread claims and stages task *i+1*, and another
        uploads task *i-1*'s outputs and records its result. Only the commands are strictly
        in sequence, so one slot still runs one command at a time; the storage round trips
        overlap them instead of adding to them. Every result is recorded before this returns,
        and the message is deleted only after that.
        """
        ids = list(dict.fromkeys(message.task_ids))  # a duplicated id would race with itself
        # One query for the message's rows; a row that changed meanwhile is re-read at claim time.
        rows = self.store.get_tasks(job.id, ids) if len(ids) > 1 else {}
        finishing: list[Future[None]] = []
        ahead: Future[_Ready | None] | None = None
        ready = self._prepare(job, ids[0], keeper, rows.get(ids[0]), message)
        try:
            for index in range(len(ids)):
                if keeper.lost_message:
                    break
                if index + 1 < len(ids):
                    following = ids[index + 1]
                    ahead = self._ahead.submit(self._prepare, job, following, keeper, rows.get(following), message)
                if ready is not None:
                    finish = start_task(ready.spec, node=self.node, transfer=self.transfer,
                                        first_attempt=ready.first_attempt, cancel=ready.claim.cancel,
                                        staged=ready.staged)
                    self.tasks_run += 1
                    while len([f for f in finishing if not f.done()]) >= MAX_FINISHING:
                        next(f for f in finishing if not f.done()).result()  # bound the outputs waiting
                    finishing.append(self._finisher.submit(self._finish, job, ready, finish, keeper))
                    ready = None
                if ahead is not None:
                    ready, ahead = ahead.result(), None
        finally:
            if ahead is not None:
                with contextlib.suppress(Exception):
                    ready = ahead.result()
            if ready is not None:  # claimed ahead but never started (the message was lost): give it back
                self._give_back(job, ready, keeper)
            for future in finishing:
                future.result()  # a failure re-raises here: the message comes back, nothing is lost

    def _give_back(self, job: Job, ready: _Ready, keeper: _Keeper) -> None:
        ready.staged.discard()
        with keeper.renewing:
            keeper.untrack(ready.task_id)
            self.store.release_claim(job.id, ready.task_id, etag=ready.claim.etag)

    def _prepare(self, job: Job, task_id: str, keeper: _Keeper, prefetched: dict[str, Any] | None = None,
                 message: TaskMessage | None = None) -> _Ready | None:
        """Claim the task and stage its first attempt; None if it is not ours to run."""
        store = self.store
        entity = prefetched or store.get_task(job.id, task_id)
        definition = message.definition(task_id) if message is not None else None
        if entity is None and definition is not None:  # never claimed: creating its row is the claim
            if self.job_cancelled(job.id):
                store.create_final(job.id, task_id, definition.label, {
                    "state": "failed", "failure_category": "cancelled", "failure_message": "the job was cancelled",
                    "ended_at": now_iso(), "attempts_json": []})
                return None
            created = store.claim_new(job.id, definition, owner=self.owner, lease_s=self.options.lease_s)
            if created is None:  # another delivery of this task created it first: decide on that row
                return self._prepare(job, task_id, keeper)
            row, etag = created
            return self._ready(job, keeper, row, etag, [])
        if entity is None:
            log.warning("task %s/%s has no record (job deleted?); skipping", job.id, task_id)
            return None
        state = entity.get("state")
        if state in ("succeeded", "failed"):
            return None  # a duplicate delivery of a finished task
        if self.job_cancelled(job.id):
            store.record_final(job.id, task_id, etag=entity["_etag"], fields={
                "state": "failed", "failure_category": "cancelled", "failure_message": "the job was cancelled",
                "ended_at": now_iso(), "attempts_json": json.loads(entity.get("attempts_json") or "[]")})
            return None
        claim_live = float(entity.get("claim_expires") or 0) > time.time()
        if state == "running" and claim_live and entity.get("claim_owner") != self.owner:
            return None  # another live worker has it; its own message copy covers it if it dies
        attempts: list[dict[str, Any]] = json.loads(entity.get("attempts_json") or "[]")
        if state == "running":
            attempts.append(AttemptRecord(
                number=len(attempts) + 1, started_at=entity.get("started_at") or now_iso(), ended_at=now_iso(),
                exit_code=None, failure_category="lost",
                failure_message="the worker running this attempt was lost (its lease expired)",
                node_id=str(entity.get("claim_owner") or ""),
            ).to_dict())
        etag = store.claim(entity, owner=self.owner, lease_s=self.options.lease_s, attempts=attempts)
        if etag is None:
            if prefetched is not None:  # our read may just be stale: decide again on a fresh one
                return self._prepare(job, task_id, keeper)
            return None  # someone else claimed it between our read and our write
        return self._ready(job, keeper, entity, etag, attempts)

    def _ready(self, job: Job, keeper: _Keeper, entity: dict[str, Any], etag: str,
               attempts: list[dict[str, Any]]) -> _Ready:
        """Track the claim, build the spec, and stage the first attempt."""
        claim = keeper.track(job.id, entity["RowKey"], etag)
        lost = sum(1 for a in attempts if a.get("failure_category") == "lost")
        job_entity, _ = self._job(job.id)
        spec = build_local_spec(job, entity, self.store, keep_task_dir=self.options.keep_task_dirs,
                                retry_bonus=lost, spec_hash=str((job_entity or {}).get("spec_hash") or ""))
        staged = stage_ahead(spec, node=self.node, transfer=self.transfer, number=len(attempts) + 1)
        return _Ready(entity["RowKey"], spec, claim, len(attempts) + 1, attempts, staged)

    def _finish(self, job: Job, ready: _Ready, finish: Callable[[], TaskOutcome], keeper: _Keeper) -> None:
        """Upload the task's outputs and write its one final result (on the finisher thread)."""
        outcome = finish()
        last = outcome.last
        fields = {
            "state": "succeeded" if outcome.succeeded else "failed",
            "exit_code": last.exit_code, "failure_category": last.failure_category,
            "failure_message": last.failure_message, "stderr_tail": outcome.stderr_tail,
            "ended_at": last.ended_at, "node_id": self.node_id,
            "attempts_json": ready.prior_attempts + [a.to_dict() for a in outcome.attempts],
        }
        with keeper.renewing:  # no renewal between reading the ETag and using it
            keeper.untrack(ready.task_id)
            if ready.claim.lost:
                log.warning("task %s/%s: claim lost while running; the new owner records it", job.id, ready.task_id)
                return
            written = self.store.record_final(job.id, ready.task_id, etag=ready.claim.etag, fields=fields)
        if written is None:
            log.warning("task %s/%s: result not recorded, another worker owns it now", job.id, ready.task_id)

    def _poison(self, message: Any, reason: str, parsed: TaskMessage | None) -> None:
        log.warning("message %s to the poison queue: %s", message.id, reason)
        self.store.to_poison(message.content if isinstance(message.content, str) else str(message.content), reason)
        if parsed is not None:
            fields = {"state": "failed", "failure_category": "poison", "failure_message": reason,
                      "ended_at": now_iso(), "attempts_json": []}
            for task_id in parsed.task_ids:
                entity = self.store.get_task(parsed.job_id, task_id)
                definition = parsed.definition(task_id)
                if entity is None and definition is not None:  # never claimed: its row says why it never ran
                    if self.store.create_final(parsed.job_id, task_id, definition.label, dict(fields)):
                        continue
                    entity = self.store.get_task(parsed.job_id, task_id)
                if entity is None or entity.get("state") in ("succeeded", "failed"):
                    continue
                attempts = json.loads(entity.get("attempts_json") or "[]")
                self.store.record_final(parsed.job_id, task_id, etag=entity["_etag"], fields={
                    "state": "failed", "failure_category": "poison", "failure_message": reason,
                    "ended_at": now_iso(), "attempts_json": attempts,
                })
        with contextlib.suppress(ResourceNotFoundError):
            self.store.queue.delete_message(message.id, message.pop_receipt)


def worker_process_main(connection_string: str, config: Config, index: int, stop: Any,
                        options: WorkerOptions | None = None, work_dir: str | None = None) -> None:
    """Entry point of a worker process (clients are created here, never inherited across fork)."""
    import signal

    from .redact import install_log_filter

    install_log_filter()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    storage = Storage.from_connection_string(connection_string)
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
