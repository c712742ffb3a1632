"""What ``batchyard download`` serves: the outputs the job's current records stand for, not a blob listing.

For every task of the job's last submission (its manifest) whose record says it uploaded (succeeded,
or failed, per each output's ``upload_on``), the blobs that the current outputs spec gives it:
under the task's own prefix (each task's, kept in the manifest when a path has a per-task
placeholder), named as Batch names an output of that pattern (``is_output_blob``). So an output
that a re-run replaced is served as it is now, and one that only an older outputs spec produced
(another pattern, another path) is not served, although it stays in its container.

Where several tasks share one prefix (a path such as ``{job_id}/``), a blob there that matches the
current pattern cannot be told apart by task: it is served while any task of that output
uploaded. A per-task path (``{job_id}/{input_stem}/``) makes the answer exact.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from batchyard.backends.base import TaskResult, TaskState
from batchyard.backends.documents import JobDocuments
from batchyard.core.batch_semantics import is_output_blob
from batchyard.core.job import Job, output_prefix
from batchyard.core.placeholders import PLACEHOLDER_RE
from batchyard.storage.account import Storage

UPLOADED = {"success": {TaskState.SUCCEEDED}, "failure": {TaskState.FAILED},
            "completion": {TaskState.SUCCEEDED, TaskState.FAILED}}


def current_outputs(storage: Storage, documents: JobDocuments, job: Job,
                    results: Iterable[TaskResult]) -> Iterator[tuple[str, str]]:
    """(container, blob name) of each output the records of ``job``'s tasks stand for, each once."""
    rows = documents.manifest_rows(job.id)
    if rows is None:  # a job submitted before manifests were kept: every blob under its locations
        for container, prefix in job.output_locations():
            yield from ((container, name) for name in storage.list_blob_names(container, prefix))
        return
    current = {row[0]: row for row in rows}
    listings: dict[tuple[str, str], list[str]] = {}
    served: set[tuple[str, str]] = set()
    scanned: set[tuple[str, str, str | None]] = set()  # each (container, prefix, pattern) is read once
    for result in results:
        row = current.get(result.task_id)
        if row is None:  # a task of an earlier submission that this one no longer has
            continue
        for index, out in enumerate(job.outputs):
            if result.state not in UPLOADED[out.upload_on]:
                continue
            shared = documents.static_output_prefix(job, index)
            prefix = _task_prefix(job, row, index, shared)
            # Tasks sharing a prefix (a path such as `{job_id}/`) stand for the same blobs: scanning
            # them once per task made a download of n such tasks read n x n names.
            scan = (out.container, shared, None) if prefix is None else (out.container, prefix, out.pattern)
            if scan in scanned:
                continue
            scanned.add(scan)
            if prefix is None:  # per-task path, prefixes not recorded: what is under the shared part
                candidates: Iterable[str] = _listing(storage, listings, out.container, shared)
            else:
                candidates = _under(_listing(storage, listings, out.container, shared), prefix)
            for name in candidates:
                key = (out.container, name)
                if key not in served and (prefix is None or is_output_blob(out.pattern, prefix, name)):
                    served.add(key)
                    yield key


def job_outputs(storage: Storage, documents: JobDocuments, backend: Any, job_id: str) -> Iterator[tuple[str, str]]:
    """Every output ``download`` serves of ``backend``'s job: the per-file tasks' (:func:`current_outputs`),
    then its final step's (:func:`final_step_outputs`), each once."""
    job = backend.job(job_id)
    final = backend.final_step(job_id) if job.final is not None and job.final.outputs else None
    served: set[tuple[str, str]] | None = set() if final is not None else None  # only to tell the final's apart
    for key in current_outputs(storage, documents, job, backend.list_task_results(job_id)):
        if served is not None:
            served.add(key)
        yield key
    if final is not None:
        yield from (key for key in final_step_outputs(storage, job, final.result) if key not in (served or ()))


def final_step_outputs(storage: Storage, job: Job, result: TaskResult | None) -> Iterator[tuple[str, str]]:
    """(container, blob name) of each output the final step's ``[[final.outputs]]`` put, when its
    record (``result``) says it uploaded them: the job's outputs too, so ``download`` serves them."""
    if job.final is None or result is None:
        return
    from batchyard.backends.final_step import final_as_job, final_task_def

    final_job, task = final_as_job(job), final_task_def(job)
    for out in final_job.outputs:
        if result.state not in UPLOADED[out.upload_on]:
            continue
        prefix = output_prefix(final_job, out, task)
        yield from ((out.container, name) for name in storage.list_blob_names(out.container, prefix)
                    if is_output_blob(out.pattern, prefix, name))


def shared_paths(job: Job) -> list[str]:
    """The output paths of ``job`` that every task shares (no per-task placeholder): there a blob
    cannot be told apart by task, so one a task wrote before failing on a later run is served too."""
    return [out.path for out in job.outputs if not _per_task(out.path)]


def _per_task(path: str) -> bool:
    return any(name not in ("", "job_id") for name in PLACEHOLDER_RE.findall(path))


def _task_prefix(job: Job, row: list[Any], index: int, shared: str) -> str | None:
    """The task's prefix for output ``index``: recorded in its manifest row, or the shared one when the
    path has no per-task placeholder (None: per-task, but not recorded)."""
    if len(row) > 2 and isinstance(row[2], list) and index < len(row[2]):
        return str(row[2][index])
    return None if _per_task(job.outputs[index].path) else shared


def _listing(storage: Storage, listings: dict[tuple[str, str], list[str]], container: str, prefix: str) -> list[str]:
    """The sorted blob names under ``prefix``, listed once per download."""
    key = (container, prefix)
    if key not in listings:
        listings[key] = sorted(storage.list_blob_names(container, prefix))
    return listings[key]


def _under(names: list[str], prefix: str) -> Iterator[str]:
    """The names of sorted ``names`` that start with ``prefix``."""
    index = bisect_left(names, prefix)
    while index < len(names) and names[index].startswith(prefix):
        yield names[index]
        index += 1


__all__ = ["current_outputs", "shared_paths"]
