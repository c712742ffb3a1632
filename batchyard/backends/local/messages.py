"""The local backend's queue messages: what a worker is told to run, and what lands on the poison queue.

Two versions are read; submit writes version 2:

- ``{"v": 1, "job": ID, "tasks": [IDS]}``: ids only; each task's row was written at submit;
- ``{"v": 2, "job": ID, "tasks": [IDS], "defs": [DEFS]}``: the same ids with each task's
  definition (argv, input blob, parameters, fingerprint) and its ``mac``. The worker creates the task's row
  when it claims it, so a submit writes no row per task: a table write costs Azurite ~1 ms of
  CPU per row, which made rows the bulk of submitting 10,000 tasks.

Either may hold ``"bucket": DIGITS``: the tasks' rows are in the job's partition of that bucket
(:mod:`batchyard.backends.local.rows`); without it, in the job id's own partition. Version 2 may
hold ``"new": true``: none of its tasks had a row when it was queued, so on its first delivery a
worker claims them by creating their rows without asking for them first (a row that exists all
the same refuses the create, and is read then: the flag saves queries, it decides nothing).

Anyone who can put a message on the queue could write a definition, so each one carries a MAC
(HMAC-SHA256 over the job id with the bucket, the task id and the canonical definition) made with the job's
own secret, which lives only in the job document (see :func:`definition_mac` and
docs/security.md). A definition carries what the row would (never a secret: the job's
environment stays in the job document). Task and job ids follow Batch's id rule
(:func:`check_id`) both ways. On the queue a message is base64 of its UTF-8 JSON (the SDK's
``TextBase64EncodePolicy``), so no character of a value can make the queue service choke on
its XML; it stays under :data:`MAX_MESSAGE_BYTES` once encoded: :func:`pack` fills each message
up to :data:`MAX_PACKED_BYTES` (about 190 tiny definitions) and starts the next one there, and a
task too big for any message is left to a row written at submit and a version 1 message.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
from base64 import b64decode
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from batchyard.backends.local.rows import partition_key
from batchyard.core.job import ID_RE, TaskDef
from batchyard.core.wire_json import compact_json

MAX_MESSAGE_BYTES = 64 * 1024  # the queue's limit, counted on the base64 text it stores
MAX_TEXT_BYTES = MAX_MESSAGE_BYTES * 3 // 4  # the most UTF-8 JSON whose base64 fits in that
# What pack() puts in one message, counted exactly on its JSON text (MACs and ids included).
MAX_PACKED_BYTES = 47 * 1024
# Tasks per message for the biggest jobs: the byte limit above usually cuts a message first.
MAX_TASKS_PER_MESSAGE = 256
MAX_POISON_BYTES = 46 * 1024  # base64 makes it ~61 KiB: under the queue's 64 KiB
MAX_REASON_CHARS = 2_000
READ_VERSIONS = (1, 2)


def check_id(value: Any, what: str) -> str:
    """``value`` if it is a Batch id (letters, digits, '-', '_'; 1 to 64), else ValueError naming it.

    Such an id is safe as a table key, a blob name part and a directory name: no ``/``, no ``..``.
    """
    if not isinstance(value, str) or ID_RE.fullmatch(value) is None:
        raise ValueError(f"{what} {value!r} is not a valid id (1-64 letters, digits, '-' or '_')")
    return value


def check_bucket(value: Any) -> str:
    """``value`` if it is a bucket (1-8 digits: see rows.bucket_of); else ValueError."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 8:
        raise ValueError(f"field 'bucket' {value!r} is not a bucket (1-8 digits)")
    return value


def decode_text(content: Any) -> str:
    """The JSON text of a message as the queue holds it (base64 of UTF-8); ValueError if it is not that."""
    try:
        return b64decode(str(content).encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error):
        raise ValueError("not base64-encoded UTF-8 text (batchyard's messages are)") from None


# What json.dumps(value, separators=(",", ":"), sort_keys=True) gives, without a new encoder per call.
_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
# compact_json's output (core/wire_json.py), likewise.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def definition_mac(key: bytes, job_id: str, task: TaskDef, *, bucket: str | None = None) -> str:
    """HMAC-SHA256 (hex) of a task's definition, bound to its job, its row's partition and its task
    id, under the job's secret."""
    return _mac(hmac.new(key, digestmod=hashlib.sha256), partition_key(job_id, bucket), task.task_id,
                def_to_dict(task))


def _mac(keyed: Any, partition: str, task_id: str, data: dict[str, Any]) -> str:
    """:func:`definition_mac` from an HMAC already keyed (copied here, so one key setup serves a job).

    Bound to the row's partition (the job id alone when the job keeps its rows in one, as every
    job did before buckets: such messages still verify), so a message cannot send a task's claim
    to a partition other than the one its submit chose, where it would run a second time."""
    mac = keyed.copy()
    mac.update(_CANONICAL.encode([partition, task_id, data]).encode())
    return str(mac.hexdigest())


def def_to_dict(task: TaskDef) -> dict[str, Any]:
    data: dict[str, Any] = {"argv": list(task.argv)}
    if task.input_blob is not None:
        data.update(c=task.input_container, b=task.input_blob, p=task.input_path)
    if task.params:
        data["params"] = [list(p) for p in task.params]
    if task.fingerprint:
        data["f"] = task.fingerprint
    return data


def def_from_dict(task_id: str, data: Any) -> TaskDef:
    """A task definition from a message; ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"definition of task {task_id!r} is not an object")
    argv, params = data.get("argv"), data.get("params", [])
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"definition of task {task_id!r}: 'argv' must be a non-empty list of strings")
    if not isinstance(params, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in params):
        raise ValueError(f"definition of task {task_id!r}: 'params' must be [name, value] string pairs")
    fingerprint = data.get("f", "")
    if not isinstance(fingerprint, str):
        raise ValueError(f"definition of task {task_id!r}: 'f' (its fingerprint) must be a string")
    blob = data.get("b")
    fields = (data.get("c"), blob, data.get("p"))
    if blob is not None and not all(isinstance(x, str) and x for x in fields):
        raise ValueError(f"definition of task {task_id!r}: input container, blob and path must be strings")
    return TaskDef(task_id=task_id, argv=tuple(argv), input_container=fields[0], input_blob=blob,
                   input_path=fields[2], params=tuple((k, v) for k, v in params), fingerprint=fingerprint)


@dataclass(frozen=True)
class TaskMessage:
    job_id: str
    task_ids: tuple[str, ...]
    defs: tuple[TaskDef, ...] | None = None  # version 2: the definitions, in task_ids order
    macs: tuple[str | None, ...] | None = None  # version 2: each definition's MAC (None: it had none)
    bucket: str | None = None  # where the tasks' rows are (batchyard.backends.local.rows); None: the job's partition
    new: bool = False  # no task of it had a row when it was queued
    # The JSON text pack() assembled as it measured the message: compact_json(body()), not built twice.
    text: str | None = field(default=None, compare=False, repr=False)

    def body(self) -> dict[str, Any]:
        check_id(self.job_id, "job id")
        for task_id in self.task_ids:
            check_id(task_id, "task id")
        body: dict[str, Any] = {"v": 1, "job": self.job_id, "tasks": list(self.task_ids)}
        if self.bucket is not None:
            body["bucket"] = check_bucket(self.bucket)
        if self.defs is not None:
            macs = self.macs or (None,) * len(self.defs)
            if self.new:
                body["new"] = True
            body.update(v=2, defs=[{**def_to_dict(d), **({"mac": m} if m else {})}
                                   for d, m in zip(self.defs, macs, strict=True)])
        return body

    def encode(self) -> str:
        """The message's JSON text (the queue client base64-encodes it)."""
        text = self.text if self.text is not None else compact_json(self.body())
        if len(text.encode()) > MAX_TEXT_BYTES:  # pack() never builds one; guard the invariant
            raise ValueError("task message over 64 KiB once base64-encoded")
        return text

    def forged(self, key: bytes) -> str | None:
        """Why the definitions are not the job owner's (a MAC missing or wrong), or None if all are."""
        defs = self.defs or ()
        for task, mac in zip(defs, self.macs or (None,) * len(defs), strict=True):
            if not mac:
                return f"definition of task {task.task_id!r} carries no MAC"
            expected = definition_mac(key, self.job_id, task, bucket=self.bucket)
            if not hmac.compare_digest(mac.encode(), expected.encode()):
                return f"definition of task {task.task_id!r} has a wrong MAC (not made with job {self.job_id!r}'s key)"
        return None

    @property
    def partition(self) -> str:
        """The table partition of the message's task rows."""
        return partition_key(self.job_id, self.bucket)

    def definition(self, task_id: str) -> TaskDef | None:
        return self._by_id.get(task_id)

    @cached_property
    def _by_id(self) -> dict[str, TaskDef]:
        """The definitions by task id (the first of a repeated id), looked up once per task of a big message."""
        by_id: dict[str, TaskDef] = {}
        for task in self.defs or ():
            by_id.setdefault(task.task_id, task)
        return by_id

    @classmethod
    def decode(cls, text: str) -> TaskMessage:
        """Parse a message; ValueError (with the reason) for anything malformed or of another version."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        version = data.get("v")
        if version not in READ_VERSIONS:
            raise ValueError(f"unknown message version {version!r} (this worker reads {READ_VERSIONS})")
        job, tasks = data.get("job"), data.get("tasks")
        if not isinstance(job, str) or not job:
            raise ValueError("field 'job' missing or not a string")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError("field 'tasks' must be a non-empty list of task ids")
        check_id(job, "job id")
        for task_id in tasks:
            check_id(task_id, "task id")
        bucket, new = data.get("bucket"), data.get("new", False)
        if bucket is not None:
            check_bucket(bucket)
        if not isinstance(new, bool):
            raise ValueError(f"field 'new' {new!r} must be true or false")
        if version == 1:
            return cls(job, tuple(tasks), bucket=bucket)
        defs = data.get("defs")
        if not isinstance(defs, list) or len(defs) != len(tasks):
            raise ValueError("field 'defs' must be a list with one definition per task id")
        parsed = tuple(def_from_dict(t, d) for t, d in zip(tasks, defs, strict=True))
        macs = tuple(d.get("mac") if isinstance(d.get("mac"), str) else None for d in defs)
        return cls(job, tuple(tasks), parsed, macs, bucket=bucket, new=new)


def pack(job_id: str, tasks: Sequence[TaskDef], size: int, *, key: bytes, bucket: str | None = None,
         buckets: Sequence[str | None] | None = None, new: bool = False, workers: int | None = None,
         after: int = 0) -> Iterator[TaskMessage | TaskDef]:
    """Version 2 messages of up to ``size`` tasks each, each definition MACed with the job's
    ``key``; a message whose JSON would pass :data:`MAX_PACKED_BYTES` ends before the task that
    would pass it, which opens the next one. ``after``: how many tasks the caller packs after these
    (a submit packs a big job a slice at a time), counted in what is left.

    Given the number of ``workers`` that will share them, the last messages get smaller (see
    :func:`chunk_sizes`: each takes at most a ``2 * workers``-th of the tasks left). A task whose
    definition alone is too big for a message is yielded as itself: the caller writes its row
    and sends it in a version 1 message (ids only).

    Every task's row is in ``bucket``'s partition; with ``buckets`` (one per task), a message's
    tasks take the bucket of its first: a bucket's edge never cuts a message short, and a bucket
    holds at most a message more than the tasks given it.
    """
    check_id(job_id, "job id")
    size = max(1, size)
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    share = 2 * max(1, workers) if workers else 0
    index, total = 0, len(tasks)
    while index < total:
        here = buckets[index] if buckets is not None else bucket
        partition = partition_key(job_id, here)
        placed = ("" if here is None else f'"bucket":{_COMPACT.encode(check_bucket(here))},') + (
            '"new":true,' if new else "")
        head = f'{{"v":2,"job":{_COMPACT.encode(job_id)},{placed}"tasks":['
        budget = MAX_PACKED_BYTES - len(head.encode()) - len('],"defs":[]}')
        want = min(size, max(1, -(-(total - index + after) // share))) if share else size
        chunk: list[TaskDef] = []
        macs: list[str] = []
        ids: list[str] = []
        defs: list[str] = []
        used = 0
        while len(chunk) < want and index < total:
            task = tasks[index]
            data = def_to_dict(task)
            mac = _mac(keyed, partition, check_id(task.task_id, "task id"), data)
            data["mac"] = mac
            piece, name = _COMPACT.encode(data), f'"{task.task_id}"'  # an id needs no escaping
            cost = len(piece.encode()) + len(name.encode()) + 2  # each with its comma
            if cost > budget:  # too big for any message
                if chunk:
                    break  # it comes first in the next round, alone, and is yielded there
                index += 1
                yield task
                continue
            if used + cost > budget:
                break
            used += cost
            index += 1
            chunk.append(task)
            macs.append(mac)
            ids.append(name)
            defs.append(piece)
        if chunk:
            text = f'{head}{",".join(ids)}],"defs":[{",".join(defs)}]}}'
            yield TaskMessage(job_id, tuple(t.task_id for t in chunk), tuple(chunk), tuple(macs), bucket=here,
                              new=new, text=text)


def chunk_sizes(n_tasks: int, size: int, workers: int) -> Iterator[int]:
    """Tasks per message, in queue order: ``size`` each, then fewer towards the end.

    A worker runs a message's tasks one after another, so a last message of ``size`` tasks
    would keep one worker busy while the others have nothing left (a message of 32 ten-second
    tasks is five minutes). Guided self-scheduling: each message takes at most a
    ``2 * workers``-th of what is left, so the last messages are a task or two and the workers
    finish together. (:func:`pack` follows this rule, counting what is left after the messages
    it has made, which the byte limit may have cut shorter.)
    """
    remaining, share = n_tasks, 2 * max(1, workers)
    while remaining > 0:
        count = min(size, max(1, -(-remaining // share)))
        yield count
        remaining -= count


def chunk_size_for(n_tasks: int, workers: int) -> int:
    """Tasks per queue message: 1 for small jobs (best balance), more as the job grows, so that each
    worker still sees at least 16 messages, up to :data:`MAX_TASKS_PER_MESSAGE` (in practice the
    byte limit: about 190 tiny definitions). A queue write costs about the same whatever it holds
    (~1.6 ms of Azurite's CPU and as much of ours), so 100,000 tasks are ~540 writes, not 3,136."""
    return max(1, min(MAX_TASKS_PER_MESSAGE, n_tasks // max(1, workers * 16)))


def poison_body(content: str, reason: str, at: str) -> str:
    """The poison-queue message for ``content``: the reason and as much of the original as fits.

    The queue takes at most 64 KiB per message (of base64 text: 4/3 of the JSON), and JSON
    escaping can double a hostile message (quotes, backslashes, control characters), so the
    original is cut until the JSON body fits in :data:`MAX_POISON_BYTES`; ``truncated`` says
    whether it was.
    """
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + "..."
    keep = len(content)
    while True:
        body = compact_json({"reason": reason, "original": content[:keep], "truncated": keep < len(content), "at": at})
        size = len(body.encode())
        if size <= MAX_POISON_BYTES or keep == 0:
            return body
        keep = min(keep - 1, int(keep * MAX_POISON_BYTES / size * 0.9))
