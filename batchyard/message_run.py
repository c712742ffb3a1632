"""One queue message's tasks on one worker: claim, stage, run, upload, record, as a pipeline.

While task *i*'s command runs, a helper thread uploads task *i-1*'s outputs and records its
result, then claims and stages task *i+1*. Only the commands are strictly in sequence, so a
worker slot still runs one command at a time; the storage round trips overlap them.

When the worker's recent tasks were short, table writes are grouped (see
:class:`RowGroups`): the next few unclaimed tasks are claimed in one table transaction, and
finished tasks' results wait up to :data:`RECORD_DELAY_S` to share one. On Azurite that
halves the cost of a tiny task's two table writes, and it changes no promise: a claim is a
claim whether written alone or with others, every result is still written once, guarded by
its claim's ETag, and all of a message's results are written before the message is deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .job import Job, TaskDef
from .records import TABLE_BATCH, TaskMessage
from .redact import redact
from .runner import AttemptRecord, StagedAttempt, TaskOutcome, TaskSpec, now_iso, stage_ahead, start_task

if TYPE_CHECKING:
    from .worker import Worker, _Claim, _Keeper

log = logging.getLogger(__name__)

GROUP_WINDOW_S = 1.0  # claim ahead at most about this much work...
MAX_GROUP = 32  # ...and at most this many tasks
RECORD_DELAY_S = 0.5  # a finished task's result waits at most this long for others to share a write
GROUP_BYTES = 1 << 20  # well under a transaction's 4 MiB


def _cancelled(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The final result of a task whose job was cancelled before its command started."""
    return {"state": "failed", "failure_category": "cancelled", "failure_message": "the job was cancelled",
            "ended_at": now_iso(), "attempts_json": attempts}


class _Unread:
    """A task row not looked up yet (unlike None: looked up, and there is none)."""


UNREAD = _Unread()


@dataclass
class _Ready:
    """A claimed task, its spec built and its first attempt staged: ready to start its command."""

    task_id: str
    spec: TaskSpec
    claim: _Claim
    first_attempt: int
    prior_attempts: list[dict[str, Any]]
    staged: StagedAttempt


@dataclass
class _Result:
    task_id: str
    claim: _Claim
    fields: dict[str, Any]


class RowGroups:
    """Claims made ahead and results held back, so several share one table transaction.

    ``size`` is how many tasks one claim covers: about :data:`GROUP_WINDOW_S` of the worker's
    recent pace, so a claimed task waits at most about that long for its command (Azure Batch
    counts such a task, assigned but not started, as running too). At 1 (long tasks, or no
    pace known yet) nothing is grouped and every write goes out at once, as alone.
    """

    def __init__(self, run: MessageRun) -> None:
        self.run = run
        self.lock = threading.Lock()
        self.claimed: dict[str, tuple[dict[str, Any], _Claim]] = {}  # claimed ahead, not started yet
        self.tried: set[str] = set()  # ids already in a claim (made or refused)
        self.results: list[_Result] = []
        self._timer: threading.Timer | None = None

    @property
    def size(self) -> int:
        return self.run.worker.group_size()

    # --- claims ---------------------------------------------------------------------------------------
    def take(self, task_id: str) -> tuple[dict[str, Any], _Claim] | None:
        with self.lock:
            return self.claimed.pop(task_id, None)

    def claim(self, definition: TaskDef, following: list[TaskDef]) -> tuple[dict[str, Any], _Claim] | None:
        """Claim ``definition`` (creating its row), and with it up to ``size - 1`` of ``following``.

        Results held back go out in the same transaction. None if the row of ``definition``
        exists (another delivery created it first).
        """
        run, store, size = self.run, self.run.worker.store, self.size
        group, budget = [definition], GROUP_BYTES
        for task in following:
            if len(group) >= size:
                break
            if task.task_id in self.tried:
                continue
            budget -= len(json.dumps(task.argv)) + 512
            if budget < 0:
                break
            group.append(task)
        with self.lock:
            self.tried.update(t.task_id for t in group)
        owner, lease = run.worker.owner, run.worker.options.lease_s
        rows = [store.claimed_row(run.job.id, t, owner=owner, lease_s=lease) for t in group]
        claims: list[tuple[dict[str, Any], _Claim]] = []
        with run.keeper.renewing:
            results = self._take_results() if size > 1 else []
            if len(rows) + len(results) > TABLE_BATCH:  # a transaction takes at most 100 writes
                self._put_back(results[TABLE_BATCH - len(rows):])
                results = results[:TABLE_BATCH - len(rows)]
            try:
                etags = store.write_group(rows, self._merges(results)) if results or len(rows) > 1 else None
            except Exception:
                self._put_back(results)
                raise
            if etags is not None:
                self._done(results)
                claims = [(row, run.keeper.track(run.job.id, row["RowKey"], etag))
                          for row, etag in zip(rows, etags[:len(rows)], strict=True)]
            else:  # refused (or a single claim): one write each tells which rows exist
                self._write_one_by_one(results)
                for task in group:
                    created = store.claim_new(run.job.id, task, owner=owner, lease_s=lease)
                    if created is not None:
                        claims.append((created[0], run.keeper.track(run.job.id, task.task_id, created[1])))
        mine = None
        with self.lock:
            for row, claim in claims:
                if row["RowKey"] == definition.task_id:
                    mine = (row, claim)
                else:
                    self.claimed[row["RowKey"]] = (row, claim)
        return mine

    def unstarted(self) -> list[tuple[str, _Claim]]:
        with self.lock:
            held, self.claimed = self.claimed, {}
        return [(task_id, claim) for task_id, (_, claim) in held.items()]

    # --- results --------------------------------------------------------------------------------------
    def record(self, task_id: str, claim: _Claim, fields: dict[str, Any]) -> None:
        """Write a finished task's result now, or hold it for the next group (at most RECORD_DELAY_S)."""
        with self.lock:
            self.results.append(_Result(task_id, claim, fields))
            due = self.size <= 1 or len(self.results) >= self.size
            if not due and self._timer is None:
                self._timer = threading.Timer(RECORD_DELAY_S, self._flush_on_timer)
                self._timer.daemon = True
                self._timer.start()
        if due:
            self.flush()

    def flush(self) -> None:
        """Write every result held back: in transactions, or one write each where one was refused.

        A result whose write fails is held again and the error raised, so the message is not
        deleted before it is written.
        """
        with self.run.keeper.renewing:
            results = self._take_results()
            while results:
                chunk, results = results[:TABLE_BATCH], results[TABLE_BATCH:]  # at most 100 writes each
                try:
                    self._write_results(chunk)
                except Exception:
                    self._put_back(results)
                    raise

    def _write_results(self, results: list[_Result]) -> None:
        if len(results) > 1:
            try:
                etags = self.run.worker.store.write_group([], self._merges(results))
            except Exception:
                self._put_back(results)
                raise
            if etags is not None:
                self._done(results)
                return
        self._write_one_by_one(results)

    def _flush_on_timer(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # held again: the message's last flush writes it or fails the message
            log.warning("writing task results failed (will retry): %s", redact(str(exc).splitlines()[0]))

    def close(self) -> None:
        """Write what is held back; cancel the timer."""
        self.flush()
        with self.lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    # --- helpers (the caller holds keeper.renewing, so no claim's ETag changes under us) ---------------
    def _take_results(self) -> list[_Result]:
        with self.lock:
            results, self.results = self.results, []
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        kept = []
        for result in results:
            if result.claim.lost:
                self.run.keeper.untrack(result.task_id)
                log.warning("task %s/%s: claim lost while running; the new owner records it",
                            self.run.job.id, result.task_id)
            else:
                kept.append(result)
        return kept

    def _put_back(self, results: list[_Result]) -> None:
        with self.lock:
            self.results[:0] = results

    def _done(self, results: list[_Result]) -> None:
        for result in results:
            self.run.keeper.untrack(result.task_id)

    def _merges(self, results: list[_Result]) -> list[tuple[dict[str, Any], str]]:
        store, job_id = self.run.worker.store, self.run.job.id
        return [(store.final_update(job_id, r.task_id, r.fields), r.claim.etag) for r in results]

    def _write_one_by_one(self, results: list[_Result]) -> None:
        for index, result in enumerate(results):
            try:
                written = self.run.worker.store.record_final(self.run.job.id, result.task_id,
                                                             etag=result.claim.etag, fields=result.fields)
            except Exception:
                self._put_back(results[index:])
                raise
            self.run.keeper.untrack(result.task_id)
            if written is None:
                log.warning("task %s/%s: result not recorded, another worker owns it now",
                            self.run.job.id, result.task_id)


class MessageRun:
    """Runs one message's tasks in order on ``worker``; every result is recorded when ``run`` returns."""

    def __init__(self, worker: Worker, job: Job, message: TaskMessage, keeper: _Keeper) -> None:
        self.worker, self.job, self.message, self.keeper = worker, job, message, keeper
        self.ids = list(dict.fromkeys(message.task_ids))  # a duplicated id would race with itself
        self.rows: dict[str, dict[str, Any]] | None = None
        self.groups = RowGroups(self)

    def run(self) -> None:
        worker, ids = self.worker, self.ids
        # One query for the message's rows; a row that changed meanwhile is re-read at claim time.
        # What it did not find is worth knowing too: a task with no row is claimed by creating
        # its row, without first asking for it once more.
        self.rows = worker.store.get_tasks(self.job.id, ids) if len(ids) > 1 else None
        ready = self._prepare(ids[0], self._looked_up(ids[0]))
        last: tuple[_Ready, Callable[[], TaskOutcome]] | None = None  # ran; outputs not uploaded yet
        step: Future[_Ready | None] | None = None
        try:
            for index in range(len(ids)):
                if self.keeper.lost_message:
                    break
                # One helper thread, not one per step: two threads making SDK calls at once cost
                # more CPU in GIL hand-offs than they saved, and a command gives it time for both.
                step = worker._helper.submit(self._between, last, ids[index + 1] if index + 1 < len(ids) else None)
                last = None
                if ready is not None:
                    began = time.monotonic()
                    finish = start_task(ready.spec, node=worker.node, transfer=worker.transfer,
                                        first_attempt=ready.first_attempt, cancel=ready.claim.cancel,
                                        staged=ready.staged)
                    worker.note_pace(time.monotonic() - began)
                    worker.tasks_run += 1
                    last, ready = (ready, finish), None
                ready, step = step.result(), None  # a failure re-raises here: the message comes back
        finally:
            if step is not None:  # the loop was left by an error: let the helper finish first
                with contextlib.suppress(Exception):
                    ready = step.result()
            if ready is not None:  # claimed ahead but never started (the message was lost): give it back
                ready.staged.discard()
                self._give_back(ready.task_id, ready.claim)
            for task_id, claim in self.groups.unstarted():
                self._give_back(task_id, claim)
            try:
                if last is not None:
                    self._finish(*last)
            finally:
                self.groups.close()

    def _between(self, last: tuple[_Ready, Callable[[], TaskOutcome]] | None, following: str | None) -> _Ready | None:
        """On the helper thread while a command runs: finish the task before it, prepare the one after."""
        if last is not None:
            self._finish(*last)
        return None if following is None else self._prepare(following, self._looked_up(following))

    def _looked_up(self, task_id: str) -> dict[str, Any] | _Unread | None:
        return UNREAD if self.rows is None else self.rows.get(task_id)

    def _give_back(self, task_id: str, claim: _Claim) -> None:
        with self.keeper.renewing:
            self.keeper.untrack(task_id)
            self.worker.store.release_claim(self.job.id, task_id, etag=claim.etag)

    def _following(self, task_id: str) -> list[TaskDef]:
        """The message's tasks after ``task_id`` known to have no row: candidates to claim with it."""
        if self.rows is None or self.message.defs is None:
            return []
        after = self.ids[self.ids.index(task_id) + 1:]
        by_id = {d.task_id: d for d in self.message.defs}
        return [by_id[i] for i in after if i not in self.rows and i in by_id]

    def _prepare(self, task_id: str, prefetched: dict[str, Any] | _Unread | None = UNREAD) -> _Ready | None:
        """Claim the task and stage its first attempt; None if it is not ours to run.

        ``prefetched`` is the task's row from the message's query, None if that query found no
        row, or :data:`UNREAD` (the row is read here).
        """
        job, worker, store = self.job, self.worker, self.worker.store
        held = self.groups.take(task_id)
        if held is not None:  # claimed ahead, with an earlier task of the message
            row, claim = held
            if worker.job_cancelled(job.id):
                with self.keeper.renewing:  # the claim's ETag cannot change under this write
                    self.keeper.untrack(task_id)
                    self._record_cancelled(task_id, claim.etag, [])
                return None
            return self._ready(row, claim, [])
        definition = self.message.definition(task_id)
        entity = store.get_task(job.id, task_id) if isinstance(prefetched, _Unread) or (
            prefetched is None and definition is None) else prefetched
        if entity is None and definition is not None:  # never claimed: creating its row is the claim
            if worker.job_cancelled(job.id):
                store.create_final(job.id, task_id, definition.label, _cancelled([]))
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
        etag = store.claim(entity, owner=worker.owner, lease_s=worker.options.lease_s, attempts=attempts)
        if etag is None:
            if isinstance(prefetched, dict):  # our read may just be stale: decide again on a fresh one
                return self._prepare(task_id)
            return None  # someone else claimed it between our read and our write
        return self._ready(entity, self.keeper.track(job.id, task_id, etag), attempts)

    def _record_cancelled(self, task_id: str, etag: str, attempts: list[dict[str, Any]]) -> None:
        self.worker.store.record_final(self.job.id, task_id, etag=etag, fields=_cancelled(attempts))

    def _ready(self, entity: dict[str, Any], claim: _Claim, attempts: list[dict[str, Any]]) -> _Ready:
        """Build the spec of a claimed task and stage its first attempt."""
        from .worker import build_local_spec

        worker, job = self.worker, self.job
        lost = sum(1 for a in attempts if a.get("failure_category") == "lost")
        job_entity, _ = worker._job(job.id)
        spec = build_local_spec(job, entity, worker.store, keep_task_dir=worker.options.keep_task_dirs,
                                retry_bonus=lost, spec_hash=str((job_entity or {}).get("spec_hash") or ""))
        staged = stage_ahead(spec, node=worker.node, transfer=worker.transfer, number=len(attempts) + 1)
        return _Ready(entity["RowKey"], spec, claim, len(attempts) + 1, attempts, staged)

    def _finish(self, ready: _Ready, finish: Callable[[], TaskOutcome]) -> None:
        """Upload the task's outputs and hand its one final result to be written (helper thread)."""
        outcome = finish()
        last = outcome.last
        self.groups.record(ready.task_id, ready.claim, {
            "state": "succeeded" if outcome.succeeded else "failed",
            "exit_code": last.exit_code, "failure_category": last.failure_category,
            "failure_message": last.failure_message, "stderr_tail": outcome.stderr_tail,
            "ended_at": last.ended_at, "node_id": self.worker.node_id,
            "attempts_json": ready.prior_attempts + [a.to_dict() for a in outcome.attempts],
            # A claim made ahead is up to GROUP_WINDOW_S older than the command's start.
            **({} if ready.prior_attempts else {"started_at": outcome.attempts[0].started_at}),
        })
