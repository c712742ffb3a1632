"""Which tasks a submit adds to Batch, deletes and adds again, or keeps: the chain's records against the plan.

A task's record is the newest one of the job's chain of Batch jobs (:mod:`.runs`), as results
read it (:mod:`.results`); its fingerprint is the ``BATCHYARD_FINGERPRINT`` variable it was added
with. A Batch task cannot be changed, and a completed one cannot be run again with new URLs, so a
task that runs again keeps its id and is added anew:

- in the current Batch job while it is open (the old task there is deleted first);
- in the next run's Batch job (``<job id>-r<N>``) once the current one ended, as every run's end does.

Task ids therefore never change across re-runs; a task's newest run is the one that counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.azure.runs import RunChain
from batchyard.backends.azure.task_views import list_task_views
from batchyard.backends.azure.tasks import batch_error, enum_text, fingerprint_of
from batchyard.backends.base import TaskState
from batchyard.core.job import TaskDef
from batchyard.core.rerun import PriorTask, RerunPlan

RECORD_SELECT = ["id", "state", "executionInfo", "environmentSettings"]


@dataclass
class ChainRecords:
    """The newest record of each task across the chain, by lower-cased id, and the Batch job that has it."""

    prior: dict[str, PriorTask] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)


def chain_records(client: Any, chain: RunChain, *, open_batch_job: str | None) -> ChainRecords:
    """Read every Batch job of ``chain``, newest first; ``open_batch_job``: the current one when it is
    open (its unfinished tasks are running or will run: left alone)."""
    records = ChainRecords()
    for batch_job_id in chain.batch_job_ids():
        for task in _tasks(client, batch_job_id):
            key = task.id.lower()
            if key in records.prior:
                continue
            live = batch_job_id == open_batch_job and enum_text(task.state) != "completed"
            records.prior[key] = PriorTask(state=_state(task, ended=batch_job_id != open_batch_job),
                                           fingerprint=fingerprint_of(task), live=live)
            records.where[key] = batch_job_id
    return records


def _tasks(client: Any, batch_job_id: str) -> list[Any]:
    try:
        return list(list_task_views(client, batch_job_id, select=RECORD_SELECT))
    except ResourceNotFoundError:
        return []  # a run's Batch job deleted by hand (or never created): its records are gone
    except Exception as exc:
        raise batch_error(exc, f"listing tasks of job {batch_job_id!r}") from None


def _state(task: Any, *, ended: bool) -> str:
    """succeeded, failed, cancelled (ended by a user's request, or never run in a Batch job that ended:
    every end of a run terminates it) or pending."""
    if enum_text(task.state) != "completed":
        return str(TaskState.CANCELLED if ended else TaskState.PENDING)
    info = task.execution_info
    if enum_text(getattr(info, "result", None)) == "success":
        return str(TaskState.SUCCEEDED)
    failure = getattr(info, "failure_info", None)
    message = str(getattr(failure, "message", "") or "").lower()
    ended_by_user = getattr(failure, "code", None) == "TaskEnded" and "user" in message
    return str(TaskState.CANCELLED if ended_by_user else TaskState.FAILED)


@dataclass
class Placement:
    """Where the tasks that run go: ``add`` (new to the Batch job they go to), ``readd`` (in the open
    current Batch job already: deleted, then added), and ``carried``: the kept tasks whose record is
    in an earlier Batch job than the one this run uses (the job's counts add them)."""

    add: list[TaskDef]
    readd: list[TaskDef]
    carried: int


def place(tasks: list[TaskDef], plan: RerunPlan, records: ChainRecords, *, current: str, is_open: bool) -> Placement:
    add: list[TaskDef] = []
    readd: list[TaskDef] = []
    carried = 0
    for task in tasks:
        key = task.task_id.lower()
        where = records.where.get(key)
        if task.task_id not in plan.reasons:
            live = records.prior[key].live if key in records.prior else False
            carried += not live and (not is_open or where != current)
        elif is_open and where == current:
            readd.append(task)
        else:
            add.append(task)
    return Placement(add=add, readd=readd, carried=carried)


__all__ = ["ChainRecords", "Placement", "chain_records", "place"]
