"""What a worker holds while it runs a message: its tasks' claims, and the thread that keeps them.

Shared by :mod:`batchyard.backends.local.worker` (which opens messages), :mod:`.pipeline` (which
runs their tasks) and :mod:`.grouped_rows` (which claims and records several tasks in one table
transaction). It sits below all three, so none of them imports another to name these types.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.local.rows import job_of
from batchyard.backends.local.store import TABLE_BATCH, JobStore
from batchyard.core.redact import redact

log = logging.getLogger(__name__)


@dataclass
class Claim:
    """One task this worker holds: where its row is, the row's current ETag, and the flag that stops its command."""

    job_id: str
    partition: str
    etag: str
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False
    gone: bool = False  # lost because the row itself is gone: the job was deleted, nobody took over


def _epoch(moment: datetime | None, fallback: float) -> float:
    return moment.timestamp() if moment is not None else fallback


class ClaimKeeper(threading.Thread):
    """Renews a message's visibility lease and the claims of its tasks that this worker holds.

    Several tasks can be held at once: the one whose command runs, the one before it whose
    outputs are being uploaded, and those claimed ahead with it. ``renewing`` is held around
    each claim renewal and around the final write of a task, so the final write always carries
    the row's current ETag. ``job_cancelled`` is asked on every tick; a cancelled job's claims
    have their ``cancel`` flag set, which stops their commands.

    A claim never outlives the message that covers it (:meth:`claim_lease_s`): if this worker
    dies, whoever receives the message when it comes back finds every claim expired and takes
    the tasks over. (A claim still live then would be left to its dead owner, and the message,
    its tasks' only one, deleted.)
    """

    def __init__(self, store: JobStore, message: Any, queue: Any, *, lease_s: float,
                 job_cancelled: Callable[[str], bool]) -> None:
        super().__init__(daemon=True, name="lease-keeper")
        self.store = store
        self.queue = queue  # the client of the queue the message came from
        self.lease_s = lease_s
        self.job_cancelled = job_cancelled
        self.message_id = message.id
        self.pop_receipt = message.pop_receipt
        self.visible_at = _epoch(getattr(message, "next_visible_on", None), time.time() + lease_s)
        self.lock = threading.Lock()
        self.renewing = threading.Lock()
        self.claims: dict[str, Claim] = {}
        self.lost_message = False
        self._stop_event = threading.Event()

    def claim_lease_s(self) -> float:
        """How long a claim made or renewed now may last: until the message can come back.

        The service gives that moment in whole seconds, rounded down, so claims end up to a
        second before the message is visible again; every tick renews both.
        """
        return max(0.0, self.visible_at - time.time())

    def track(self, partition: str, task_id: str, etag: str) -> Claim:
        claim = Claim(job_of(partition), partition, etag)
        with self.lock:
            self.claims[task_id] = claim
        return claim

    def untrack(self, task_id: str) -> None:
        with self.lock:
            self.claims.pop(task_id, None)

    def run(self) -> None:
        interval = max(0.2, min(self.lease_s / 3.0, 10.0))
        while not self._stop_event.wait(interval):
            try:
                self._renew()
            except Exception as exc:  # never let the keeper die: without it the lease lapses
                log.warning("lease keeper: %s", redact(f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))

    def _renew(self) -> None:
        try:
            receipt = self.queue.update_message(self.message_id, self.pop_receipt,
                                                visibility_timeout=int(self.lease_s) or 1)
            self.pop_receipt = receipt.pop_receipt
            self.visible_at = _epoch(receipt.next_visible_on, self.visible_at)
        except ResourceNotFoundError:
            self.lost_message = True  # our receipt is stale: someone else has the message
        except Exception as exc:  # transient: the next tick tries again; the claim still protects us
            log.warning("renewing message lease failed: %s", redact(str(exc).splitlines()[0]))
        with self.lock:
            held = list(self.claims.items())
        # Not renewed, the message comes back when it was due to: the claims end then too.
        if not self._renew_together(held):
            for task_id, claim in held:
                self._renew_one(task_id, claim)
        for _, claim in held:
            if self.job_cancelled(claim.job_id):
                claim.cancel.set()

    def _renew_together(self, held: list[tuple[str, Claim]]) -> bool:
        """Renew the claims of several tasks of one partition (claimed ahead in a group) in one transaction.

        False when there is nothing to group or the service refused it (a claim was lost: one
        renewal each then tells which).
        """
        with self.renewing:
            with self.lock:
                current = [(task_id, claim) for task_id, claim in held if self.claims.get(task_id) is claim]
            if len(current) < 2 or len(current) > TABLE_BATCH or len({c.partition for _, c in current}) > 1:
                return False
            try:
                etags = self.store.renew_claims(current[0][1].partition, [(t, c.etag) for t, c in current],
                                                lease_s=self.claim_lease_s())
            except Exception as exc:  # transient: the next tick tries again; the claims last until then
                log.warning("renewing task claims failed: %s", redact(str(exc).splitlines()[0]))
                return True
            if etags is None:
                return False
            for (_, claim), etag in zip(current, etags, strict=True):
                claim.etag = etag
            return True

    def _renew_one(self, task_id: str, claim: Claim) -> None:
        with self.renewing:
            with self.lock:
                if self.claims.get(task_id) is not claim:
                    return  # finished meanwhile
            try:
                new_etag = self.store.renew_claim(claim.partition, task_id, lease_s=self.claim_lease_s(),
                                                  etag=claim.etag)
            except Exception as exc:
                log.warning("renewing task claim failed: %s", redact(str(exc).splitlines()[0]))
                return
            if new_etag is None:
                claim.gone = self._row_gone(claim.partition, task_id)
                claim.lost = True
                claim.cancel.set()  # someone else owns the task now, or nobody (deleted): stop our command
            else:
                claim.etag = new_etag

    def _row_gone(self, partition: str, task_id: str) -> bool:
        """Whether the task's row no longer exists (one read, only when a claim was refused)."""
        try:
            return self.store.get_task(partition, task_id) is None
        except Exception:  # the table itself is gone (a reset), or the service is out of reach for now
            return False

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
