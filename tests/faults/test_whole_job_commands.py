"""Commands on a whole job, whatever its size: cancel, status, status --json and delete (issue #20).

Cancel writes the job's state and the rows still pending, 100 to a transaction; a task no worker
claimed reads as cancelled. Delete removes the rows in parallel transactions. ``status --json``
streams. Each is checked for what it records, on jobs of a few thousand tasks (their speed is
benchmarks/scale.py's business).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.base import TaskState
from batchyard.backends.local.bulk import ROWS_PER_TRANSACTION
from batchyard.core.errors import JobNotFoundError

from .support import runs_of, serve_until_idle, table_job, tool_command

pytestmark = pytest.mark.timeout(300)


def test_cancel_of_2000_tasks_records_every_task_cancelled_and_counts_equal_the_results(
        project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    keys = [f"t{i:05d}" for i in range(2000)]
    job = table_job(project, "cancel2000", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), keys)
    with get_backend("local", project.config()) as be:
        tasks = be.fan_out(job)
        be.submit(job)
        # Tasks that ran before and were queued again have pending rows: more than two transactions of them.
        requeued = tasks[: 2 * ROWS_PER_TRANSACTION + 37]
        be.store.write_pending(job.id, requeued, reset=True)
        be.cancel(job.id)

        rows = {e["RowKey"]: e for e in be.store.task_entities(job.id)}
        assert set(rows) == {t.task_id for t in requeued}, "cancel wrote rows for tasks that had none"
        assert {(r["state"], r["failure_category"]) for r in rows.values()} == {("failed", "cancelled")}
        results = list(be.list_task_results(job.id))
        assert len(results) == 2000 and len({r.task_id for r in results}) == 2000
        assert {(r.state, r.failure_category) for r in results} == {(TaskState.CANCELLED, "cancelled")}
        counts = be.task_counts(job.id)
        by_state = Counter(str(r.state) for r in results)
        assert counts.to_dict() == {"pending": 0, "running": 0, "succeeded": 0, "failed": 0,
                                    "cancelled": 2000, "total": 2000}
        assert by_state == {"cancelled": 2000}
        assert counts.finished
        assert [v.counts.cancelled for v in be.list_jobs() if v.job_id == job.id] == [2000]
    # A fresh process (no tally kept in memory) counts the same.
    with get_backend("local", project.config()) as fresh:
        assert fresh.task_counts(job.id).cancelled == 2000


def test_cancelled_job_runs_nothing_and_a_rerun_runs_every_task(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    keys = [f"r{i}" for i in range(40)]
    job = table_job(project, "cancelrerun", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), keys)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        be.cancel(job.id)
        assert serve_until_idle(be, tmp_path, lease_s=5).tasks_run == 0
        assert runs_of(runs) == []
        assert be.task_counts(job.id).cancelled == 40

        again = be.submit(job)  # `batchyard run` once more: what was cancelled runs now
        assert again.enqueued == 40
        assert be.task_counts(job.id).to_dict()["pending"] == 40
        serve_until_idle(be, tmp_path, lease_s=5)
        counts = be.task_counts(job.id)
        assert (counts.succeeded, counts.cancelled, counts.total) == (40, 0, 40)
    assert sorted(runs_of(runs)) == sorted(keys)


def test_delete_removes_every_row_of_a_job_that_has_many(project: Any) -> None:
    keys = [f"d{i:04d}" for i in range(5 * ROWS_PER_TRANSACTION + 3)]
    job = table_job(project, "delrows", "true {KEY}", keys)
    keep = table_job(project, "kept", "true {KEY}", keys[:5])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        be.submit(keep)
        be.store.write_pending(job.id, be.fan_out(job), reset=True)
        be.store.write_pending(keep.id, be.fan_out(keep), reset=True)
        assert sum(1 for _ in be.store.task_entities(job.id)) == len(keys)
        be.delete(job.id)
        assert list(be.store.task_entities(job.id)) == []
        with pytest.raises(JobNotFoundError):
            be.task_counts(job.id)
        assert sum(1 for _ in be.store.task_entities(keep.id)) == 5, "another job's rows went too"


def test_status_json_streams_valid_json_whose_counts_equal_its_tasks(project: Any, tmp_path: Path) -> None:
    keys = [f"s{i:04d}" for i in range(300)]
    job = table_job(project, "jsonstream", "true {KEY}", keys)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        be.store.write_pending(job.id, be.fan_out(job)[:120], reset=True)  # some with rows, some without
    listed = project.cli("status", job.id, "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert (data["job_id"], data["backend"], data["pool"]) == (job.id, "local", None)
    assert len(data["tasks"]) == 300 and {t["state"] for t in data["tasks"]} == {"pending"}
    assert data["counts"] == {"pending": 300, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
                              "total": 300}
    assert project.cli("cancel", job.id).returncode == 0
    data = json.loads(project.cli("status", job.id, "--json").stdout)
    assert Counter(t["state"] for t in data["tasks"]) == {"cancelled": 300}
    assert data["counts"]["cancelled"] == 300
    table = project.cli("status", job.id)
    assert table.returncode == 0, table.stderr
    assert "0 succeeded, 0 failed, 300 cancelled, 300 total" in " ".join(table.stdout.split())
    assert "275 more cancelled" in table.stdout
