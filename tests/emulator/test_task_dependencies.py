"""Task dependencies as Azure checks and runs them, through the real SDK: ``dependsOn`` only in a job
with ``usesTaskDependencies`` (400 TaskDependenciesNotSpecifiedOnJob), at most 64,000 characters of
task ids (400 TaskDependencyListTooLong), ``dependencyAction`` only with dependencies; and the final
step's barrier tree for a 100,000-task job within those limits (its lists checked, not its tasks run)."""

from __future__ import annotations

from typing import Any

import pytest
from azure.batch import models as bm

from batchyard.core.batch_semantics import DEPENDENCY_ID_BUDGET, MAX_DEPENDENCY_ID_CHARS
from batchyard.core.final_step import BARRIER_PREFIX, FINAL_TASK_ID, dependency_tree
from batchyard.core.job import make_task_id

from .sdk_helpers import refused, uid, wait_for
from .test_sdk_tutorial import client_for, make_job, make_pool

pytestmark = pytest.mark.timeout(240)


def _ids(count: int, length: int = 64) -> list[str]:
    """``count`` distinct task ids of exactly ``length`` characters (the longest Batch allows: 64)."""
    return [f"{i:0{length}d}" for i in range(count)]


def test_depends_on_needs_a_job_that_uses_task_dependencies(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    pool, job = uid("dep-pool"), uid("dep-job")
    make_pool(client, pool, nodes=0)
    make_job(client, job, pool)
    status, code, values = refused(lambda: client.create_task(job, bm.BatchTaskCreateOptions(
        id="t", command_line="true", depends_on=bm.BatchTaskDependencies(task_ids=["a"]))))
    assert (status, code, values.get("TaskId")) == (400, "TaskDependenciesNotSpecifiedOnJob", "t")
    satisfy = bm.ExitConditions(default=bm.ExitOptions(dependency_action=bm.DependencyAction.SATISFY))
    status, code, values = refused(lambda: client.create_task(job, bm.BatchTaskCreateOptions(
        id="u", command_line="true", exit_conditions=satisfy)))
    assert (status, code) == (400, "InvalidPropertyValue"), (status, code, values)
    assert not list(client.list_tasks(job)), "a refused task must not be added"


def test_the_id_list_is_limited_to_64000_characters(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    pool, job = uid("dep-pool"), uid("dep-job")
    make_pool(client, pool, nodes=0)
    make_job(client, job, pool, uses_task_dependencies=True)
    at_limit = _ids(MAX_DEPENDENCY_ID_CHARS // 64)  # 1,000 ids of 64 characters: 64,000 exactly
    client.create_task(job, bm.BatchTaskCreateOptions(
        id="fits", command_line="true", depends_on=bm.BatchTaskDependencies(task_ids=at_limit)))
    over = [*at_limit, "x"]
    status, code, values = refused(lambda: client.create_task(job, bm.BatchTaskCreateOptions(
        id="over", command_line="true", depends_on=bm.BatchTaskDependencies(task_ids=over))))
    assert (status, code, values.get("TaskId")) == (400, "TaskDependencyListTooLong", "over")
    # The added task waits (active) while its dependencies do not exist or have not completed.
    assert client.get_task(job, "fits").state == bm.BatchTaskState.ACTIVE


def test_a_dependent_task_stays_active_until_its_dependency_succeeds(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    pool, job = uid("dep-pool"), uid("dep-job")
    make_pool(client, pool, nodes=1, slots=2)
    make_job(client, job, pool, uses_task_dependencies=True)
    client.create_tasks(job, [
        bm.BatchTaskCreateOptions(id="first", command_line="/bin/sh -c 'exit 0'"),
        bm.BatchTaskCreateOptions(id="after", command_line="true",
                                  depends_on=bm.BatchTaskDependencies(task_ids=["first"])),
    ])
    first = wait_for(lambda: (t := client.get_task(job, "first")).state == bm.BatchTaskState.COMPLETED and t,
                     what="the first task's end")
    after = wait_for(lambda: (t := client.get_task(job, "after")).state == bm.BatchTaskState.COMPLETED and t,
                     what="the dependent task's end")
    assert after.execution_info.start_time >= first.execution_info.end_time


def test_a_100000_task_job_fits_batch_limits_with_one_level_of_barriers() -> None:
    ids = [make_task_id("big", f"in/{i:06d}.txt", "x" * 60 + str(i)) for i in range(100_000)]
    assert {len(i) for i in ids} == {64} and len({i.lower() for i in ids}) == len(ids)
    tree = dependency_tree(ids)
    bottom = [b for b in tree.barriers if b.task_id.startswith(f"{BARRIER_PREFIX}1-")]
    assert tree.barriers == tuple(bottom), "one level of barriers is enough for 100,000 ids"
    assert [i for b in bottom for i in b.depends_on] == ids, "every per-file task, once, in order"
    lists = [b.depends_on for b in bottom] + [tree.final_depends_on]
    assert max(sum(map(len, ids_)) for ids_ in lists) <= DEPENDENCY_ID_BUDGET < MAX_DEPENDENCY_ID_CHARS
    assert set(tree.final_depends_on) == {b.task_id for b in bottom}
    assert len(tree.final_depends_on) == len(bottom) == 134
    barrier_and_final = [*(b.task_id for b in bottom), FINAL_TASK_ID]
    assert not {i.lower() for i in barrier_and_final} & {i.lower() for i in ids}, "no id collides"
    print(f"100,000 tasks: {len(bottom)} barriers, final step names {sum(map(len, tree.final_depends_on)):,} chars")


def test_a_tree_over_a_million_ids_stays_within_the_budget() -> None:
    ids = _ids(1_000_000, 64)
    tree = dependency_tree(ids)
    lists = [b.depends_on for b in tree.barriers] + [tree.final_depends_on]
    assert max(sum(map(len, ids_)) for ids_ in lists) <= DEPENDENCY_ID_BUDGET
    covered = [i for b in tree.barriers if b.task_id.startswith(f"{BARRIER_PREFIX}1-") for i in b.depends_on]
    assert covered == ids
    assert dependency_tree(ids[:10]).barriers == ()  # a small job: the final step names its tasks itself


def test_the_100000_task_design_is_accepted_by_the_emulator(batch_emulator: Any) -> None:
    """The lists the barrier tree makes for 100,000 tasks of 64-character ids are accepted as Azure
    would accept them: one bottom barrier (the longest list) and the final step over all barriers."""
    client = client_for(batch_emulator)
    pool, job = uid("dep-pool"), uid("dep-job")
    make_pool(client, pool, nodes=0)
    make_job(client, job, pool, uses_task_dependencies=True)
    tree = dependency_tree(_ids(100_000))
    longest = max(tree.barriers, key=lambda b: sum(map(len, b.depends_on)))
    client.create_tasks(job, [
        bm.BatchTaskCreateOptions(id=longest.task_id, command_line="/bin/sh -c true",
                                  depends_on=bm.BatchTaskDependencies(task_ids=list(longest.depends_on))),
        bm.BatchTaskCreateOptions(id=FINAL_TASK_ID, command_line="true",
                                  depends_on=bm.BatchTaskDependencies(task_ids=list(tree.final_depends_on))),
    ])
    stored = client.get_task(job, FINAL_TASK_ID)
    assert stored.depends_on.task_ids == list(tree.final_depends_on)
    assert stored.state == bm.BatchTaskState.ACTIVE
