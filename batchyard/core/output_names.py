"""Two tasks whose outputs go to the same blob: one silently overwrites the other.

Known before anything runs for an output whose pattern names one file (no wildcard): its blob is
the task's output path with that file's name (Batch's ``OutputFile`` rule, core/batch_semantics.py),
so a path without a per-task placeholder gives every task the same blob (``cat {input} >
result.txt`` with ``pattern = "result.txt"``). ``plan`` reports it and every submit refuses it,
naming the output and two of the tasks. A wildcard pattern's names are the command's to choose:
they cannot be known before it runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from batchyard.core.batch_semantics import output_blob_name
from batchyard.core.errors import JobValidationError, UnsafePathError
from batchyard.core.job import Job, TaskDef, output_prefix
from batchyard.core.paths import pattern_base


class OutputCollisions:
    """``add`` each task; :meth:`problem` names the first clash (each blob kept as an 8-byte hash)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        # A pattern naming a folder ("results/") matches no file at all: plan says so (output-directory).
        self.outputs = [(i, out) for i, out in enumerate(job.outputs)
                        if not pattern_base(out.pattern)[1] and not out.pattern.endswith("/")]
        self._seen: dict[bytes, str] = {}
        self._first: tuple[int, str, str, str] | None = None
        self.count = 0

    def add(self, task: TaskDef) -> None:
        for index, out in self.outputs:
            try:
                prefix = output_prefix(self.job, out, task)
            except UnsafePathError:  # refused with its own message by the fan-out's path checks
                continue
            name = output_blob_name(prefix, out.pattern.rsplit("/", 1)[-1], wildcard=False)
            key = hashlib.blake2b(f"{out.container}/{name}".encode(), digest_size=8).digest()
            owner = self._seen.setdefault(key, task.task_id)
            if owner != task.task_id:
                self.count += 1
                self._first = self._first or (index, owner, task.task_id, f"{out.container}/{name}")

    def problem(self) -> tuple[str, str] | None:
        if self._first is None:
            return None
        index, first, second, blob = self._first
        out = self.job.outputs[index]
        more = f" ({self.count} clashes in all)" if self.count > 1 else ""
        return (f"outputs.{index}", f"tasks {first!r} and {second!r} both write {blob}: pattern {out.pattern!r} "
                f"names one file and path {out.path!r} is the same for both, so one would overwrite the "
                f"other{more}; put a per-task placeholder in path ({{input_stem}}, {{task_id}} or a column), "
                "e.g. path = \"{job_id}/{input_stem}/\"")

    def checked(self, tasks: Iterable[TaskDef]) -> Iterator[TaskDef]:
        """``tasks`` as they come; JobValidationError after the last one if two clash (a submit's first
        pass ends there, before anything is written)."""
        if not self.outputs:  # no output names one file: nothing can clash before the commands run
            yield from tasks
            return
        for task in tasks:
            self.add(task)
            yield task
        problem = self.problem()
        if problem is not None:
            raise JobValidationError(f"job {self.job.id}", [problem])
