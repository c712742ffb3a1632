"""Each job's messages on a queue of its own, and the worker's turn across the jobs it serves.

Why a queue per job, not one shared queue with the job id in each message:

- ``batchyard run y`` receives only from y's queue, so it never takes, hides or re-delivers a
  message of job x. With one shared queue it would have to receive x's messages to learn they
  are not y's and give them back: x's messages would be hidden for a while, and every such
  receive raises their dequeue count, which ends in the poison queue (``max_dequeue_count``).
- ``delete`` deletes the job's queue: every message of the job is gone in one call, without
  reading anyone else's. A shared queue can only be cleaned by receiving all of it.
- The name of a job's queue is kept in the job's row (``queue``), in the configuration's own jobs
  table. A worker receives only from queues named there, so the messages of a configuration with
  another ``table_prefix`` (its rows elsewhere, on the same account and ``[storage] queue``) are
  never received at all: left to their owner, untouched, their dequeue count unchanged.

The name is ``<queue>-<job id, lower case, as a queue name allows>-<8 random hex digits>``, made
at the job's first submit and kept until the job is deleted: the random part means a job deleted
and submitted again gets a new queue (Azure refuses to re-create a queue of the same name for a
while after deleting it), and two spellings of one id never meet.

Across jobs a worker goes round-robin by message, in the order the jobs were created: after each
message it takes, it looks at the next job's queue first. A job whose queue was found empty
(``approximate_message_count``, which counts hidden messages too, is 0) is not polled again until
its row says it was submitted again, so a worker serving many finished jobs polls only the ones
with work.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from batchyard.backends.local.store import JobStore, StorageLostError
from batchyard.core.errors import JobNotFoundError
from batchyard.storage.account import translate_error

log = logging.getLogger(__name__)

QUEUE_NAME_MAX = 63  # Azure's limit for a queue name
TOKEN_HEX = 8
REFRESH_S = 2.0  # how old the worker's list of jobs may get (a new job waits at most this long)
QUEUE_FIELD = "queue"  # the job row's field holding its queue's name
QUEUED_FIELD = "queued"  # the job row's field saying when its messages were last sent


def job_queue_name(base: str, job_id: str, token: str | None = None) -> str:
    """A new queue name for ``job_id``'s messages: ``<base>-<slug>-<token>``, at most 63 characters."""
    token = token or secrets.token_hex(TOKEN_HEX // 2)
    stem = base[:QUEUE_NAME_MAX - TOKEN_HEX - 1].rstrip("-")
    room = QUEUE_NAME_MAX - len(stem) - TOKEN_HEX - 2
    slug = re.sub(r"[^a-z0-9]+", "-", job_id.lower())[:max(0, room)].strip("-")
    return f"{stem}-{slug}-{token}" if slug else f"{stem}-{token}"


def queue_for_submit(store: JobStore, job_id: str) -> str:
    """The queue of ``job_id``'s messages: the one its row names, else a new one; created if missing."""
    entity = store.get_job_entity(job_id)
    name = str((entity or {}).get(QUEUE_FIELD) or "") or job_queue_name(store.queue_name, job_id)
    try:
        with contextlib.suppress(ResourceExistsError):
            store.queue_client(name).create_queue()
    except Exception as exc:
        raise translate_error(exc, f"creating the queue of job {job_id!r}") from None
    return name


def job_queue(store: JobStore, job_id: str, *, decode: bool = True) -> Any:
    """The queue client of a submitted job's messages; JobNotFoundError if the job has none."""
    name = (store.get_job_entity(job_id) or {}).get(QUEUE_FIELD)
    if not name:
        raise JobNotFoundError(f"job {job_id!r} has no queue (not submitted with this configuration)")
    return store.queue_client(str(name), decode=decode)


def delete_job_queue(store: JobStore, entity: dict[str, Any] | None) -> None:
    """Delete the queue of the job whose row is ``entity``, and with it every message of the job."""
    name = (entity or {}).get(QUEUE_FIELD)
    if not name:
        return
    try:
        with contextlib.suppress(ResourceNotFoundError):
            store.queue_client(str(name)).delete_queue()
    except Exception as exc:
        raise translate_error(exc, f"deleting queue {name!r} of job {entity['RowKey']!r}") from None


@dataclass
class JobQueue:
    """One job's queue as a worker serves it."""

    job_id: str
    name: str
    client: Any  # contents as stored: a message that is not base64 is still received, to be poisoned
    stamp: tuple[Any, ...]  # what changes when the job is submitted again
    drained_at: tuple[Any, ...] | None = None  # the stamp it was found empty at (not polled until it changes)


class JobQueues:
    """The queues of the jobs a worker serves (every job of its configuration, or ``jobs``), in turn."""

    def __init__(self, store: JobStore, *, jobs: Sequence[str] | None = None, refresh_s: float = REFRESH_S) -> None:
        self.store = store
        self.jobs = tuple(jobs) if jobs else None
        self.refresh_s = refresh_s
        self._queues: list[JobQueue] = []
        self._refreshed = float("-inf")
        self._next = 0  # where the next receive starts looking

    def receive(self, *, visibility_timeout: int) -> tuple[Any, JobQueue] | None:
        """The next message, from the next job in turn that has one; None if none has."""
        if time.monotonic() - self._refreshed >= self.refresh_s:
            self._refresh()
        queues = list(self._queues)
        for step in range(len(queues)):
            index = (self._next + step) % len(queues)
            source = queues[index]
            if source.drained_at == source.stamp:
                continue
            message = self._receive_from(source, visibility_timeout)
            if message is not None:
                self._next = index + 1
                return message, source
        return None

    def of(self, job_id: str) -> JobQueue:
        """``job_id``'s queue as this worker serves it (read afresh); JobNotFoundError if it serves none."""
        self._refresh()
        found = next((q for q in self._queues if q.job_id == job_id), None)
        if found is None:
            raise JobNotFoundError(f"job {job_id!r} has no queue this worker serves")
        return found

    def _receive_from(self, source: JobQueue, visibility_timeout: int) -> Any | None:
        # No retries in the SDK: the worker's loop retries. A message Azurite cannot deliver gets a
        # 500 for every receive that reaches it, and the SDK's retries would hold the worker 90 s.
        try:
            found = list(source.client.receive_messages(messages_per_page=1, max_messages=1,
                                                        visibility_timeout=visibility_timeout, retry_total=0))
            if found:
                return found[0]
            if int(source.client.get_queue_properties().approximate_message_count or 0) == 0:
                source.drained_at = source.stamp
        except ResourceNotFoundError:
            self._queue_gone(source)
        return None

    def _queue_gone(self, source: JobQueue) -> None:
        """A deleted job's queue goes with it (quietly); a job whose row still names it has lost its tasks."""
        entity = self.store.get_job_entity(source.job_id)
        if entity is None or entity.get(QUEUE_FIELD) != source.name:
            log.debug("job %r was deleted: its queue %r is no longer served", source.job_id, source.name)
            self._queues = [q for q in self._queues if q is not source]
            return
        lost = StorageLostError(
            f"queue {source.name!r} of job {source.job_id!r} is gone from the storage account: the job's "
            "pending tasks are lost. Re-run the job to re-create the queue and re-queue them.")
        if self.jobs is not None:  # this worker is there for that job: it cannot go on
            raise lost
        log.error("%s", lost)  # the other jobs are served on; this one again once it is re-run
        source.drained_at = source.stamp

    def _refresh(self) -> None:
        known = {q.job_id: q for q in self._queues}
        queues = []
        for entity in self._entities():
            name = entity.get(QUEUE_FIELD)
            if not name:  # submitted by an older batchyard: `batchyard run` gives it a queue
                continue
            stamp = (name, entity.get("created"), entity.get(QUEUED_FIELD))
            old = known.get(entity["RowKey"])
            if old is not None and old.name == name:
                old.stamp = stamp
                queues.append(old)
            else:
                queues.append(JobQueue(entity["RowKey"], str(name), self.store.queue_client(str(name), decode=False),
                                       stamp))
        queues.sort(key=lambda q: (float(q.stamp[1] or 0), q.job_id))
        if self._queues and queues:  # the turn goes on from the job it had reached
            current = self._queues[self._next % len(self._queues)].job_id
            self._next = next((i for i, q in enumerate(queues) if q.job_id == current), 0)
        self._queues = queues
        self._refreshed = time.monotonic()

    def _entities(self) -> list[dict[str, Any]]:
        fields = ["RowKey", QUEUE_FIELD, "created", QUEUED_FIELD]
        if self.jobs is None:
            return list(self.store.list_jobs(select=fields, missing_ok=False))
        return [e for e in (self.store.get_job_entity(job_id) for job_id in self.jobs) if e is not None]
