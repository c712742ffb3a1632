"""The final step on Azure Batch: a task with ``dependsOn``, behind a tree of barrier tasks when its
dependencies would not fit in one list (:func:`batchyard.core.final_step.dependency_tree`).

The Batch job of a run with a final step is created with ``usesTaskDependencies``. Batch keeps
the final task ``active`` until every task it depends on completed with its dependency satisfied:
a success, or with ``run_when = "completed"`` any end (the per-file tasks then carry
``exitConditions.default.dependencyAction = satisfy``). A failed task under ``"succeeded"``
blocks it for good, so batchyard stops waiting once the per-file tasks are final and calls it
skipped. Barrier and final tasks are never counted or listed with the per-file tasks.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from azure.batch import models as bm
from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.azure.adder import TaskAdder
from batchyard.backends.azure.reruns import Placement
from batchyard.backends.azure.task_views import list_task_views
from batchyard.backends.azure.tasks import JobFacts, TaskUrls, build_task, enum_text, required_patterns
from batchyard.backends.base import FinalStepView, TaskCounts, TaskResult
from batchyard.backends.documents import JobDocuments
from batchyard.backends.final_step import (
    final_as_job,
    final_task_def,
    load_state,
    save_state,
    skip_reason,
    upload_final_files,
    view_of,
)
from batchyard.core.final_step import BARRIER_PREFIX, FINAL_TASK_ID, dependency_tree, is_final_or_barrier
from batchyard.core.job import Job, TaskDef

BARRIER_COMMAND = "/bin/sh -c true"
SATISFY_ON_ANY_END = bm.ExitConditions(default=bm.ExitOptions(dependency_action=bm.DependencyAction.SATISFY))
FINAL_SELECT = ["id", "state", "executionInfo"]


def satisfies_on_any_end(job: Job) -> bm.ExitConditions | None:
    """The per-file tasks' exitConditions: with ``run_when = "completed"`` a failure satisfies too."""
    return SATISFY_ON_ANY_END if job.final is not None and job.final.run_when == "completed" else None


def final_dependencies(tasks: list[TaskDef], placed: Placement, where: dict[str, str], *, current: str,
                       is_open: bool) -> tuple[list[str], list[str]]:
    """(the per-file ids of the run the final step depends on, the barrier and final tasks an earlier
    submit added to it, to be replaced). ``where``: the Batch job holding each task's newest record,
    by lower-case id (:class:`~batchyard.backends.azure.reruns.ChainRecords`)."""
    if not is_open:  # a new run: only what this submit adds
        return [t.task_id for t in placed.add + placed.readd], []
    added = {t.task_id for t in placed.add}
    ids = [t.task_id for t in tasks if t.task_id in added or where.get(t.task_id.lower()) == current]
    return ids, [key for key, batch_job_id in where.items() if batch_job_id == current and is_final_or_barrier(key)]


def final_tasks(job: Job, per_file_ids: list[str], *, urls: TaskUrls, lister_urls: list[tuple[str, str]],
                registry: bm.ContainerRegistryReference | None) -> list[list[bm.BatchTaskCreateOptions]]:
    """The barrier levels, bottom first, then the final task: one list per level, added in order."""
    tree = dependency_tree(per_file_ids)
    levels: dict[str, list[bm.BatchTaskCreateOptions]] = {}
    for barrier in tree.barriers:
        level = barrier.task_id.removeprefix(BARRIER_PREFIX).split("-")[0]
        levels.setdefault(level, []).append(bm.BatchTaskCreateOptions(
            id=barrier.task_id, display_name="barrier before the final step", command_line=BARRIER_COMMAND,
            depends_on=bm.BatchTaskDependencies(task_ids=list(barrier.depends_on))))
    final_job = final_as_job(job)
    final_urls = replace(urls, resource_files=urls.resource_files + tuple(lister_urls))
    task = build_task(final_job, final_task_def(job), urls=final_urls, input_url=None,
                      required=required_patterns(final_job), registry=registry)
    task.display_name = "final step"
    task.depends_on = bm.BatchTaskDependencies(task_ids=list(tree.final_depends_on)) \
        if tree.final_depends_on else None
    return [*levels.values(), [task]]


def add_final_step(client: Any, documents: JobDocuments, job: Job, batch_job_id: str, per_file_ids: list[str], *,
                   urls: TaskUrls, lifetime: timedelta, registry: bm.ContainerRegistryReference | None) -> None:
    """Upload the lister and the locations, then add the barriers and the final task, level by level."""
    blobs = upload_final_files(documents, job, lifetime=lifetime)
    lister_urls = [(target, documents.storage.blob_sas_url(documents.system_container, blob, expiry=lifetime,
                                                           permission="r")) for target, blob in blobs]
    for level in final_tasks(job, per_file_ids, urls=urls, lister_urls=lister_urls, registry=registry):
        TaskAdder(client, batch_job_id).add(level)
    save_state(documents, job.id, {**load_state(documents, job.id), "batch_job_id": batch_job_id})


def _task_state(task: bm.BatchTask) -> str:
    state = enum_text(task.state)
    if state == "completed":
        return "succeeded" if enum_text(getattr(task.execution_info, "result", None)) == "success" else "failed"
    return "running" if state == "running" else "pending"


def final_states(client: Any, batch_job_id: str) -> dict[str, str]:
    """The barrier and final tasks of a run by lower-case id: pending, running, succeeded or failed."""
    try:
        tasks = list_task_views(client, batch_job_id, filter="startswith(id,'final-')", select=FINAL_SELECT)
        return {t.id.lower(): _task_state(t) for t in tasks}
    except ResourceNotFoundError:
        return {}


def per_file_counts(counts: TaskCounts, states: dict[str, str]) -> TaskCounts:
    """Batch's counts of a run without its barrier and final tasks. What Batch counts as failed or
    active may have been moved to cancelled (a terminated job): what a bucket lacks comes from there."""
    fields = {"pending": counts.pending, "running": counts.running, "succeeded": counts.succeeded,
              "failed": counts.failed, "cancelled": counts.cancelled}
    for state in states.values():
        if fields[state] > 0:
            fields[state] -= 1
        elif fields["cancelled"] > 0:
            fields["cancelled"] -= 1
    return TaskCounts(**fields)


def counts_without_final(client: Any, batch_job_id: str, counts: TaskCounts) -> TaskCounts:
    return per_file_counts(counts, final_states(client, batch_job_id))


def final_settled(client: Any, batch_job_id: str, job: Job, counts: TaskCounts, documents: JobDocuments) -> bool:
    """Whether waiting is over for the final step, once the per-file tasks are final: it ended, or a
    failed or cancelled task blocks it for good (recorded as skipped)."""
    if job.final is None:
        return True
    state = load_state(documents, job.id)
    if not state.get("due"):
        return True
    final = final_states(client, batch_job_id).get(FINAL_TASK_ID)
    if final in ("succeeded", "failed"):
        return True
    reason = skip_reason(job, counts)
    if reason and final != "running":
        save_state(documents, job.id, {**state, "skipped": reason})
        return True
    return False


def final_step_view(client: Any, documents: JobDocuments, job: Job, counts: TaskCounts, batch_job_ids: list[str],
                    to_result: Any) -> FinalStepView | None:
    """The final step of the newest run that has one (``to_result``: Batch task -> TaskResult)."""
    if job.final is None:
        return None
    result: TaskResult | None = None
    for batch_job_id in batch_job_ids:
        try:
            task = client.get_task(batch_job_id, FINAL_TASK_ID, select=["id", "displayName", "state",
                                                                        "executionInfo", "nodeInfo"])
        except ResourceNotFoundError:
            continue
        result = to_result(job.id, task, JobFacts())
        break
    return view_of(job, load_state(documents, job.id), result, counts)
