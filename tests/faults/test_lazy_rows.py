"""Promise 3 under the submit design of issue #5: task rows are created by the claim, not by submit.

A submitted task that no worker took yet has no row; it must still be listed, counted and
cancellable, and a task whose definition cannot travel in a message must still run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.base import TaskState
from batchyard.backends.local.messages import TaskMessage
from batchyard.core.errors import TaskNotFoundError

from .support import drain_queue, job_queue, queued, runs_of, serve_until_idle, table_job, tool_command


def test_unclaimed_tasks_have_no_row_yet_are_listed_counted_and_then_run(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    keys = [f"k{i}" for i in range(5)]
    job = table_job(project, "lazy", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), keys)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        assert list(be.store.task_entities(job.id)) == [], "submit wrote task rows"
        listed = list(be.list_task_results(job.id))
        assert sorted(r.label for r in listed) == [f"KEY={k}" for k in keys]
        assert {r.state for r in listed} == {TaskState.PENDING}
        assert (be.task_counts(job.id).pending, be.task_counts(job.id).succeeded) == (5, 0)
        with pytest.raises(TaskNotFoundError, match="no stdout yet"):
            be.read_task_log(job.id, listed[0].task_id)
        with pytest.raises(TaskNotFoundError, match="not found"):
            be.read_task_log(job.id, "no-such-task")
        worker = serve_until_idle(be, tmp_path, lease_s=5)
        assert worker.tasks_run == 5
        rows = list(be.store.task_entities(job.id))
        assert len(rows) == 5 and {r["state"] for r in rows} == {"succeeded"}
        assert all(int(r["deliveries"]) == 1 for r in rows)
        counts = be.task_counts(job.id)
        assert (counts.pending, counts.running, counts.succeeded) == (0, 0, 5)
    assert sorted(runs_of(runs)) == keys


def test_cancel_before_any_claim_records_every_task_and_nothing_runs(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    keys = [f"c{i}" for i in range(7)]
    job = table_job(project, "lazycancel", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), keys)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        be.cancel(job.id)
        results = list(be.list_task_results(job.id))
        assert len(results) == 7
        assert {(r.state, r.failure_category) for r in results} == {(TaskState.CANCELLED, "cancelled")}
        assert sorted(r.label for r in results) == [f"KEY={k}" for k in keys]
        assert be.task_counts(job.id).finished
        worker = serve_until_idle(be, tmp_path, lease_s=5)  # the queued messages are consumed, nothing runs
        assert worker.tasks_run == 0
        assert queued(be, job.id) == 0
    assert runs_of(runs) == []


def test_definition_too_big_for_a_message_goes_by_row(project: Any, tmp_path: Path) -> None:
    """A task whose argv cannot fit in a queue message gets its row at submit and an ids-only
    message; the others travel with their definitions. All of them run once."""
    runs = tmp_path / "runs.txt"
    big = "B" * 25_000  # in argv and in params: ~50 KB, over a message, under a row's 32K chars per property
    keys = ["small1", big, "small2"]
    job = table_job(project, "lazybig", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), keys)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        rows = list(be.store.task_entities(job.id))
        assert [r["label"] for r in rows] == [f"KEY={big}"] and rows[0]["state"] == "pending"
        bodies = drain_queue(job_queue(be, job.id))
        by_version = {b["v"]: b for b in bodies}
        assert sorted(by_version) == [1, 2], bodies
        assert by_version[1]["tasks"] == [rows[0]["RowKey"]]
        assert sum(len(b["tasks"]) for b in bodies) == 3
        for body in bodies:  # send them back: drained only to look at them
            job_queue(be, job.id).send_message(json.dumps(body))
        serve_until_idle(be, tmp_path, lease_s=5)
        assert {r.state for r in be.list_task_results(job.id)} == {TaskState.SUCCEEDED}
    assert sorted(runs_of(runs)) == sorted(keys)


@pytest.mark.parametrize(("defs", "reason"), [
    ("nope", "'defs' must be a list"),
    ([{"argv": ["x"]}, {"argv": ["y"]}], "'defs' must be a list"),
    ([{"argv": []}], "'argv' must be a non-empty list"),
    ([{"argv": ["x"], "params": [["A"]]}], "'params' must be [name, value] string pairs"),
    ([{"argv": ["x"], "b": "blob"}], "input container, blob and path must be strings"),
    (["x"], "is not an object"),
])
def test_bad_definitions_are_refused_with_the_reason(defs: Any, reason: str) -> None:
    text = json.dumps({"v": 2, "job": "j", "tasks": ["t"], "defs": defs})
    with pytest.raises(ValueError) as info:
        TaskMessage.decode(text)
    assert reason in str(info.value)
