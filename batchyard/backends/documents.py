"""Putting a job's files where its tasks will read them, the same way for every backend.

Before anything is queued: ``inputs.local_dir`` is uploaded to the input container (a file
whose blob has the same MD5 is skipped), resource files are uploaded once to the system
container, and the job is fanned out into tasks from the listing (or its CSV table).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from batchyard.backends.local.store import JobStore
from batchyard.core.errors import JobValidationError
from batchyard.core.job import Job, TaskDef, tasks_from_blob_names, tasks_from_table
from batchyard.storage.account import Storage, file_md5

log = logging.getLogger(__name__)

UPLOAD_CONCURRENCY = 16


def sync_local_dir(storage: Storage, job: Job) -> int:
    """Upload the files of ``inputs.local_dir`` that changed; returns how many were uploaded."""
    assert job.inputs is not None and job.inputs.local_dir is not None
    inputs = job.inputs
    folder = (job.base_dir / inputs.local_dir).resolve()
    if not folder.is_dir():
        raise JobValidationError(f"job {job.id}", [("inputs.local_dir", f"{folder} is not a folder")])
    storage.ensure_container(inputs.container)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())

    def push(path: Path) -> bool:
        name = inputs.prefix + path.relative_to(folder).as_posix()
        if storage.blob_md5(inputs.container, name) == file_md5(path):
            return False
        storage.upload_file(inputs.container, name, path)
        return True

    with ThreadPoolExecutor(UPLOAD_CONCURRENCY) as pool:
        uploaded = sum(pool.map(push, files))
    log.info("inputs.local_dir: %d file(s) uploaded, %d unchanged", uploaded, len(files) - uploaded)
    return uploaded


def upload_resources(store: JobStore, job: Job) -> list[str]:
    """Upload the job's changed resource files; returns their MD5s (part of the spec hash)."""
    digests = []
    for i, rf in enumerate(job.resource_files):
        path = (job.base_dir / rf.source).resolve()
        if not path.is_file():
            raise JobValidationError(f"job {job.id}", [(f"resource_files.{i}.source", f"{path} not found")])
        blob = store.resource_blob(job.id, rf.target)
        digest = file_md5(path)
        if store.storage.blob_md5(store.system_container, blob) != digest:
            store.storage.upload_file(store.system_container, blob, path)
        digests.append(digest.hex())
    return digests


def fan_out(storage: Storage, job: Job) -> list[TaskDef]:
    """The job's tasks (``inputs.local_dir`` is uploaded first, so its files are counted)."""
    if job.tasks is not None:
        return list(tasks_from_table(job))
    assert job.inputs is not None
    if job.inputs.local_dir:
        sync_local_dir(storage, job)
    tasks = list(tasks_from_blob_names(job, storage.list_blob_names(job.inputs.container, job.inputs.prefix)))
    if not tasks:
        raise JobValidationError(f"job {job.id}", [(
            "inputs", f"no blob in container {job.inputs.container!r} under prefix {job.inputs.prefix!r} "
                      f"matches glob {job.inputs.glob!r}")])
    return tasks
