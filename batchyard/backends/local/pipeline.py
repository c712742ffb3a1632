"""One queue message's tasks on one worker: claim, stage, run, upload, record, as a pipeline.

While task *i*'s command runs, a helper thread uploads task *i-1*'s outputs and records its
result, then claims and stages task *i+1*. Only the commands are strictly in sequence, so a
worker slot still runs one command at a time; the storage round trips overlap them. The
pipeline runs on across messages when tasks are short: the next message is opened during a
message's last command, and a message is closed (last upload, results, delete) during the
next one's first command.

When the worker's recent tasks were short, table writes are grouped (see
:class:`batchyard.backends.local.grouped_rows.RowGroups`): the next few unclaimed tasks are claimed in one table
transaction, and finished tasks' results wait a moment to share one. Their blob transfers go in
bursts too: the claimed-ahead tasks' inputs are staged :data:`TRANSFER_BURST` at a time, and
finished tasks' outputs wait for the next few to be uploaded together, the requests of a burst
sent together on as many connections. Azurite, one Node thread on the cores that run the
commands, spends about a third less CPU on a request that arrives with others than on one alone
(docs/performance.md, round 6).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.local.claims import Claim, ClaimKeeper
from batchyard.backends.local.grouped_rows import MAX_GROUP, MessageRows, RowGroups
from batchyard.backends.local.store import JobStore, TaskMessage
from batchyard.core.batch_semantics import JOB_CANCELLED, final_record
from batchyard.core.job import Job, TaskDef
from batchyard.core.redact import redact
from batchyard.node.runner import (
    AttemptRecord,
    NodeContext,
    StagedAttempt,
    TaskFinish,
    TaskOutcome,
    TaskSpec,
    now_iso,
    planned_downloads,
    run_task_commands,
    stage_ahead,
)
from batchyard.storage.transfer import BlobTransfer

log = logging.getLogger(__name__)

TRANSFER_BURST = 8  # at most this many tasks' stagings, or uploads, in one burst (never more than a claim group)
UPLOAD_HOLD_S = 0.2  # outputs wait for a burst only while the commands keep ending this soon


class PipelineOptions(Protocol):
    """The worker options a message's run reads (:class:`batchyard.backends.local.worker.WorkerOptions`)."""

    @property
    def upload_hold_s(self) -> float: ...
    @property
    def record_delay_s(self) -> float: ...


class PipelineWorker(Protocol):
    """What a message's run needs of its worker (:class:`batchyard.backends.local.worker.Worker`, which
    imports this module: naming it here through this protocol keeps the two out of an import circle)."""

    store: JobStore
    transfer: BlobTransfer
    node: NodeContext
    node_id: str
    owner: str
    tasks_run: int
    helper: Executor  # the one thread that finishes the task before and prepares the one after

    @property
    def options(self) -> PipelineOptions: ...
    def note_pace(self, seconds: float) -> None: ...
    def group_size(self) -> int: ...
    def job_cancelled(self, job_id: str) -> bool: ...
    def task_spec(self, job: Job, entity: dict[str, Any], attempts: list[dict[str, Any]]) -> TaskSpec: ...


def log_redelivered(doing: str, exc: BaseException, *, note: str = "") -> None:
    """Log a message that failed and comes back after its lease (nothing is lost)."""
    log.error("%s failed (it will be redelivered%s): %s", doing, note, redact(f"{type(exc).__name__}: {exc}"))


def _cancelled(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The final result of a task whose job was cancelled before its command started."""
    return final_record("cancelled", JOB_CANCELLED, attempts=attempts)


class _Unread:
    """A task row not looked up yet (unlike None: looked up, and there is none)."""


UNREAD = _Unread()


@dataclass
class _Ready:
    """A claimed task, its spec built and its first attempt staged: ready to start its command."""

    task_id: str
    spec: TaskSpec
    claim: Claim
    first_attempt: int
    prior_attempts: list[dict[str, Any]]
    staged: StagedAttempt


class MessageRun:
    """One message's tasks, run in order on ``worker``.

    Its life: :meth:`open` looks up the message's rows and prepares its first task; :meth:`run`
    runs the commands and returns the message's ``close``, which uploads the last task's
    outputs, writes every result still held and only then deletes the message. The worker
    hands that ``close`` to the next message's :meth:`run` as ``carry``, which does it on the
    helper thread while its own first command runs; and while a message's last command runs,
    ``prefetch`` may take and open the next message. So with short tasks the worker's commands
    follow each other across messages as closely as within one (docs/performance.md, round 4).
    """

    def __init__(self, worker: PipelineWorker, job: Job, message: TaskMessage, keeper: ClaimKeeper,
                 queue_message: Any) -> None:
        self.worker, self.job, self.message, self.keeper = worker, job, message, keeper
        self.queue_message = queue_message
        self.ids = list(dict.fromkeys(message.task_ids))  # a duplicated id would race with itself
        self.partition = message.partition  # where the message's task rows are
        self.rows: MessageRows | None = None  # None for a message of one task: its row is read at claim time
        self.none_yet = False
        self.groups = RowGroups(worker.store, keeper, self.partition, owner=worker.owner, size=worker.group_size,
                                record_delay_s=worker.options.record_delay_s)
        self.first: _Ready | None = None
        self.fetched: MessageRun | None = None  # the next message, opened while the last command ran
        self.staged: dict[str, _Ready] = {}  # claimed ahead and staged in a burst; not started yet
        self.unfinished: list[tuple[_Ready, TaskFinish]] = []  # ran; uploads wait for a burst
        self.command_ended = threading.Event()  # set by the main thread when the running command ends

    def open(self) -> None:
        """Prepare (claim, stage) the message's first task, looking up the first window of its rows."""
        # A query per window of the message's rows; a row that changed meanwhile is re-read at claim
        # time. What it did not find is worth knowing too: a task with no row is claimed by
        # creating its row, without first asking for it once more.
        # A message queued with tasks that had no row, delivered for the first time: none is asked for.
        self.none_yet = self.message.new and getattr(self.queue_message, "dequeue_count", None) == 1
        self.dropped_ids: frozenset[str] | None = None
        self.rows = MessageRows(self.worker.store, self.partition, self.ids, none_yet=self.none_yet) if len(
            self.ids) > 1 else None
        self.first = self._prepare(self.ids[0], self._looked_up(self.ids[0]))

    def run(self, *, carry: Callable[[], None] | None = None,
            prefetch: Callable[[], MessageRun | None] | None = None) -> tuple[Callable[[], None], MessageRun | None]:
        """Run the commands; returns (this message's ``close``, the next message if one was prefetched).

        ``carry`` (the previous message's ``close``, which never raises) is done on the helper
        thread while the first command runs. An error re-raises here after the message was
        wound down without deleting it, so it comes back.
        """
        worker, ids = self.worker, self.ids
        ready, self.first = self.first, None
        last: tuple[_Ready, TaskFinish] | None = None  # ran; outputs not uploaded yet
        step: Future[_Ready | None] | None = None
        try:
            for index in range(len(ids)):
                if self.keeper.lost_message:
                    break
                following = ids[index + 1] if index + 1 < len(ids) else None
                self.command_ended.clear()
                # One helper thread, not one per step: two threads making SDK calls at once cost
                # more CPU in GIL hand-offs than they saved, and a command gives it time for both.
                step = worker.helper.submit(self._between, last, following, carry,
                                             prefetch if following is None else None)
                last, carry = None, None
                if ready is not None and self._stopped_before_start(ready):
                    ready = None
                if ready is None:
                    self.command_ended.set()
                else:
                    began = time.monotonic()
                    finish = run_task_commands(ready.spec, node=worker.node, transfer=worker.transfer,
                                               first_attempt=ready.first_attempt, cancel=ready.claim.cancel,
                                               staged=ready.staged)
                    self.command_ended.set()
                    worker.note_pace(time.monotonic() - began)
                    worker.tasks_run += 1
                    last, ready = (ready, finish), None
                ready, step = step.result(), None  # a failure re-raises here: the message comes back
        except BaseException:
            if step is not None:  # let the helper finish its step first
                with contextlib.suppress(Exception):
                    ready = step.result()
            try:
                self._wind_down(ready, last)
            finally:
                if carry is not None:
                    carry()
                if self.fetched is not None:
                    self.fetched.abandon()
                self.keeper.stop()
            raise
        if carry is not None:  # no step ran (the message was lost at once)
            carry()
        # ``ready`` is set only when the loop stopped early (the message was lost): close gives it back.
        return partial(self.close, last, ready), self.fetched

    def close(self, last: tuple[_Ready, TaskFinish] | None = None,
              unstarted: _Ready | None = None) -> None:
        """Upload the last task's outputs, write the results held, give back what was claimed but
        not started (``unstarted``, and claims made ahead), stop renewing, delete the message.

        Never raises: a message whose results could not all be written is not deleted, and
        comes back when its lease ends.
        """
        try:
            self._wind_down(unstarted, last)
        except Exception as exc:
            self.keeper.stop()
            log_redelivered("finishing a message", exc)
            return
        self.keeper.stop()
        if self.keeper.lost_message:
            return
        try:
            self.keeper.queue.delete_message(self.queue_message.id, self.keeper.pop_receipt)
        except ResourceNotFoundError:
            pass  # its lease lapsed and another worker has it: its results are recorded all the same
        except Exception as exc:
            log_redelivered("deleting a finished message", exc, note="; its tasks are done")

    def abandon(self, *, release: bool = True) -> None:
        """Give back a message opened but not run: its claims go back to ``pending``.

        With ``release`` (the worker is stopping) the message is visible again at once; without
        (opening it failed) it comes back when its lease ends, giving a passing fault time to pass.
        """
        try:
            self._wind_down(self.first, None)
        except Exception as exc:  # the claims expire with their lease instead
            log.warning("giving back a message's claims failed: %s", redact(str(exc).splitlines()[0]))
        self.first = None
        self.keeper.stop()
        if release:
            with contextlib.suppress(Exception):
                self.keeper.queue.update_message(self.queue_message.id, self.keeper.pop_receipt,
                                                       visibility_timeout=0)

    def _wind_down(self, ready: _Ready | None, last: tuple[_Ready, TaskFinish] | None) -> None:
        """Give back what was claimed but not started, finish ``last``, write every result held."""
        try:
            if ready is not None:  # claimed ahead but never started: give it back
                ready.staged.discard()
                self._give_back(ready.task_id, ready.claim)
            for staged in self.staged.values():  # their claims are among groups.unstarted()
                staged.staged.discard()
            self.staged.clear()
            for task_id, claim in self.groups.unstarted():
                self._give_back(task_id, claim)
            if last is not None:
                self.unfinished.append(last)
            self._finish_held()
        finally:
            self.groups.close()

    def _between(self, last: tuple[_Ready, TaskFinish] | None, following: str | None,
                 carry: Callable[[], None] | None, prefetch: Callable[[], MessageRun | None] | None) -> _Ready | None:
        """On the helper thread while a command runs: close the message before (``carry``), finish
        the task before, then prepare the task after, or open the next message (``prefetch``)."""
        if carry is not None:
            carry()
        if last is not None:
            self.unfinished.append(last)
            if len(self.unfinished) >= self._burst():
                self._finish_held()
        prepared = self._prepare(following, self._looked_up(following)) if following is not None else None
        if prefetch is not None:
            self.fetched = prefetch()
        # Held outputs wait for the next burst only if the command now running ends soon: behind
        # a long one they go now, so a result is never held back for a long command's time.
        if self.unfinished and not self.command_ended.wait(self.worker.options.upload_hold_s):
            self._finish_held()
        return prepared

    def _stopped_before_start(self, ready: _Ready) -> bool:
        """Whether a prepared task must not start: its job was cancelled (it is recorded cancelled,
        unrun) or its claim was lost (its new owner runs it).

        The runner would start a command whose cancel flag is set and kill it at once, but a
        busy machine can let it run a moment first; and the keeper sets the flags of the tasks
        it holds one after the other, so the job's state (cached, and known cancelled as soon
        as the keeper saw it) is asked too: once the running command was cancelled, none of
        the tasks claimed ahead with it starts.
        """
        if not (ready.claim.cancel.is_set() or self.worker.job_cancelled(self.job.id)):
            return False
        ready.staged.discard()
        with self.keeper.renewing:  # the claim's ETag cannot change under this write
            self.keeper.untrack(ready.task_id)
            if not ready.claim.lost:
                self._record_cancelled(ready.task_id, ready.claim.etag, ready.prior_attempts)
        return True

    def _looked_up(self, task_id: str) -> dict[str, Any] | _Unread | None:
        if self.rows is None:
            return None if self.none_yet else UNREAD
        return self.rows.row(task_id)

    def _give_back(self, task_id: str, claim: Claim) -> None:
        with self.keeper.renewing:
            self.keeper.untrack(task_id)
            self.worker.store.release_claim(self.partition, task_id, etag=claim.etag)

    def _dropped(self) -> frozenset[str]:
        """The message's tasks that the job's last submission no longer has (asked once per message)."""
        if self.dropped_ids is None:
            self.dropped_ids = self.worker.admission.dropped(self.job.id, self.ids)
        return self.dropped_ids

    def _following(self, task_id: str) -> list[TaskDef]:
        """The message's tasks after ``task_id`` known to have no row: candidates to claim with it."""
        if self.rows is None or self.message.defs is None:
            return []
        found = (self.message.definition(i) for i in self.rows.unclaimed_after(task_id, MAX_GROUP))
        dropped = self._dropped()
        return [d for d in found if d is not None and d.task_id not in dropped]

    def _prepare(self, task_id: str, prefetched: dict[str, Any] | _Unread | None = UNREAD) -> _Ready | None:
        """Claim the task and stage its first attempt; None if it is not ours to run.

        ``prefetched`` is the task's row from the message's query, None if that query found no
        row, or :data:`UNREAD` (the row is read here).
        """
        job, worker, store = self.job, self.worker, self.worker.store
        held = self.groups.take(task_id)
        if held is not None:  # claimed ahead, with an earlier task of the message
            row, claim = held
            staged = self.staged.pop(task_id, None)
            if worker.job_cancelled(job.id):
                if staged is not None:
                    staged.staged.discard()
                with self.keeper.renewing:  # the claim's ETag cannot change under this write
                    self.keeper.untrack(task_id)
                    self._record_cancelled(task_id, claim.etag, [])
                return None
            return staged or self._ready(row, claim, [])
        definition = self.message.definition(task_id)
        entity = store.get_task(self.partition, task_id) if isinstance(prefetched, _Unread) or (
            prefetched is None and definition is None) else prefetched
        if entity is None and definition is not None:  # never claimed: creating its row is the claim
            if task_id in self._dropped():
                log.debug("task %s/%s: dropped from the job by a later submission; not run", job.id, task_id)
                return None
            if worker.job_cancelled(job.id):
                store.create_final(self.partition, task_id, definition.label, _cancelled([]))
                return None
            mine = self.groups.claim(definition, self._following(task_id))
            if mine is None:  # another delivery of this task created it first: decide on that row
                return self._prepare(task_id)
            return self._ready(mine[0], mine[1], [])
        if entity is None:
            log.warning("task %s/%s has no record (job deleted?); skipping", job.id, task_id)
            return None
        state = entity.get("state")
        if state in ("succeeded", "failed"):
            return None  # a duplicate delivery of a finished task
        if worker.job_cancelled(job.id):
            self._record_cancelled(task_id, entity["_etag"], json.loads(entity.get("attempts_json") or "[]"))
            return None
        claim_live = float(entity.get("claim_expires") or 0) > time.time()
        if state == "running" and claim_live and entity.get("claim_owner") != worker.owner:
            return None  # another live worker has it; its own message copy covers it if it dies
        attempts: list[dict[str, Any]] = json.loads(entity.get("attempts_json") or "[]")
        if state == "running":
            attempts.append(AttemptRecord(
                number=len(attempts) + 1, started_at=entity.get("started_at") or now_iso(), ended_at=now_iso(),
                exit_code=None, failure_category="lost",
                failure_message="the worker holding this task was lost (its lease expired)",
                node_id=str(entity.get("claim_owner") or ""),
            ).to_dict())
        etag = store.claim(entity, owner=worker.owner, lease_s=self.keeper.claim_lease_s(), attempts=attempts)
        if etag is None:
            if isinstance(prefetched, dict):  # our read may just be stale: decide again on a fresh one
                return self._prepare(task_id)
            return None  # someone else claimed it between our read and our write
        return self._ready(entity, self.keeper.track(self.partition, task_id, etag), attempts)

    def _record_cancelled(self, task_id: str, etag: str, attempts: list[dict[str, Any]]) -> None:
        self.worker.store.record_final(self.partition, task_id, etag=etag, fields=_cancelled(attempts))

    def _burst(self) -> int:
        return min(TRANSFER_BURST, self.groups.size)

    def _spec(self, entity: dict[str, Any], attempts: list[dict[str, Any]]) -> TaskSpec:
        return self.worker.task_spec(self.job, entity, attempts)

    def _ready(self, entity: dict[str, Any], claim: Claim, attempts: list[dict[str, Any]]) -> _Ready:
        """Build the spec of a claimed task and stage its first attempt, with (in one burst) the
        first attempts of the next tasks claimed ahead with it."""
        worker = self.worker
        spec = self._spec(entity, attempts)
        others = [] if attempts else [
            (row, held_claim, self._spec(row, []))
            for row, held_claim in self.groups.held_after(entity["RowKey"], self.ids, skip=self.staged,
                                                          limit=self._burst() - 1)]
        stage = partial(stage_ahead, node=worker.node, transfer=worker.transfer)
        specs = [spec, *(other for _, _, other in others)]
        refs = [ref for each in specs for ref in planned_downloads(each, worker.node)]
        with worker.transfer.prefetched(refs if others else []):
            staged = stage(spec, number=len(attempts) + 1)
            for row, held_claim, other_spec in others:  # (a staging failure is kept for the task's start)
                self.staged[row["RowKey"]] = _Ready(row["RowKey"], other_spec, held_claim, 1, [], stage(other_spec))
        return _Ready(entity["RowKey"], spec, claim, len(attempts) + 1, attempts, staged)

    def _finish_held(self) -> None:
        """Upload the outputs of the tasks that ran (in one burst) and hand their results to be written."""
        held, self.unfinished = self.unfinished, []
        files = [f for _, finish in held for f in finish.uploads()] if len(held) > 1 else []
        error: BaseException | None = None
        with self.worker.transfer.uploaded_ahead(files):
            for ready, finish in held:
                try:
                    self._record(ready, finish())
                except Exception as exc:  # the others are still recorded; the message then comes back
                    error = error or exc
        if error is not None:
            raise error

    def _record(self, ready: _Ready, outcome: TaskOutcome) -> None:
        """Hand a finished task's one final result to be written."""
        last = outcome.last
        self.groups.record(ready.task_id, ready.claim, final_record(
            last.failure_category, last.failure_message,
            attempts=ready.prior_attempts + [a.to_dict() for a in outcome.attempts], ended_at=last.ended_at,
            exit_code=last.exit_code, stderr_tail=outcome.stderr_tail, node_id=self.worker.node_id,
            # A claim made ahead is up to GROUP_WINDOW_S older than the command's start.
            **({} if ready.prior_attempts else {"started_at": outcome.attempts[0].started_at}),
        ))
