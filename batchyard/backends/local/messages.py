"""The local backend's queue messages: what a worker is told to run, and what lands on the poison queue.

Two versions are read; submit writes version 2:

- ``{"v": 1, "job": ID, "tasks": [IDS]}``: ids only; each task's row was written at submit;
- ``{"v": 2, "job": ID, "tasks": [IDS], "defs": [DEFS]}``: the same ids with each task's
  definition (argv, input blob, parameters). The worker creates the task's row when it claims
  it, so a submit writes no row per task: a table write costs Azurite ~1 ms of CPU per row,
  which made rows the bulk of submitting 10,000 tasks.

A definition carries what the row would (never a secret: the job's environment stays in the
job document). Messages stay under :data:`MAX_MESSAGE_BYTES` of UTF-8 text: :func:`pack`
splits a chunk that would not fit, and a task too big for any message is left to a row
written at submit and a version 1 message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from batchyard.core.job import TaskDef

MAX_MESSAGE_BYTES = 64 * 1024
# The queue service counts the XML-escaped request body: keep a definition-carrying message
# well below the limit, so escaping (& < > in argv) can never push it over.
MAX_PACKED_BYTES = 40 * 1024
MAX_TASKS_PER_MESSAGE = 32
MAX_POISON_BYTES = 48 * 1024  # a poison message stays well under the queue's 64 KiB
MAX_REASON_CHARS = 2_000
READ_VERSIONS = (1, 2)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def def_to_dict(task: TaskDef) -> dict[str, Any]:
    data: dict[str, Any] = {"argv": list(task.argv)}
    if task.input_blob is not None:
        data.update(c=task.input_container, b=task.input_blob, p=task.input_path)
    if task.params:
        data["params"] = [list(p) for p in task.params]
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
    blob = data.get("b")
    fields = (data.get("c"), blob, data.get("p"))
    if blob is not None and not all(isinstance(x, str) and x for x in fields):
        raise ValueError(f"definition of task {task_id!r}: input container, blob and path must be strings")
    return TaskDef(task_id=task_id, argv=tuple(argv), input_container=fields[0], input_blob=blob,
                   input_path=fields[2], params=tuple((k, v) for k, v in params))


@dataclass(frozen=True)
class TaskMessage:
    job_id: str
    task_ids: tuple[str, ...]
    defs: tuple[TaskDef, ...] | None = None  # version 2: the definitions, in task_ids order

    def encode(self) -> str:
        body: dict[str, Any] = {"v": 1, "job": self.job_id, "tasks": list(self.task_ids)}
        if self.defs is not None:
            body.update(v=2, defs=[def_to_dict(d) for d in self.defs])
        text = _dumps(body)
        if len(text.encode()) > MAX_MESSAGE_BYTES:  # pack() never builds one; guard the invariant
            raise ValueError("task message over 64 KiB")
        return text

    def definition(self, task_id: str) -> TaskDef | None:
        if self.defs is None:
            return None
        return next((d for d in self.defs if d.task_id == task_id), None)

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
        if version == 1:
            return cls(job, tuple(tasks))
        defs = data.get("defs")
        if not isinstance(defs, list) or len(defs) != len(tasks):
            raise ValueError("field 'defs' must be a list with one definition per task id")
        return cls(job, tuple(tasks), tuple(def_from_dict(t, d) for t, d in zip(tasks, defs, strict=True)))


def pack(job_id: str, tasks: Sequence[TaskDef], size: int, *,
         workers: int | None = None) -> Iterator[TaskMessage | TaskDef]:
    """Version 2 messages of up to ``size`` tasks each, split further where one would be too big.

    Given the number of ``workers`` that will share them, the last messages get smaller (see
    :func:`chunk_sizes`). A task whose definition alone is too big for a message is yielded as
    itself: the caller writes its row and sends it in a version 1 message (ids only).
    """
    counts = chunk_sizes(len(tasks), size, workers) if workers else (size for _ in range(0, len(tasks), size))
    start = 0
    for count in counts:
        yield from _fit(job_id, list(tasks[start:start + count]))
        start += count


def chunk_sizes(n_tasks: int, size: int, workers: int) -> Iterator[int]:
    """Tasks per message, in queue order: ``size`` each, then fewer towards the end.

    A worker runs a message's tasks one after another, so a last message of ``size`` tasks
    would keep one worker busy while the others have nothing left (a message of 32 ten-second
    tasks is five minutes). Guided self-scheduling: each message takes at most a
    ``2 * workers``-th of what is left, so the last messages are a task or two and the workers
    finish together.
    """
    remaining, share = n_tasks, 2 * max(1, workers)
    while remaining > 0:
        count = min(size, max(1, -(-remaining // share)))
        yield count
        remaining -= count


def _fit(job_id: str, chunk: list[TaskDef]) -> Iterator[TaskMessage | TaskDef]:
    message = TaskMessage(job_id, tuple(t.task_id for t in chunk), tuple(chunk))
    if len(_dumps({"v": 2, "job": job_id, "tasks": list(message.task_ids),
                   "defs": [def_to_dict(d) for d in chunk]}).encode()) <= MAX_PACKED_BYTES:
        yield message
    elif len(chunk) == 1:
        yield chunk[0]
    else:
        half = len(chunk) // 2
        yield from _fit(job_id, chunk[:half])
        yield from _fit(job_id, chunk[half:])


def chunk_size_for(n_tasks: int, workers: int) -> int:
    """Tasks per queue message: 1 for small jobs (best balance), up to 32 for big ones, so that
    submitting 10,000 tasks is hundreds of queue writes, not thousands, while each worker still
    sees many messages."""
    return max(1, min(MAX_TASKS_PER_MESSAGE, n_tasks // max(1, workers * 16)))


def poison_body(content: str, reason: str, at: str) -> str:
    """The poison-queue message for ``content``: the reason and as much of the original as fits.

    The queue takes at most 64 KiB of UTF-8 per message, and JSON escaping can double a
    hostile message (quotes, backslashes, control characters), so the original is cut until
    the encoded body fits in :data:`MAX_POISON_BYTES`; ``truncated`` says whether it was.
    """
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + "..."
    keep = len(content)
    while True:
        body = _dumps({"reason": reason, "original": content[:keep], "truncated": keep < len(content), "at": at})
        size = len(body.encode())
        if size <= MAX_POISON_BYTES or keep == 0:
            return body
        keep = min(keep - 1, int(keep * MAX_POISON_BYTES / size * 0.9))
