"""Claims made ahead and results held back, so the table writes of short tasks share transactions.

Used by :class:`batchyard.backends.local.pipeline.MessageRun`, which hands it what it needs (the
store, the message's claim keeper, the worker's identity and pace), so this module imports
neither. On Azurite a transaction of 32 writes costs about a third of what 32 single writes do,
and grouping changes no promise: a claim is a claim whether written alone or with others, every
result is still written once, guarded by its claim's ETag, and all of a message's results are
written before the message is deleted.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from batchyard.backends.local.claims import Claim, ClaimKeeper
from batchyard.backends.local.rows import job_of
from batchyard.backends.local.store import TABLE_BATCH, JobStore
from batchyard.core.job import TaskDef
from batchyard.core.redact import redact

log = logging.getLogger(__name__)

GROUP_WINDOW_S = 1.0  # claim ahead at most about this much work...
MAX_GROUP = 32  # ...and at most this many tasks
RECORD_DELAY_S = 0.5  # by default, a finished task's result waits at most this long for others to share a write
GROUP_BYTES = 1 << 20  # well under a transaction's 4 MiB
LOOKUP_WINDOW = MAX_GROUP  # a message's rows are looked up this many ids to a query


class MessageRows:
    """The rows of a message's tasks, looked up :data:`LOOKUP_WINDOW` ids to a query as the run
    reaches them: a message of a big job holds up to a few hundred tasks, more than one query
    should name, and a row read just before its task is claimed is less often stale. A row that
    changed since it was read is read again at claim time (its write is refused)."""

    def __init__(self, store: JobStore, partition: str, ids: list[str], *, none_yet: bool = False) -> None:
        """``none_yet``: the message says none of its tasks had a row when it was queued, and this is
        its first delivery: no row is looked up (a create that finds one is refused, and it is read then)."""
        self.store, self.partition, self.ids = store, partition, ids
        self.index = {task_id: i for i, task_id in enumerate(ids)}
        self.rows: dict[str, dict[str, Any]] = {}
        self.looked: set[str] = set(ids) if none_yet else set()

    def row(self, task_id: str) -> dict[str, Any] | None:
        """The task's row as looked up (None: it had none); looked up now if it was not yet."""
        start = self.index[task_id]
        self._look_up(start, start + 1)
        return self.rows.get(task_id)

    def unclaimed_after(self, task_id: str, limit: int) -> list[str]:
        """Up to ``limit`` ids that follow ``task_id`` in the message and had no row when looked up."""
        start = self.index[task_id] + 1
        self._look_up(start, start + limit)
        return [t for t in self.ids[start:start + limit] if t not in self.rows]

    def _look_up(self, start: int, stop: int) -> None:
        """Look up every id in ``ids[start:stop]`` not looked up yet: a window at a time from the
        first of them, so a run going through the message asks once per window."""
        ids, looked = self.ids, self.looked
        while True:
            first = next((i for i in range(start, min(stop, len(ids))) if ids[i] not in looked), None)
            if first is None:
                return
            wanted = [t for t in ids[first:first + LOOKUP_WINDOW] if t not in looked]
            self.rows.update(self.store.get_tasks(self.partition, wanted))
            looked.update(wanted)
            start = first


@dataclass
class _Result:
    task_id: str
    claim: Claim
    fields: dict[str, Any]


class RowGroups:
    """Claims made ahead and results held back, so several share one table transaction.

    ``size`` is how many tasks one claim covers: about :data:`GROUP_WINDOW_S` of the worker's
    recent pace, so a claimed task waits at most about that long for its command (Azure Batch
    counts such a task, assigned but not started, as running too). At 1 (long tasks, or no
    pace known yet) nothing is grouped and every write goes out at once, as alone. A result
    held back waits at most ``record_delay_s`` for others.
    """

    def __init__(self, store: JobStore, keeper: ClaimKeeper, partition: str, *, owner: str,
                 size: Callable[[], int], record_delay_s: float = RECORD_DELAY_S) -> None:
        self.store, self.keeper, self.partition, self.job_id = store, keeper, partition, job_of(partition)
        self.owner, self.record_delay_s = owner, record_delay_s
        self._size = size
        self.lock = threading.Lock()
        self.claimed: dict[str, tuple[dict[str, Any], Claim]] = {}  # claimed ahead, not started yet
        self.tried: set[str] = set()  # ids already in a claim (made or refused)
        self.results: list[_Result] = []
        self._timer: threading.Timer | None = None

    @property
    def size(self) -> int:
        return self._size()

    # --- claims ---------------------------------------------------------------------------------------
    def take(self, task_id: str) -> tuple[dict[str, Any], Claim] | None:
        with self.lock:
            return self.claimed.pop(task_id, None)

    def claim(self, definition: TaskDef, following: list[TaskDef]) -> tuple[dict[str, Any], Claim] | None:
        """Claim ``definition`` (creating its row), and with it up to ``size - 1`` of ``following``.

        Results held back go out in the same transaction. None if the row of ``definition``
        exists (another delivery created it first).
        """
        store, keeper, partition, size = self.store, self.keeper, self.partition, self.size
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
        owner, lease = self.owner, keeper.claim_lease_s()
        rows = [store.claimed_row(partition, t, owner=owner, lease_s=lease) for t in group]
        claims: list[tuple[dict[str, Any], Claim]] = []
        with keeper.renewing:
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
                claims = [(row, keeper.track(partition, row["RowKey"], etag))
                          for row, etag in zip(rows, etags[:len(rows)], strict=True)]
            else:  # refused (or a single claim): one write each tells which rows exist
                self._write_one_by_one(results)
                for task in group:
                    created = store.claim_new(partition, task, owner=owner, lease_s=lease)
                    if created is not None:
                        claims.append((created[0], keeper.track(partition, task.task_id, created[1])))
        mine = None
        with self.lock:
            for row, claim in claims:
                if row["RowKey"] == definition.task_id:
                    mine = (row, claim)
                else:
                    self.claimed[row["RowKey"]] = (row, claim)
        return mine

    def held_after(self, task_id: str, order: list[str], *, skip: Collection[str],
                   limit: int) -> list[tuple[dict[str, Any], Claim]]:
        """Up to ``limit`` tasks claimed ahead that come after ``task_id`` in ``order``, in that
        order, leaving out those in ``skip``; they stay held (a burst stages them early)."""
        if limit <= 0:
            return []
        with self.lock:
            after = order[order.index(task_id) + 1:] if task_id in order else []
            found = [self.claimed[t] for t in after if t in self.claimed and t not in skip]
        return found[:limit]

    def unstarted(self) -> list[tuple[str, Claim]]:
        with self.lock:
            held, self.claimed = self.claimed, {}
        return [(task_id, claim) for task_id, (_, claim) in held.items()]

    # --- results --------------------------------------------------------------------------------------
    def record(self, task_id: str, claim: Claim, fields: dict[str, Any]) -> None:
        """Write a finished task's result now, or hold it for the next group (at most ``record_delay_s``)."""
        with self.lock:
            self.results.append(_Result(task_id, claim, fields))
            due = self.size <= 1 or len(self.results) >= self.size
            if not due and self._timer is None:
                self._timer = threading.Timer(self.record_delay_s, self._flush_on_timer)
                self._timer.daemon = True
                self._timer.start()
        if due:
            self.flush()

    def flush(self) -> None:
        """Write every result held back: in transactions, or one write each where one was refused.

        A result whose write fails is held again and the error raised, so the message is not
        deleted before it is written.
        """
        with self.keeper.renewing:
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
                etags = self.store.write_group([], self._merges(results))
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
                self.keeper.untrack(result.task_id)
                if result.claim.gone:
                    log.warning("task %s/%s: its record was deleted while it ran (`batchyard delete`): "
                                "its command was stopped, and its result is not recorded", self.job_id, result.task_id)
                else:
                    log.warning("task %s/%s: claim lost while running; the new owner records it",
                                self.job_id, result.task_id)
            else:
                kept.append(result)
        return kept

    def _put_back(self, results: list[_Result]) -> None:
        with self.lock:
            self.results[:0] = results

    def _done(self, results: list[_Result]) -> None:
        for result in results:
            self.keeper.untrack(result.task_id)

    def _merges(self, results: list[_Result]) -> list[tuple[dict[str, Any], str]]:
        store, partition = self.store, self.partition
        return [(store.final_update(partition, r.task_id, r.fields), r.claim.etag) for r in results]

    def _write_one_by_one(self, results: list[_Result]) -> None:
        for index, result in enumerate(results):
            try:
                written = self.store.record_final(self.partition, result.task_id,
                                                  etag=result.claim.etag, fields=result.fields)
            except Exception:
                self._put_back(results[index:])
                raise
            self.keeper.untrack(result.task_id)
            if written is None:
                log.warning("task %s/%s: result not recorded, another worker owns it now",
                            self.job_id, result.task_id)
