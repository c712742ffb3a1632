"""Only the job owner's work runs: which received messages a worker acts on, and poisoning the rest once.

Anyone who can put a message on the task queue (the holder of a queue-only SAS, or of the
storage key) could name any job and write any definition. So a worker runs a message only if:

- it is base64 of a JSON message of a known version, and its job and task ids follow Batch's id
  rule (no ``/``, no ``..``: they become table keys and directory names);
- it names the job whose queue it came from (each job has its own queue: see
  :mod:`batchyard.backends.local.job_queues`);
- its job exists: a job row and a job document;
- a version 2 message: every definition carries the MAC that only the job's message key makes
  (:func:`batchyard.backends.local.messages.definition_mac`). The key is made at the job's first
  submit (:func:`message_key_for_submit`) and kept only in the job document, in the system
  container: a queue-only SAS never sees it;
- a version 1 message (ids only): every id has a row, written at submit by the owner, and is in
  the job's manifest.

Anything else is refused: poisoned with the reason, deleted, and never recorded as a task of the
job, so a made-up task never appears in its ``status``. Except a message of a job deleted since it
was received (its queue went with it): that one is dropped, logged at debug only, as nobody's
mistake. A finished job's tasks never run again:
their rows are final. Only a message that passed these checks (the owner's) has its unfinished
tasks recorded as ``poison`` when it is poisoned (delivered too often, say).

Poisoning is idempotent: an insert-if-absent marker row per message id (in the jobs table,
partition :data:`POISON_MARKERS`) comes before the put on the poison queue, and says once the
put is done, so a message delivered again after a failed delete adds no second copy.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import UpdateMode

from batchyard.backends.local.messages import TaskMessage, decode_text
from batchyard.backends.local.store import JobStore, StorageLostError
from batchyard.core.batch_semantics import final_record
from batchyard.core.errors import JobNotFoundError, JobValidationError
from batchyard.core.final_step import is_final_or_barrier
from batchyard.core.job import Job
from batchyard.core.redact import redact, register_secret

log = logging.getLogger(__name__)

MESSAGE_KEY_FIELD = "message_key"
POISON_MARKERS = "poisoned-message"  # a partition of the jobs table (job rows are in partition "job")
_MARKER_KEY = re.compile(r"[A-Za-z0-9-]{1,128}")  # queue message ids are GUIDs
MAX_NAMED = 5  # ids named in a refusal's reason
MAX_LABEL_CHARS = 1_024  # a poisoned task's label, cut so that its row can always be written

JobLookup = Callable[[str], tuple[dict[str, Any] | None, Job | None]]


def message_key_for_submit(store: JobStore, job_id: str) -> str:
    """The job's message key: the one its document holds if it was submitted before, else a new one
    (256 random bits). Registered as a secret, so no log, error or record shows it."""
    try:
        doc = store.load_job_doc(job_id)
    except (JobNotFoundError, ValueError):  # none yet, or unreadable: this submit writes a new one
        doc = {}
    key = doc.get(MESSAGE_KEY_FIELD) if isinstance(doc, dict) else None
    if not isinstance(key, str) or len(key) < 32:
        key = secrets.token_urlsafe(32)
    register_secret(key)
    return key


def job_message_key(store: JobStore, job_id: str) -> bytes:
    """The key a submitted job's messages are MACed with (to queue its tasks again, as tests do);
    JobNotFoundError if the job has none."""
    key = store.load_job_doc(job_id).get(MESSAGE_KEY_FIELD)
    if not isinstance(key, str) or not key:
        raise JobNotFoundError(f"job {job_id!r} has no message key (submitted by an older batchyard)")
    register_secret(key)
    return key.encode()


class Refused(Exception):
    """A received message that is not run: why, and whether its tasks are the owner's to record."""

    def __init__(self, reason: str, *, verified: TaskMessage | None = None, dropped: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.verified = verified  # the owner's message: its unfinished tasks are recorded as poison
        self.dropped = dropped  # a deleted job's leftover: deleted, not poisoned, logged at debug
        self.original = ""  # the message as received (its JSON text when it decodes)
        self.job_id: str | None = None  # the job it names, when it could be read


class Admission:
    """A worker's checks of received messages, with the job keys and manifests it has read."""

    def __init__(self, store: JobStore, lookup: JobLookup, *, max_dequeue_count: int) -> None:
        self.store = store
        self.lookup = lookup
        self.max_dequeue_count = max_dequeue_count
        self._keys: dict[str, tuple[tuple[Any, Any], bytes | None]] = {}
        self._submissions: dict[str, tuple[tuple[Any, ...], tuple[str, frozenset[str]]]] = {}
        self._warned: set[str] = set()  # jobs whose forged messages this worker has warned about

    def admit(self, message: Any, queue_job: str) -> tuple[TaskMessage, Job]:
        """The message (received from ``queue_job``'s queue) and its job if it may run; Refused if
        not. Other errors are passing faults (the message comes back), until it was delivered too
        often: then it is refused too."""
        original = str(message.content)
        try:
            original = decode_text(message.content)
            parsed = TaskMessage.decode(original)
        except ValueError as exc:
            raise self._with(Refused(f"malformed message: {exc}"), original) from None
        if parsed.job_id != queue_job:  # only someone else's client puts it there
            refused = Refused(f"message names job {parsed.job_id!r} but was on the queue of job {queue_job!r}")
            raise self._with(refused, original, parsed.job_id)
        try:
            return self._check(parsed, int(message.dequeue_count or 0))
        except Refused as refused:
            raise self._with(refused, original, parsed.job_id) from None
        except StorageLostError:
            raise
        except Exception as exc:
            if int(message.dequeue_count or 0) <= self.max_dequeue_count:
                raise
            refused = Refused(f"delivered {message.dequeue_count} times (max_dequeue_count={self.max_dequeue_count}); "
                              f"checking it failed: {redact(f'{type(exc).__name__}: {exc}')}")
            raise self._with(refused, original, parsed.job_id) from None

    @staticmethod
    def _with(refused: Refused, original: str, job_id: str | None = None) -> Refused:
        refused.original, refused.job_id = original, job_id
        return refused

    def _check(self, parsed: TaskMessage, dequeue_count: int) -> tuple[TaskMessage, Job]:
        job_id = parsed.job_id
        try:
            entity, job = self.lookup(job_id)
        except JobNotFoundError as exc:
            raise Refused(f"job {job_id!r} cannot be loaded: {exc}", dropped=True) from None
        except JobValidationError as exc:  # stored, but no longer loads: permanent
            self._authenticate(parsed, None)
            raise Refused(f"job {job_id!r} cannot be loaded: {exc}", verified=parsed) from None
        if entity is None or job is None:
            raise Refused(f"job {job_id!r} not found (deleted)", dropped=True)
        self._authenticate(parsed, entity)
        if dequeue_count > self.max_dequeue_count:
            raise Refused(f"delivered {dequeue_count} times (max_dequeue_count={self.max_dequeue_count})",
                          verified=parsed)
        return parsed, job

    # --- is it the owner's? ---------------------------------------------------------------------------
    def _authenticate(self, parsed: TaskMessage, entity: dict[str, Any] | None) -> None:
        if parsed.defs is None:
            self._check_ids(parsed, entity)
            return
        key = self._key(parsed.job_id, entity)
        why = parsed.forged(key) if key is not None else None
        if why is not None or key is None:  # the job may have been deleted and submitted again: read afresh
            key = self._key(parsed.job_id, entity, fresh=True)
            if key is None:
                raise Refused(f"job {parsed.job_id!r} has no message key (submitted by an older batchyard): "
                              "submit it again to queue its tasks")
            why = parsed.forged(key)
        if why is not None:
            raise Refused(why)

    def _check_ids(self, parsed: TaskMessage, entity: dict[str, Any] | None) -> None:
        """Ids only: each must have a row (written at submit) and be in the job's manifest."""
        rows = self.store.get_tasks(parsed.partition, parsed.task_ids)
        missing = [t for t in parsed.task_ids if t not in rows]
        if missing:
            raise Refused(f"task(s) {_named(missing)} have no record in job {parsed.job_id!r} (a message "
                          "without definitions names tasks whose rows were written at submit)")
        strangers = [t for t in parsed.task_ids if t not in self._manifest(parsed.job_id, entity)]
        if strangers:
            strangers = [t for t in strangers if t not in self._manifest(parsed.job_id, entity, fresh=True)]
        if strangers:
            raise Refused(f"task(s) {_named(strangers)} are not in job {parsed.job_id!r}'s manifest")

    def _key(self, job_id: str, entity: dict[str, Any] | None, *, fresh: bool = False) -> bytes | None:
        stamp = _stamp(entity)
        cached = self._keys.get(job_id)
        if not fresh and cached is not None and stamp is not None and cached[0] == stamp:
            return cached[1]
        try:
            doc = self.store.load_job_doc(job_id)
        except JobNotFoundError:
            raise Refused(f"job {job_id!r} not found (no job document: deleted)", dropped=True) from None
        except ValueError as exc:  # not JSON: nothing of it can be trusted
            raise Refused(f"job {job_id!r} cannot be loaded: its document is not JSON ({exc})") from None
        text = doc.get(MESSAGE_KEY_FIELD) if isinstance(doc, dict) else None
        key = None
        if isinstance(text, str) and text:
            register_secret(text)
            key = text.encode()
        if stamp is not None:
            self._keys[job_id] = (stamp, key)
        return key

    def dropped(self, job_id: str, task_ids: Iterable[str]) -> frozenset[str]:
        """Those of ``task_ids`` that are no tasks of the job's last submission (its manifest, read again
        before any is said to be dropped): a message an earlier submission queued may name a task that a
        later one dropped. Asked once per message."""
        entity, _ = self.lookup(job_id)
        wanted = [t for t in task_ids if not is_final_or_barrier(t)]  # the final step is in no manifest
        missing: frozenset[str] = frozenset()
        for fresh in (False, True):
            spec_hash, ids = self._submitted(job_id, entity, fresh=fresh)
            # No manifest (a job an older batchyard submitted), or one another configuration sharing the
            # system container wrote for its own job of this id: nothing to compare with.
            if not ids or spec_hash != str((entity or {}).get("spec_hash") or ""):
                return frozenset()
            missing = frozenset(t for t in wanted if t not in ids)
            if not missing:
                break
        return missing

    def _submitted(self, job_id: str, entity: dict[str, Any] | None, *,
                   fresh: bool) -> tuple[str, frozenset[str]]:
        """The job's manifest: the spec hash it was written with and its task ids (cached per submission)."""
        stamp = _stamp(entity)
        cached = self._submissions.get(job_id)
        if not fresh and cached is not None and stamp is not None and cached[0] == stamp:
            return cached[1]
        found = self.store.manifest_of(job_id)
        submitted = ("", frozenset()) if found is None else (found[0], frozenset(row[0] for row in found[1]))
        if stamp is not None:
            self._submissions[job_id] = (stamp, submitted)
        return submitted

    def _manifest(self, job_id: str, entity: dict[str, Any] | None, *, fresh: bool = False) -> frozenset[str]:
        return self._submitted(job_id, entity, fresh=fresh)[1]

    # --- refused messages -----------------------------------------------------------------------------
    def log_refusal(self, message_id: str, refused: Refused) -> None:
        """A deleted job's leftovers at debug; someone else's made-up messages warned about once per job."""
        if refused.dropped:
            log.debug("message %s dropped: %s", message_id, refused.reason)
            return
        job = refused.job_id
        quiet = refused.verified is None and job is not None and job in self._warned
        if not quiet and refused.verified is None and job is not None:
            self._warned.add(job)
        log.log(logging.DEBUG if quiet else logging.WARNING, "message %s to the poison queue: %s",
                message_id, refused.reason)


def poison_once(store: JobStore, message: Any, refused: Refused) -> None:
    """Put ``message`` on the poison queue with its reason, once however often it is delivered."""
    marker = {"PartitionKey": POISON_MARKERS, "RowKey": str(message.id), "sent": False,
              "reason": refused.reason[:MAX_LABEL_CHARS]}
    keyed = _MARKER_KEY.fullmatch(str(message.id)) is not None
    if keyed:
        try:
            store.jobs.create_entity(marker)
        except ResourceExistsError:
            if store.jobs.get_entity(POISON_MARKERS, str(message.id)).get("sent"):
                return  # an earlier delivery put it there; only its delete failed
    store.to_poison(refused.original, refused.reason)
    if keyed:
        store.jobs.update_entity({"PartitionKey": POISON_MARKERS, "RowKey": str(message.id), "sent": True},
                                 mode=UpdateMode.MERGE)


def record_poisoned(store: JobStore, parsed: TaskMessage, reason: str) -> None:
    """The owner's poisoned message: each of its unfinished tasks gets a final ``poison`` result."""
    import json

    for task_id in parsed.task_ids:
        entity = store.get_task(parsed.partition, task_id)
        definition = parsed.definition(task_id)
        if entity is None and definition is not None:  # never claimed: its row says why it never ran
            label = definition.label[:MAX_LABEL_CHARS]
            if store.create_final(parsed.partition, task_id, label, final_record("poison", reason, attempts=[])):
                continue
            entity = store.get_task(parsed.partition, task_id)
        if entity is None or entity.get("state") in ("succeeded", "failed"):
            continue
        if entity.get("state") == "running" and float(entity.get("claim_expires") or 0) > time.time():
            continue  # a live worker runs it now, from another copy: its result is the task's
        attempts = json.loads(entity.get("attempts_json") or "[]")
        store.record_final(parsed.partition, task_id, etag=entity["_etag"],
                           fields=final_record("poison", reason, attempts=attempts))


def _stamp(entity: dict[str, Any] | None) -> tuple[Any, Any] | None:
    """What changes when a job is submitted anew (a new spec, or its tasks: ``updated``) or deleted and
    submitted again."""
    return None if entity is None else (entity.get("spec_hash"), entity.get("created"), entity.get("updated"))


def _named(ids: list[str]) -> str:
    shown = ", ".join(repr(t) for t in ids[:MAX_NAMED])
    return shown + (f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else "")

