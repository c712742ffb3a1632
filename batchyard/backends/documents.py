"""A job's documents on the storage account, and its files put where its tasks will read them.

Both backends keep the same documents, in the system container, and nothing else here:

- ``jobs/<job id>/job.json``: the job as submitted, its spec hash and the backend it ran on; on
  the local backend also the job's message key (the secret its queue messages are MACed with,
  which no queue message carries: docs/security.md);
- ``jobs/<job id>/tasks.json.gz``: the manifest, the id and label of every task of the last
  submission (the local backend's task rows appear only when a worker claims them; ``download``
  serves the outputs of these tasks only), and each task's output prefixes when they differ by task;
- ``jobs/<job id>/resources/<file>``: the resource files, uploaded once;
- ``jobs/<job id>/<name>``: what one backend keeps about the job besides (the azure backend's
  chain of Batch jobs, ``azure-runs.json``);

and the tasks' logs in the log container, under ``<job id>/``. The local backend's queue and
tables are its own (:mod:`batchyard.backends.local.store`); the azure backend keeps its task
records in Batch itself, so it needs no queue and no table.

Before anything is queued, ``inputs.local_dir`` is uploaded to the input container (a file
whose blob has the same MD5 is skipped) and the job is fanned out into tasks from the
listing (or its CSV table).
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.base import dumps
from batchyard.core.batch_semantics import log_prefix
from batchyard.core.config import Config
from batchyard.core.errors import JobNotFoundError, JobValidationError
from batchyard.core.job import (
    ID_RE,
    Job,
    TaskDef,
    job_from_dict,
    output_prefix,
    tasks_from_blob_names,
    tasks_from_table,
)
from batchyard.core.output_names import OutputCollisions
from batchyard.core.placeholders import PLACEHOLDER_RE, static_prefix
from batchyard.core.rerun import blob_identity, iter_with_fingerprints
from batchyard.storage.account import Storage, file_md5
from batchyard.storage.transfer import BURST_REQUESTS, BlobTransfer

log = logging.getLogger(__name__)

UPLOAD_CONCURRENCY = 2  # threads, each putting a burst of small files at a time (Azurite takes them one by one)


class JobDocuments:
    """The documents of every job on one storage account (blobs only: no queue, no table)."""

    def __init__(self, storage: Storage, config: Config) -> None:
        self.storage = storage
        self.system_container = config.storage.system_container
        self.log_container = config.storage.log_container

    def ensure(self) -> None:
        """Create the system and log containers (at submit; readers never create them)."""
        self.storage.ensure_container(self.system_container)
        self.storage.ensure_container(self.log_container)

    # --- where each document lives --------------------------------------------------------------------
    @staticmethod
    def job_doc_blob(job_id: str) -> str:
        return f"jobs/{job_id}/job.json"

    @staticmethod
    def manifest_blob(job_id: str) -> str:
        return f"jobs/{job_id}/tasks.json.gz"

    @staticmethod
    def resource_blob(job_id: str, target: str) -> str:
        return f"jobs/{job_id}/resources/{target}"

    # --- the job document -----------------------------------------------------------------------------
    def save_job(self, job: Job, *, spec_hash: str, backend: str, message_key: str | None = None) -> None:
        doc = {"job": job.model_dump(mode="json"), "spec_hash": spec_hash, "backend": backend}
        if message_key is not None:
            doc["message_key"] = message_key
        self.storage.upload_bytes(self.system_container, self.job_doc_blob(job.id), dumps(doc).encode())

    def has_job(self, job_id: str) -> bool:
        return self.storage.blob_md5(self.system_container, self.job_doc_blob(job_id)) is not None

    def load_job_doc(self, job_id: str) -> dict[str, Any]:
        try:
            return json.loads(self.storage.download_bytes(self.system_container, self.job_doc_blob(job_id)))
        except ResourceNotFoundError:
            raise JobNotFoundError(f"job {job_id!r} not found (no job document)") from None

    def recorded_backend(self, job_id: str) -> str | None:
        """The backend the job last ran on, from its document (None: no document, or written before the field)."""
        try:
            doc = self.load_job_doc(job_id)
        except JobNotFoundError:
            return None
        backend = doc.get("backend")
        return backend if isinstance(backend, str) and backend else None

    def load_job(self, job_id: str) -> Job:
        """The job as submitted (already validated then, so its CSV need not be on this machine)."""
        return job_from_dict(self.load_job_doc(job_id)["job"], source=f"job {job_id}", stored=True)

    # --- the manifest: every task of a submission, by id and label --------------------------------------
    def save_manifest(self, job_id: str, spec_hash: str, tasks: Iterable[TaskDef], *, job: Job | None = None) -> None:
        """The list of a job's tasks, for ``status``, ``cancel`` and reports to show the tasks that
        have no record yet, and for ``download`` to serve the outputs of this submission's tasks
        only. With ``job``, when an output path has a per-task placeholder, each task's output
        prefixes (one per output, in order) too: ``[id, label, [prefix, ...]]``."""
        self.put_manifest(job_id, manifest_bytes(spec_hash, tasks, job=job))

    def put_manifest(self, job_id: str, data: bytes) -> None:
        """Store a manifest made by :func:`manifest_bytes` (a submit makes it while it plans)."""
        self.storage.upload_bytes(self.system_container, self.manifest_blob(job_id), data)

    def manifest_rows(self, job_id: str) -> list[list[Any]] | None:
        """The manifest's rows as saved (:meth:`save_manifest`); None for a job without a manifest."""
        found = self.manifest_of(job_id)
        return None if found is None else found[1]

    def manifest_of(self, job_id: str) -> tuple[str, list[list[Any]]] | None:
        """(the spec hash of the submission that wrote it, its rows); None for a job without a manifest."""
        try:
            data = self.storage.download_bytes(self.system_container, self.manifest_blob(job_id))
        except ResourceNotFoundError:
            return None
        manifest = json.loads(gzip.decompress(data))
        return str(manifest.get("spec_hash") or ""), list(manifest["tasks"])

    def load_manifest(self, job_id: str) -> list[tuple[str, str]]:
        """(task id, label) of every task of the job's last submission; [] for a job without a manifest."""
        return [(row[0], row[1]) for row in self.manifest_rows(job_id) or []]

    @staticmethod
    def static_output_prefix(job: Job, index: int) -> str:
        """Output ``index``'s path up to its first per-task placeholder."""
        return static_prefix(job.outputs[index].path, job.id)

    # --- a backend's own state about a job ------------------------------------------------------------
    @staticmethod
    def state_blob(job_id: str, name: str) -> str:
        return f"jobs/{job_id}/{name}"

    def save_backend_state(self, job_id: str, name: str, data: bytes) -> None:
        self.storage.upload_bytes(self.system_container, self.state_blob(job_id, name), data)

    def load_backend_state(self, job_id: str, name: str) -> bytes | None:
        try:
            return self.storage.download_bytes(self.system_container, self.state_blob(job_id, name))
        except ResourceNotFoundError:
            return None

    # --- resource files -------------------------------------------------------------------------------
    def upload_resources(self, job: Job) -> list[str]:
        """Upload the job's changed resource files; returns their MD5s (part of the spec hash)."""
        digests = []
        for i, rf in enumerate(job.resource_files):
            path = (job.base_dir / rf.source).resolve()
            if not path.is_file():
                raise JobValidationError(f"job {job.id}", [(f"resource_files.{i}.source", f"{path} not found")])
            blob = self.resource_blob(job.id, rf.target)
            digest = file_md5(path)
            if self.storage.blob_md5(self.system_container, blob) != digest:
                self.storage.upload_file(self.system_container, blob, path)
            digests.append(digest.hex())
        return digests

    def delete_documents(self, job_id: str) -> None:
        """Remove the job's documents, resource files and logs (its outputs stay)."""
        for container, prefix in ((self.system_container, f"jobs/{job_id}/"), (self.log_container, log_prefix(job_id))):
            client = self.storage.container(container)
            for name in list(self.storage.list_blob_names(container, prefix)):
                client.delete_blob(name)


def sync_local_dir(storage: Storage, job: Job) -> int:
    """Upload the files of ``inputs.local_dir`` that changed; returns how many were uploaded."""
    assert job.inputs is not None and job.inputs.local_dir is not None
    inputs = job.inputs
    folder = (job.base_dir / inputs.local_dir).resolve()
    if not folder.is_dir():
        raise JobValidationError(f"job {job.id}", [("inputs.local_dir", f"{folder} is not a folder")])
    storage.ensure_container(inputs.container)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())

    # What is there already, in one listing (not a request per file): a blob whose MD5 is the file's is kept.
    stored = {name: md5 for name, md5, _, _ in storage.list_blob_identities(inputs.container, inputs.prefix)}

    transfer = BlobTransfer(storage)

    def push(chunk: list[Path]) -> int:
        """The chunk's changed files, the small ones in one burst (``uploaded_ahead``), the rest alone."""
        named = [(path, inputs.prefix + path.relative_to(folder).as_posix()) for path in chunk]
        changed = [(path, name) for path, name in named if stored.get(name, b"") != file_md5(path)]
        with transfer.uploaded_ahead([(path, name, inputs.container, None) for path, name in changed]):
            for path, name in changed:
                transfer.upload(path, blob_name=name, container=inputs.container)
        return len(changed)

    chunks = [files[i:i + BURST_REQUESTS] for i in range(0, len(files), BURST_REQUESTS)]
    with ThreadPoolExecutor(UPLOAD_CONCURRENCY) as pool:
        uploaded = sum(pool.map(push, chunks))
    log.info("inputs.local_dir: %d file(s) uploaded, %d unchanged", uploaded, len(files) - uploaded)
    return uploaded


class ManifestWriter:
    """A manifest (:meth:`JobDocuments.save_manifest`) written into gzip as the tasks go by, a thousand
    rows at a time (one JSON encoding each): a million tasks take ~15 MB compressed, never the rows."""

    ROWS_PER_PIECE = 1000

    def __init__(self, spec_hash: str, *, job: Job | None = None) -> None:
        self.job = job
        self.per_task = job is not None and any(name not in ("", "job_id") for out in job.outputs
                                                for name in PLACEHOLDER_RE.findall(out.path))
        self._gzip = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip container
        self._parts = [self._gzip.compress(f'{{"spec_hash":{dumps(spec_hash)},"tasks":['.encode())]
        self._rows: list[list[Any]] = []
        self._separator = ""

    def add(self, task: TaskDef) -> None:
        job = self.job
        self._rows.append([task.task_id, task.label, [output_prefix(job, out, task) for out in job.outputs]]
                          if self.per_task and job is not None else [task.task_id, task.label])
        if len(self._rows) >= self.ROWS_PER_PIECE:
            self._flush_rows()

    def _flush_rows(self) -> None:
        if self._rows:
            self._parts.append(self._gzip.compress((self._separator + dumps(self._rows)[1:-1]).encode()))
            self._rows, self._separator = [], ","

    def finish(self) -> bytes:
        self._flush_rows()
        self._parts += [self._gzip.compress(b"]}"), self._gzip.flush()]
        return b"".join(self._parts)


def manifest_bytes(spec_hash: str, tasks: Iterable[TaskDef], *, job: Job | None = None) -> bytes:
    writer = ManifestWriter(spec_hash, job=job)
    for task in tasks:
        writer.add(task)
    return writer.finish()


class TaskSource:
    """A job's tasks, fingerprinted, as many times as they are iterated, never all held: a table is
    read again each time (it is streamed), a listing is kept as names and identities. ``inputs.local_dir``
    is uploaded and the inputs listed once, when the source is made. Ids are checked against Batch's
    id rule as they go by, so the first pass (a submit's plan) refuses a bad one before anything is
    queued."""

    def __init__(self, storage: Storage, job: Job, *, resources: Mapping[str, str]) -> None:
        self.job, self.resources = job, resources
        self.identities: dict[str, str] = {}
        if ID_RE.fullmatch(job.id) is None:  # the model's check lets a trailing newline through
            raise JobValidationError(f"job {job.id!r}", [("id", "not a valid id (1-64 letters, digits, '-' or '_')")])
        if job.tasks is None:
            assert job.inputs is not None
            if job.inputs.local_dir:
                sync_local_dir(storage, job)
            self.identities = {name: blob_identity(md5=md5, etag=etag, size=size) for name, md5, etag, size
                               in storage.list_blob_identities(job.inputs.container, job.inputs.prefix)}

    def __iter__(self) -> Iterator[TaskDef]:
        job = self.job
        tasks = tasks_from_table(job) if job.tasks is not None else tasks_from_blob_names(job, self.identities)
        return iter_with_fingerprints(job, OutputCollisions(job).checked(_iter_checked_ids(job, tasks)),
                                      resources=self.resources, identities=self.identities)

    def check_not_empty(self, count: int) -> None:
        """A listing that matched nothing is the user's mistake, named; an empty table is a job of none."""
        if count == 0 and self.job.inputs is not None:
            _no_inputs(self.job)


def _no_inputs(job: Job) -> None:
    assert job.inputs is not None
    raise JobValidationError(f"job {job.id}", [(
        "inputs", f"no blob in container {job.inputs.container!r} under prefix {job.inputs.prefix!r} "
                  f"matches glob {job.inputs.glob!r}")])


def fan_out(storage: Storage, job: Job, *, resources: Mapping[str, str] | None = None) -> list[TaskDef]:
    """The job's tasks (``inputs.local_dir`` is uploaded first, so its files are counted), each id
    checked against Batch's id rule before anything is queued (ids become table keys and dirs).

    With ``resources`` (each resource file's target -> content MD5, hex), the inputs are listed with
    their MD5, ETag and size, and each task carries its fingerprint (:mod:`batchyard.core.rerun`).
    """
    if resources is not None:  # the submit's own source, held as a list
        source = TaskSource(storage, job, resources=resources)
        tasks = list(source)
        source.check_not_empty(len(tasks))
        return tasks
    if job.tasks is not None:
        return _checked_ids(job, tasks_from_table(job))
    assert job.inputs is not None
    if job.inputs.local_dir:
        sync_local_dir(storage, job)
    tasks = _checked_ids(job, tasks_from_blob_names(job, storage.list_blob_names(job.inputs.container,
                                                                                 job.inputs.prefix)))
    if not tasks:
        _no_inputs(job)
    return tasks


def _checked_ids(job: Job, tasks: Iterable[TaskDef]) -> list[TaskDef]:
    if ID_RE.fullmatch(job.id) is None:  # the model's check lets a trailing newline through
        raise JobValidationError(f"job {job.id!r}", [("id", "not a valid id (1-64 letters, digits, '-' or '_')")])
    return list(OutputCollisions(job).checked(_iter_checked_ids(job, tasks)))


def _iter_checked_ids(job: Job, tasks: Iterable[TaskDef]) -> Iterator[TaskDef]:
    for task in tasks:
        if ID_RE.fullmatch(task.task_id) is None:
            raise JobValidationError(f"job {job.id}", [(
                f"task {task.label!r}", f"task id {task.task_id!r} is not a valid id (1-64 letters, digits, "
                                        "'-' or '_')")])
        yield task
