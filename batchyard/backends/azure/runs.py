"""The Batch jobs that carry one batchyard job on the azure backend: one per run that needed a new one.

Batch never reopens a completed job: no task can be added to it or reactivated in it. batchyard
terminates the Batch job at every end of a run (all succeeded, some failed, the pool unusable,
Ctrl-C, ``cancel``) so it stops holding the account's active-job quota, and keeps its records. A
later ``run`` that has tasks to run again therefore opens a new Batch job, ``<job id>-r<N>``
(shortened with a hash of the job id to fit 64 characters), on the same pool rules.

The chain is kept on the storage account as ``jobs/<job id>/azure-runs.json`` next to the job
document (:mod:`batchyard.backends.documents`). Each run records how many tasks had succeeded in
earlier runs when it opened (``carried``: they are not run again, so the newest Batch job's
counts plus ``carried`` are the job's counts), the pool it ran on, and that pool's shape and usage
once batchyard deleted it. A job without the record (submitted by an older batchyard) is one run
whose Batch job id is the job id.

Nothing stops a user from naming another job ``<job id>-r2``. Each Batch job batchyard creates
names its batchyard job in its metadata (``batchyard-job``): a run whose id another job holds
takes the next number (``adding.py``), and a record of a run whose Batch job names another job
(left by an older batchyard) is dropped when the chain is read, so no job ever reads, re-runs,
counts or deletes another job's tasks as its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.documents import JobDocuments

log = logging.getLogger(__name__)
STATE_NAME = "azure-runs.json"
MAX_BATCH_ID = 64
OWNER_KEY = "batchyard-job"  # the metadata of a Batch job batchyard made: the batchyard job it is a run of


def owned_by(metadata: Any, job_id: str) -> bool:
    """Whether a Batch job's ``metadata`` names no batchyard job, or ``job_id`` (ids compare without case)."""
    owner = owner_of(metadata)
    return owner is None or owner.lower() == job_id.lower()


def owner_of(metadata: Any) -> str | None:
    """The batchyard job a Batch job's ``metadata`` says it is a run of (None: it names none)."""
    owner = next((item.value for item in metadata or [] if item.name == OWNER_KEY), None)
    return None if owner is None else str(owner)


def run_batch_job_id(job_id: str, number: int) -> str:
    """The Batch job id of run ``number`` (1: the job id itself)."""
    if number <= 1:
        return job_id
    suffix = f"-r{number}"
    if len(job_id) + len(suffix) <= MAX_BATCH_ID:
        return job_id + suffix
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
    room = MAX_BATCH_ID - len(suffix) - len(digest) - 1
    return f"{job_id[:room].rstrip('-_')}-{digest}{suffix}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PoolUsage:
    """A per-job pool as batchyard last saw it before deleting it (for ``status`` and the report)."""

    pool_id: str
    vm_size: str
    nodes: int
    slots_per_node: int
    dedicated_hours: float
    spot_hours: float
    ended_at: str
    fate: str  # "deleted" or "kept" ([azure] keep_auto_pool)


@dataclass(frozen=True)
class BatchRun:
    batch_job_id: str
    number: int = 1
    carried: int = 0  # tasks that had succeeded in earlier runs when this one opened
    opened_at: str = ""
    pool_id: str | None = None
    usage: PoolUsage | None = None


@dataclass
class RunChain:
    job_id: str
    runs: list[BatchRun] = field(default_factory=list)

    @property
    def current(self) -> BatchRun:
        return self.runs[-1] if self.runs else BatchRun(batch_job_id=self.job_id)

    def batch_job_ids(self) -> list[str]:
        """Newest first."""
        return [run.batch_job_id for run in reversed(self.runs)] or [self.job_id]

    def opened(self, *, carried: int, pool_id: str | None) -> BatchRun:
        """Append the next run (its Batch job is created after the record is saved)."""
        number = self.current.number + 1 if self.runs else 1
        run = BatchRun(batch_job_id=run_batch_job_id(self.job_id, number), number=number, carried=carried,
                       opened_at=now_iso(), pool_id=pool_id)
        self.runs.append(run)
        return run

    def update_current(self, **changes: Any) -> None:
        if not self.runs:
            self.runs.append(self.current)
        self.runs[-1] = replace(self.runs[-1], **changes)

    def to_json(self) -> bytes:
        return json.dumps({"job_id": self.job_id, "runs": [asdict(r) for r in self.runs]}).encode()

    @classmethod
    def from_json(cls, job_id: str, data: bytes | None) -> RunChain:
        if not data:
            return cls(job_id=job_id)
        raw = json.loads(data)
        runs = []
        for item in raw.get("runs", []):
            usage = item.pop("usage", None)
            runs.append(BatchRun(**item, usage=PoolUsage(**usage) if usage else None))
        return cls(job_id=job_id, runs=runs)


class RunRecords:
    """Load and save the chain of a job (a small blob next to its job document).

    With ``client`` (called for the Batch client when needed), a run recorded under a Batch job
    that names another batchyard job is left out of the chain read (each Batch job asked once)."""

    def __init__(self, documents: JobDocuments, client: Callable[[], Any] | None = None) -> None:
        self.documents = documents
        self._client = client
        self._foreign: dict[str, bool] = {}

    def load(self, job_id: str) -> RunChain:
        chain = RunChain.from_json(job_id, self.documents.load_backend_state(job_id, STATE_NAME))
        foreign = [run for run in chain.runs if run.number > 1 and self._foreign_run(job_id, run.batch_job_id)]
        if foreign:
            log.warning("job %s: its record of run(s) %s names Batch jobs of another job; not read as its own",
                        job_id, ", ".join(run.batch_job_id for run in foreign))
            chain.runs = [run for run in chain.runs if run not in foreign]
        return chain

    def _foreign_run(self, job_id: str, batch_job_id: str) -> bool:
        if self._client is None:
            return False
        if batch_job_id not in self._foreign:
            try:
                job = self._client().get_job(batch_job_id, select=["id", "metadata"])
            except ResourceNotFoundError:
                return False  # not created yet, or deleted: nobody's (asked again next time)
            except Exception as exc:  # Batch unreachable: the record is read as it is, said once
                log.debug("job %s: could not check the owner of Batch job %s: %s", job_id, batch_job_id, exc)
                return False
            self._foreign[batch_job_id] = not owned_by(job.metadata, job_id)
        return self._foreign[batch_job_id]

    def save(self, chain: RunChain) -> None:
        self.documents.save_backend_state(chain.job_id, STATE_NAME, chain.to_json())


__all__ = ["OWNER_KEY", "BatchRun", "PoolUsage", "RunChain", "RunRecords", "owned_by", "owner_of",
           "run_batch_job_id"]
