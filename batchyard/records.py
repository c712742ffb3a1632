"""Job and task records in Azure Table storage, the queue of task messages, and job documents.

Layout on the storage account (names configurable in ``[storage]``):

- table ``<prefix>jobs``: one row per job (PartitionKey ``job``, RowKey job id): state,
  total, the hash of its spec;
- table ``<prefix>tasks``: one row per task (PartitionKey job id, RowKey task id): its
  argv and input, its claim (who runs it, until when), and its one final result;
- blob ``<system container>/jobs/<job id>/job.json``: the job as submitted, and
  ``.../resources/<file>`` the resource files, uploaded once;
- queue ``<queue>``: versioned JSON messages naming a job and task ids (never a secret,
  never a spec), and ``<queue>-poison`` for messages that could not be handled.

A task row is written whole by one ETag-guarded update at each step (pending ->
running -> final), so it is never half-recorded, and a worker that lost its claim can
never overwrite the result of the worker that took over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from .backends.base import TaskCounts, TaskResult, TaskState, dumps
from .config import Config
from .errors import BackendError, JobNotFoundError, StorageError
from .job import Job, TaskDef
from .storage import Storage, translate_error

log = logging.getLogger(__name__)

MESSAGE_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_TASKS_PER_MESSAGE = 32
TABLE_BATCH = 100
TABLE_CONCURRENCY = 8
MAX_ATTEMPTS_STORED = 20
MAX_POISON_BYTES = 48 * 1024  # a poison message stays well under the queue's 64 KiB
MAX_REASON_CHARS = 2_000
_RESULT_FIELDS = ("exit_code", "failure_category", "failure_message", "stderr_tail", "ended_at")


@dataclass(frozen=True)
class TaskMessage:
    job_id: str
    task_ids: tuple[str, ...]

    def encode(self) -> str:
        text = dumps({"v": MESSAGE_VERSION, "job": self.job_id, "tasks": list(self.task_ids)})
        if len(text.encode()) > MAX_MESSAGE_BYTES:  # cannot happen with ids only; guard the invariant
            raise ValueError("task message over 64 KiB")
        return text

    @classmethod
    def decode(cls, text: str) -> TaskMessage:
        """Parse a message; ValueError (with the reason) for anything malformed or of another version."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("v") != MESSAGE_VERSION:
            raise ValueError(f"unknown message version {data.get('v')!r} (this worker reads {MESSAGE_VERSION})")
        job, tasks = data.get("job"), data.get("tasks")
        if not isinstance(job, str) or not job:
            raise ValueError("field 'job' missing or not a string")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError("field 'tasks' must be a non-empty list of task ids")
        return cls(job, tuple(tasks))


class StorageLostError(StorageError, BackendError):
    """The queue or tables a job lives in are gone from the storage account: the job cannot complete.

    A BackendError too, so ``Backend.wait`` and the CLI report it as the job's failure.
    """


def _table_gone(exc: ResourceNotFoundError) -> bool:
    """A 404 for the table itself (``TableNotFound``), not for one entity in it."""
    code = getattr(exc, "error_code", None)  # a str enum (TableErrorCode) or a plain str
    return str(getattr(code, "value", code)) == "TableNotFound"


def _lost(table: str) -> StorageLostError:
    return StorageLostError(
        f"table {table!r} does not exist on the storage account: it was deleted or the storage lost its "
        "data, so the records of its jobs are gone. Re-run the job to re-create it."
    )


def entity_to_result(entity: dict[str, Any]) -> TaskResult:
    attempts = json.loads(entity.get("attempts_json") or "[]")
    return TaskResult(
        job_id=entity["PartitionKey"], task_id=entity["RowKey"], state=TaskState(entity.get("state", "pending")),
        label=entity.get("label", ""), exit_code=entity.get("exit_code"),
        failure_category=entity.get("failure_category"), failure_message=entity.get("failure_message"),
        attempts=int(entity.get("attempt_count") or 0), started_at=entity.get("started_at"),
        ended_at=entity.get("ended_at"), node_id=entity.get("node_id"),
        stderr_tail=entity.get("stderr_tail") or "", attempt_records=tuple(attempts),
    )


def task_def_from_entity(entity: dict[str, Any]) -> TaskDef:
    return TaskDef(
        task_id=entity["RowKey"], argv=tuple(json.loads(entity["argv_json"])),
        input_container=entity.get("input_container") or None, input_blob=entity.get("input_blob") or None,
        input_path=entity.get("input_path") or None,
        params=tuple(tuple(p) for p in json.loads(entity.get("params_json") or "[]")),
    )


class JobStore:
    """Typed access to the records of every job on one storage account."""

    def __init__(self, storage: Storage, config: Config) -> None:
        self.storage = storage
        section = config.storage
        self.system_container = section.system_container
        self.log_container = section.log_container
        self.queue_name = section.queue
        self.poison_queue_name = f"{section.queue}-poison"
        self._jobs_name = f"{section.table_prefix}jobs"
        self._tasks_name = f"{section.table_prefix}tasks"
        self._jobs: TableClient | None = None
        self._tasks: TableClient | None = None
        self._queue: Any = None
        self._poison: Any = None

    # --- clients --------------------------------------------------------------------------------------
    @property
    def jobs(self) -> TableClient:
        if self._jobs is None:
            self._jobs = self.storage.table_service.get_table_client(self._jobs_name)
        return self._jobs

    @property
    def tasks(self) -> TableClient:
        if self._tasks is None:
            self._tasks = self.storage.table_service.get_table_client(self._tasks_name)
        return self._tasks

    @property
    def queue(self) -> Any:
        if self._queue is None:
            self._queue = self.storage.queue_service.get_queue_client(self.queue_name)
        return self._queue

    @property
    def poison_queue(self) -> Any:
        if self._poison is None:
            self._poison = self.storage.queue_service.get_queue_client(self.poison_queue_name)
        return self._poison

    def ensure(self) -> None:
        """Create the tables, queues and containers (used by submit only: workers never create them,
        so storage that lost them fails loudly instead of silently starting empty)."""
        try:
            for name in (self._jobs_name, self._tasks_name):
                with contextlib.suppress(ResourceExistsError):
                    self.storage.table_service.create_table(name)
            for queue in (self.queue, self.poison_queue):
                with contextlib.suppress(ResourceExistsError):
                    queue.create_queue()
        except Exception as exc:
            raise translate_error(exc, "creating batchyard's tables and queues") from None
        self.storage.ensure_container(self.system_container)
        self.storage.ensure_container(self.log_container)

    # --- jobs -----------------------------------------------------------------------------------------
    def job_doc_blob(self, job_id: str) -> str:
        return f"jobs/{job_id}/job.json"

    def resource_blob(self, job_id: str, target: str) -> str:
        return f"jobs/{job_id}/resources/{target}"

    def save_job(self, job: Job, *, total: int, spec_hash: str, backend: str) -> None:
        doc = {"job": job.model_dump(mode="json"), "spec_hash": spec_hash, "backend": backend}
        self.storage.upload_bytes(self.system_container, self.job_doc_blob(job.id), dumps(doc).encode())
        now = time.time()
        entity = {"PartitionKey": "job", "RowKey": job.id, "state": "active", "total": total,
                  "spec_hash": spec_hash, "backend": backend, "updated": now}
        existing = self.get_job_entity(job.id)
        entity["created"] = existing.get("created", now) if existing else now
        self.jobs.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def get_job_entity(self, job_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.jobs.get_entity("job", job_id))
        except ResourceNotFoundError as exc:
            if _table_gone(exc):
                raise _lost(self._jobs_name) from None
            return None

    def load_job_doc(self, job_id: str) -> dict[str, Any]:
        try:
            return json.loads(self.storage.download_bytes(self.system_container, self.job_doc_blob(job_id)))
        except ResourceNotFoundError:
            raise JobNotFoundError(f"job {job_id!r} not found (no job document)") from None

    def load_job(self, job_id: str) -> Job:
        """The job as submitted (already validated then, so its CSV need not be on this machine)."""
        from .job import job_from_dict

        return job_from_dict(self.load_job_doc(job_id)["job"], source=f"job {job_id}", stored=True)

    def set_job_state(self, job_id: str, state: str) -> None:
        self.jobs.update_entity({"PartitionKey": "job", "RowKey": job_id, "state": state, "updated": time.time()},
                                mode=UpdateMode.MERGE)

    def list_jobs(self) -> Iterator[dict[str, Any]]:
        yield from (dict(e) for e in self.jobs.query_entities("PartitionKey eq 'job'"))

    # --- tasks ----------------------------------------------------------------------------------------
    def task_entities(self, job_id: str, *, select: list[str] | None = None) -> Iterator[dict[str, Any]]:
        try:
            for entity in self.tasks.query_entities(
                "PartitionKey eq @job", parameters={"job": job_id}, select=select, results_per_page=1000
            ):
                yield dict(entity)
        except ResourceNotFoundError:
            raise JobNotFoundError(f"job {job_id!r} not found (no task table)") from None

    def get_task(self, job_id: str, task_id: str) -> dict[str, Any] | None:
        try:
            entity = self.tasks.get_entity(job_id, task_id)
        except ResourceNotFoundError as exc:
            if _table_gone(exc):
                raise _lost(self._tasks_name) from None
            return None
        data = dict(entity)
        data["_etag"] = entity.metadata["etag"]
        return data

    def get_tasks(self, job_id: str, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Several task rows of one job in one query (a message's tasks), with their ETags."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        params = {"pk": job_id, **{f"r{i}": task_id for i, task_id in enumerate(ids)}}
        rows = " or ".join(f"RowKey eq @r{i}" for i in range(len(ids)))
        found: dict[str, dict[str, Any]] = {}
        for entity in self.tasks.query_entities(f"PartitionKey eq @pk and ( {rows} )", parameters=params):
            data = dict(entity)
            data["_etag"] = entity.metadata["etag"]
            found[data["RowKey"]] = data
        return found

    def counts(self, job_id: str) -> TaskCounts:
        tally = dict.fromkeys(TaskState, 0)
        for entity in self.task_entities(job_id, select=["state"]):
            tally[TaskState(entity.get("state", "pending"))] += 1
        return TaskCounts(pending=tally[TaskState.PENDING], running=tally[TaskState.RUNNING],
                          succeeded=tally[TaskState.SUCCEEDED], failed=tally[TaskState.FAILED])

    def write_pending(self, job_id: str, tasks: Iterable[TaskDef], *, reset: bool = False) -> None:
        """Upsert task rows as pending, 100 per table transaction (one partition per job).

        Transactions are sent 8 at a time: each one costs the table service ~100 ms on Azurite,
        so 10,000 rows in sequence would take 10 s. At most 16 batches wait in memory.
        """
        from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

        pending: set[Future[None]] = set()
        with ThreadPoolExecutor(TABLE_CONCURRENCY) as pool:
            for batch in self._pending_batches(job_id, tasks, reset=reset):
                if len(pending) >= 2 * TABLE_CONCURRENCY:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                pending.add(pool.submit(self._submit, batch))
            for future in pending:
                future.result()

    def _pending_batches(self, job_id: str, tasks: Iterable[TaskDef], *,
                         reset: bool) -> Iterator[list[tuple[str, dict[str, Any], dict[str, Any]]]]:
        batch: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        for task in tasks:
            entity: dict[str, Any] = {
                "PartitionKey": job_id, "RowKey": task.task_id, "state": "pending", "label": task.label,
                "argv_json": dumps(list(task.argv)), "input_container": task.input_container or "",
                "input_blob": task.input_blob or "", "input_path": task.input_path or "",
                "params_json": dumps([list(p) for p in task.params]), "attempt_count": 0, "attempts_json": "[]",
                "claim_owner": "", "claim_expires": 0.0, "deliveries": 0,
            }
            if reset:  # a re-run keeps nothing of the failed result but the fact it happened
                entity.update({k: None for k in _RESULT_FIELDS})
            batch.append(("upsert", entity, {"mode": UpdateMode.REPLACE}))
            if len(batch) == TABLE_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _submit(self, batch: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        try:
            self.tasks.submit_transaction(batch)  # type: ignore[arg-type]
        except Exception as exc:
            raise translate_error(exc, f"writing {len(batch)} task records") from None

    def claim(self, entity: dict[str, Any], *, owner: str, lease_s: float,
              attempts: list[dict[str, Any]]) -> str | None:
        """Mark the task running for ``owner`` until now+lease; returns the new ETag, None if someone won."""
        update = {
            "PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"], "state": "running",
            "claim_owner": owner, "claim_expires": time.time() + lease_s,
            "deliveries": int(entity.get("deliveries") or 0) + 1, "attempts_json": dumps(attempts),
            "started_at": entity.get("started_at") or _iso_now(),
        }
        return self._guarded_merge(update, entity["_etag"])

    def renew_claim(self, job_id: str, task_id: str, *, lease_s: float, etag: str) -> str | None:
        update = {"PartitionKey": job_id, "RowKey": task_id, "claim_expires": time.time() + lease_s}
        return self._guarded_merge(update, etag)

    def record_final(self, job_id: str, task_id: str, *, etag: str | None, fields: dict[str, Any]) -> str | None:
        """Write the task's one final result (guarded by the claim's ETag when there is one)."""
        attempts = fields.get("attempts_json")
        if isinstance(attempts, list):
            fields["attempt_count"] = len(attempts)
            fields["attempts_json"] = dumps(attempts[-MAX_ATTEMPTS_STORED:])
        update = {"PartitionKey": job_id, "RowKey": task_id, "claim_owner": "", "claim_expires": 0.0, **fields}
        if etag is None:
            self.tasks.update_entity(update, mode=UpdateMode.MERGE)
            return None
        return self._guarded_merge(update, etag)

    def _guarded_merge(self, update: dict[str, Any], etag: str) -> str | None:
        from azure.core.exceptions import ResourceModifiedError

        try:
            meta = self.tasks.update_entity(update, mode=UpdateMode.MERGE, etag=etag,
                                            match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError:
            return None
        except ResourceNotFoundError as exc:
            if _table_gone(exc):
                raise _lost(self._tasks_name) from None
            return None
        return meta["etag"]

    def delete_job(self, job_id: str) -> None:
        ops: list[tuple[str, dict[str, Any]]] = []
        for entity in self.task_entities(job_id, select=["PartitionKey", "RowKey"]):
            ops.append(("delete", {"PartitionKey": job_id, "RowKey": entity["RowKey"]}))
            if len(ops) == TABLE_BATCH:
                self.tasks.submit_transaction(ops)  # type: ignore[arg-type]
                ops = []
        if ops:
            self.tasks.submit_transaction(ops)  # type: ignore[arg-type]
        with contextlib.suppress(ResourceNotFoundError):
            self.jobs.delete_entity("job", job_id)
        container = self.storage.container(self.system_container)
        for name in list(self.storage.list_blob_names(self.system_container, f"jobs/{job_id}/")):
            container.delete_blob(name)
        for name in list(self.storage.list_blob_names(self.log_container, f"{job_id}/")):
            self.storage.container(self.log_container).delete_blob(name)

    # --- messages -------------------------------------------------------------------------------------
    def send(self, message: TaskMessage) -> None:
        try:
            self.queue.send_message(message.encode())
        except Exception as exc:
            raise translate_error(exc, f"queueing tasks of job {message.job_id!r}") from None

    def to_poison(self, content: str, reason: str) -> None:
        """Keep a message we cannot handle where a person can read it, with the reason."""
        self.poison_queue.send_message(poison_body(content, reason))


def poison_body(content: str, reason: str) -> str:
    """The poison-queue message for ``content``: the reason and as much of the original as fits.

    The queue takes at most 64 KiB of UTF-8 per message, and JSON escaping can double a
    hostile message (quotes, backslashes, control characters), so the original is cut until
    the encoded body fits in :data:`MAX_POISON_BYTES`; ``truncated`` says whether it was.
    """
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + "..."
    keep = len(content)
    while True:
        body = dumps({"reason": reason, "original": content[:keep], "truncated": keep < len(content),
                      "at": _iso_now()})
        size = len(body.encode())
        if size <= MAX_POISON_BYTES or keep == 0:
            return body
        keep = min(keep - 1, int(keep * MAX_POISON_BYTES / size * 0.9))


def chunk_size_for(n_tasks: int, workers: int) -> int:
    """Tasks per queue message: 1 for small jobs (best balance), up to 32 for big ones, so that
    submitting 10,000 tasks is hundreds of queue writes, not thousands, while each worker still
    sees many messages."""
    return max(1, min(MAX_TASKS_PER_MESSAGE, n_tasks // max(1, workers * 16)))


def _iso_now() -> str:
    from .runner import now_iso

    return now_iso()

