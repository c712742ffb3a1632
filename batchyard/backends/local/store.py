"""The local backend's job and task records in Azure Table storage, and its queue of task messages.

Layout on the storage account (names configurable in ``[storage]``):

- table ``<prefix>jobs``: one row per job (PartitionKey ``job``, RowKey job id): state,
  total, the hash of its spec;
- table ``<prefix>tasks``: one row per task that a worker has claimed (PartitionKey the job id and
  the task's bucket, see :mod:`batchyard.backends.local.rows`; RowKey the task id): its argv and
  input, its claim (who runs it, until when), its one final result. A task no worker has claimed
  has no row: it is pending (the claim creates it: a submit writes messages, not rows);
- the job documents both backends keep (job.json, the manifest, resource files; see
  :mod:`batchyard.backends.documents`, whose :class:`JobDocuments` this store extends);
- one queue per job, ``<queue>-<job>-<token>`` (named in the job's row; see
  :mod:`batchyard.backends.local.job_queues`): versioned JSON messages (base64-encoded) naming the
  job and task ids, with the tasks' definitions, each MACed (never a secret; see
  :mod:`batchyard.backends.local.messages`), and ``<queue>-poison`` for messages that could not be
  handled (one copy each: see :mod:`batchyard.backends.local.admission`).

A task row is written whole by one ETag-guarded write at each step (running -> final), so it is never
half-recorded, and a worker that lost its claim never overwrites the result of the one that took over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from batchyard.backends.base import dumps
from batchyard.backends.documents import JobDocuments
from batchyard.backends.local.messages import TaskMessage, poison_body
from batchyard.backends.local.rows import job_of, job_rows_filter, pending_row
from batchyard.core.config import Config
from batchyard.core.errors import BackendError, JobNotFoundError, StorageError
from batchyard.core.job import Job, TaskDef
from batchyard.storage.account import Storage, translate_error
from batchyard.storage.fast_rest import RestStatusError, RestUnreachableError

log = logging.getLogger(__name__)

ROWS_PER_QUERY = 14  # RowKey comparisons per $filter: with the PartitionKey's, Azure's limit of 15
TABLE_BATCH = 100
TABLE_CONCURRENCY = 8
MAX_ATTEMPTS_STORED = 20
_RESULT_FIELDS = ("exit_code", "failure_category", "failure_message", "stderr_tail", "ended_at")


class StorageLostError(StorageError, BackendError):
    """The queue or tables a job lives in are gone from the storage account: the job cannot complete.

    A BackendError too, so ``Backend.wait`` and the CLI report it as the job's failure.
    """


def _table_gone(exc: HttpResponseError) -> bool:
    """A 404 for the table itself (``TableNotFound``), not for one entity in it."""
    code = getattr(exc, "error_code", None)  # a str enum (TableErrorCode) or a plain str
    return str(getattr(code, "value", code)) == "TableNotFound"


def _lost(table: str) -> StorageLostError:
    return StorageLostError(
        f"table {table!r} does not exist on the storage account: it was deleted or the storage lost its "
        "data, so the records of its jobs are gone. Re-run the job to re-create it."
    )


class JobStore(JobDocuments):
    """Typed access to the records of every local-backend job on one storage account: the job
    documents both backends keep, plus this backend's tables and queues."""

    def __init__(self, storage: Storage, config: Config) -> None:
        super().__init__(storage, config)
        section = config.storage
        self.queue_name = section.queue
        self.poison_queue_name = f"{section.queue}-poison"
        self._jobs_name = f"{section.table_prefix}jobs"
        self._tasks_name = f"{section.table_prefix}tasks"
        self._jobs: TableClient | None = None
        self._tasks: TableClient | None = None
        self._queues: dict[tuple[str, bool], Any] = {}

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

    def queue_client(self, name: str, *, decode: bool = True) -> Any:
        """A queue's client; messages go base64-encoded (no character of a value can upset the
        service's XML). ``decode=False`` receives contents as stored, so one that is not base64
        (put by someone else) is still received, with the receipt that poisons and deletes it."""
        from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

        if (name, decode) not in self._queues:
            self._queues[name, decode] = self.storage.queue_service.get_queue_client(
                name, message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy() if decode else None)
        return self._queues[name, decode]

    @property
    def poison_queue(self) -> Any:
        return self.queue_client(self.poison_queue_name)

    def ensure(self) -> None:
        """Create the tables, the poison queue and the containers (used by submit, and by `batchyard worker`
        as it starts: a running worker never creates them, so storage that lost them fails loudly
        instead of silently starting empty). Each
        job's own queue is made by its submit (:mod:`batchyard.backends.local.job_queues`)."""
        try:
            for name in (self._jobs_name, self._tasks_name):
                with contextlib.suppress(ResourceExistsError):
                    self.storage.table_service.create_table(name)
            with contextlib.suppress(ResourceExistsError):
                self.poison_queue.create_queue()
        except Exception as exc:
            raise translate_error(exc, "creating batchyard's tables and queues") from None
        super().ensure()

    # --- jobs -----------------------------------------------------------------------------------------
    def record_job(self, job: Job, *, total: int, spec_hash: str, backend: str, message_key: str,
                   queue: str) -> None:
        """Save the job document (with the key its messages are MACed with) and the job's row (its
        state, total, spec hash and the name of its messages' queue)."""
        self.save_job(job, spec_hash=spec_hash, backend=backend, message_key=message_key)
        now = time.time()
        entity = {"PartitionKey": "job", "RowKey": job.id, "state": "active", "total": total,
                  "spec_hash": spec_hash, "backend": backend, "updated": now, "queue": queue}
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

    def set_job_state(self, job_id: str, state: str) -> None:
        self.set_job_fields(job_id, state=state, updated=time.time())

    def set_job_fields(self, job_id: str, **fields: Any) -> None:
        self.jobs.update_entity({"PartitionKey": "job", "RowKey": job_id, **fields}, mode=UpdateMode.MERGE)

    def list_jobs(self, select: list[str] | None = None, *, missing_ok: bool = True) -> Iterator[dict[str, Any]]:
        """Every job's row; none when nothing was ever submitted here (no jobs table), or
        StorageLostError then if not ``missing_ok`` (a worker: its storage lost the table)."""
        try:
            yield from (dict(e) for e in self.jobs.query_entities("PartitionKey eq 'job'", select=select))
        except ResourceNotFoundError:
            if not missing_ok:
                raise _lost(self._jobs_name) from None
            return
        except Exception as exc:
            raise translate_error(exc, f"listing the jobs in table {self._jobs_name!r}") from None

    # --- tasks ----------------------------------------------------------------------------------------
    def task_entities(self, job_id: str, *, select: list[str] | None = None, since: datetime | None = None,
                      state: str | None = None) -> Iterator[dict[str, Any]]:
        """The job's task rows, in every partition of it (those written at or after ``since``, those
        in ``state``, if given), each with the service's write time as ``_timestamp`` and its ETag
        as ``_etag``."""
        query, params = job_rows_filter(job_id)
        if since is not None:
            query, params = f"{query} and Timestamp ge @since", {**params, "since": since}
        if state is not None:
            query, params = f"{query} and state eq @state", {**params, "state": state}
        try:
            for entity in self.tasks.query_entities(query, parameters=params, select=select, results_per_page=1000):
                data = dict(entity)
                data["_timestamp"] = entity.metadata.get("timestamp")
                data["_etag"] = entity.metadata.get("etag")
                yield data
        except ResourceNotFoundError:
            raise JobNotFoundError(f"job {job_id!r} not found (no task table)") from None

    def find_task(self, job_id: str, task_id: str) -> dict[str, Any] | None:
        return self.find_tasks(job_id, [task_id]).get(task_id)

    def find_tasks(self, job_id: str, task_ids: Iterable[str], *,
                   select: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Task rows by id wherever in the job's partitions they are, with their ETags, for a reader
        with no message naming their partitions (``logs``, ``debug``, a summary). The job's range
        takes 3 of the 15 comparisons Azure allows a ``$filter``: 12 ids a query."""
        query, params = job_rows_filter(job_id)
        ids, found = list(dict.fromkeys(task_ids)), {}
        try:
            for start in range(0, len(ids), ROWS_PER_QUERY - 2):
                window = {f"r{i}": task_id for i, task_id in enumerate(ids[start:start + ROWS_PER_QUERY - 2])}
                keys = " or ".join(f"RowKey eq @{name}" for name in window)
                for entity in self.tasks.query_entities(f"( {keys} ) and {query}", parameters={**params, **window},
                                                        select=None if select is None else [*select, "RowKey"]):
                    found[entity["RowKey"]] = {**entity, "_etag": entity.metadata["etag"]}
        except ResourceNotFoundError:
            raise _lost(self._tasks_name) from None
        return found

    def get_task(self, partition: str, task_id: str) -> dict[str, Any] | None:
        """The row of ``task_id`` in ``partition`` (see :mod:`batchyard.backends.local.rows`), with its ETag."""
        try:
            entity = self.tasks.get_entity(partition, task_id)
        except ResourceNotFoundError as exc:
            if _table_gone(exc):
                raise _lost(self._tasks_name) from None
            return None
        data = dict(entity)
        data["_etag"] = entity.metadata["etag"]
        return data

    def get_tasks(self, partition: str, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Several task rows of one partition (a window of a message's tasks), with their ETags.

        One query per :data:`ROWS_PER_QUERY` ids: Azure's Table service allows at most 15
        comparisons in a ``$filter`` (the partition's is one of them), which Azurite does not enforce.
        """
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), ROWS_PER_QUERY):
            window = ids[start:start + ROWS_PER_QUERY]
            params = {"pk": partition, **{f"r{i}": task_id for i, task_id in enumerate(window)}}
            rows = " or ".join(f"RowKey eq @r{i}" for i in range(len(window)))
            for entity in self.tasks.query_entities(f"PartitionKey eq @pk and ( {rows} )", parameters=params):
                data = dict(entity)
                data["_etag"] = entity.metadata["etag"]
                found[data["RowKey"]] = data
        return found

    def write_pending(self, partition: str, tasks: Iterable[TaskDef], *, reset: bool = False) -> None:
        """Upsert task rows of one partition as pending, 100 per table transaction.

        Transactions are sent 8 at a time: each one costs the table service ~100 ms on Azurite,
        so 10,000 rows in sequence would take 10 s. At most 16 batches wait in memory.
        """
        from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

        pending: set[Future[None]] = set()
        with ThreadPoolExecutor(TABLE_CONCURRENCY) as pool:
            for batch in self._pending_batches(partition, tasks, reset=reset):
                if len(pending) >= 2 * TABLE_CONCURRENCY:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                pending.add(pool.submit(self._submit, batch))
            for future in pending:
                future.result()

    def _pending_batches(self, partition: str, tasks: Iterable[TaskDef], *,
                         reset: bool) -> Iterator[list[tuple[str, dict[str, Any], dict[str, Any]]]]:
        batch: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        for task in tasks:
            entity = pending_row(partition, task)
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

    def claim_new(self, partition: str, task: TaskDef, *, owner: str,
                  lease_s: float) -> tuple[dict[str, Any], str] | None:
        """Create the row of a task that has none yet, already claimed by ``owner``.

        Returns (the row, its ETag); None if the row exists (another delivery of the task got
        there first: read it and decide again). Creating is the claim: the service lets only
        one create of a key succeed.
        """
        row = self.claimed_row(partition, task, owner=owner, lease_s=lease_s)
        try:
            meta = self.tasks.create_entity(row)
        except ResourceExistsError:
            return None
        except ResourceNotFoundError as exc:
            if _table_gone(exc):
                raise _lost(self._tasks_name) from None
            raise
        return row, meta["etag"]

    @staticmethod
    def claimed_row(partition: str, task: TaskDef, *, owner: str, lease_s: float) -> dict[str, Any]:
        """The row that :meth:`claim_new` creates: the task's definition, claimed by ``owner``."""
        return {**pending_row(partition, task), "state": "running", "claim_owner": owner,
                "claim_expires": time.time() + lease_s, "deliveries": 1, "started_at": _iso_now()}

    def write_group(self, creates: list[dict[str, Any]], merges: list[tuple[dict[str, Any], str]]) -> list[str] | None:
        """Rows of one partition in one table transaction: ``creates``, then ETag-guarded ``merges``.

        Returns the new ETags in that order, or None if the service refused any of the writes (a
        row to create exists, a row's ETag changed): a transaction is all or nothing, so then
        none was made and the caller writes them one by one to learn which. One transaction
        of 16 creates and 16 merges costs Azurite and this process ~1.3 ms per pair of writes,
        against ~3.2 ms for the same writes one request each; sent by ``fast_rest`` (one urllib3
        request, the body built as text) it costs this process ~0.04 ms per row instead of ~0.34.
        """
        fast = self.storage.fast
        if fast is not None:
            try:
                return fast.submit_group(self.storage.account.table_endpoint, self._tasks_name, creates, merges)
            except TypeError:
                pass  # a value type of its own serialization: the SDK's below
            except (RestStatusError, RestUnreachableError) as exc:
                if isinstance(exc, RestStatusError) and exc.code == "TableNotFound":
                    raise _lost(self._tasks_name) from None
                raise translate_error(exc, f"writing rows of table {self._tasks_name}") from None
        from azure.data.tables import TableTransactionError

        ops: list[Any] = [("create", row) for row in creates]
        ops += [("update", update, {"mode": UpdateMode.MERGE, "etag": etag,
                                    "match_condition": MatchConditions.IfNotModified}) for update, etag in merges]
        try:
            answers = self.tasks.submit_transaction(ops)
        except TableTransactionError as exc:
            if _table_gone(exc):  # the fast path's answer to a deleted table too
                raise _lost(self._tasks_name) from None
            return None
        except ResourceNotFoundError as exc:
            if _table_gone(exc):
                raise _lost(self._tasks_name) from None
            raise
        except HttpResponseError as exc:  # a refused key: reported as the fast path reports it
            raise translate_error(exc, f"writing rows of table {self._tasks_name}") from None
        return [str(answer["etag"]) for answer in answers]

    def create_final(self, partition: str, task_id: str, label: str, fields: dict[str, Any]) -> bool:
        """Record the result of a task that has no row (cancelled or poisoned before any claim);
        False if a row appeared meanwhile (then the caller updates that one)."""
        attempts = fields.get("attempts_json")
        extra = {"attempt_count": len(attempts), "attempts_json": dumps(attempts)} if isinstance(attempts, list) else {}
        row = {"PartitionKey": partition, "RowKey": task_id, "label": label, "claim_owner": "", "claim_expires": 0.0,
               "deliveries": 0, **fields, **extra}
        try:
            self.tasks.create_entity(row)
        except ResourceExistsError:
            return False
        return True

    def release_claim(self, partition: str, task_id: str, *, etag: str) -> None:
        """Give back a task claimed but never started (its message was lost): pending again, so
        whoever has the message now runs it without counting a lost attempt."""
        update = {"PartitionKey": partition, "RowKey": task_id, "state": "pending", "claim_owner": "",
                  "claim_expires": 0.0}
        try:
            self._guarded_merge(update, etag)
        except Exception as exc:  # its claim simply expires then, and the next worker takes over
            log.warning("giving back task %s/%s failed: %s", job_of(partition), task_id, str(exc).splitlines()[0])

    def renew_claim(self, partition: str, task_id: str, *, lease_s: float, etag: str) -> str | None:
        update = {"PartitionKey": partition, "RowKey": task_id, "claim_expires": time.time() + lease_s}
        return self._guarded_merge(update, etag)

    def renew_claims(self, partition: str, held: list[tuple[str, str]], *, lease_s: float) -> list[str] | None:
        """Renew several claims (task id, ETag) of one partition in one transaction; None if any was lost."""
        expires = time.time() + lease_s
        updates = [({"PartitionKey": partition, "RowKey": t, "claim_expires": expires}, etag) for t, etag in held]
        return self.write_group([], updates)

    @staticmethod
    def final_update(partition: str, task_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The merge that writes a task's one final result and ends its claim."""
        attempts = fields.get("attempts_json")
        if isinstance(attempts, list):
            fields = {**fields, "attempt_count": len(attempts), "attempts_json": dumps(attempts[-MAX_ATTEMPTS_STORED:])}
        return {"PartitionKey": partition, "RowKey": task_id, "claim_owner": "", "claim_expires": 0.0, **fields}

    def record_final(self, partition: str, task_id: str, *, etag: str | None, fields: dict[str, Any]) -> str | None:
        """Write the task's one final result (guarded by the claim's ETag when there is one)."""
        update = self.final_update(partition, task_id, fields)
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
        """The job's row and documents (its task rows go first: ``bulk.delete_task_rows``)."""
        with contextlib.suppress(ResourceNotFoundError):
            self.jobs.delete_entity("job", job_id)
        self.delete_documents(job_id)

    # --- messages -------------------------------------------------------------------------------------
    def send(self, message: TaskMessage, *, queue: str | None = None) -> None:
        """Put ``message`` on ``queue``, by default its job's own (named in the job's row); by the
        fast path to a loopback endpoint (``storage/fast_path.py``), else through the SDK."""
        try:
            name = queue or (self.get_job_entity(message.job_id) or {})["queue"]
            fast = self.storage.fast_queue
            if fast is not None:
                fast.put_message(f"{self.storage.account.queue_endpoint.rstrip('/')}/{name}", message.encode())
            else:
                self.queue_client(name).send_message(message.encode())
        except Exception as exc:
            raise translate_error(exc, f"queueing tasks of job {message.job_id!r}") from None

    def to_poison(self, content: str, reason: str) -> None:
        """Keep a message we cannot handle where a person can read it, with the reason."""
        self.poison_queue.send_message(poison_body(content, reason, _iso_now()))


def _iso_now() -> str:
    from batchyard.core.batch_semantics import now_iso

    return now_iso()

