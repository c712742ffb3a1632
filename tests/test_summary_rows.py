"""A summary's rows on the local backend come from the job's tally and manifest, reading only the
rows it shows (backends/local/summary.py), and are the rows a read of every result would choose."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from batchyard.backends.base import TaskResult
from batchyard.backends.local.backend import LocalBackend
from batchyard.cli.main import SUMMARY_ROWS, _order
from batchyard.core.bounded import Firsts
from batchyard.core.job import job_from_dict

# ok*.txt succeed, bad*.txt fail with exit code 3.
BY_NAME = "sh -c 'case \"$INPUT_NAME\" in ok*) exit 0;; *) exit 3;; esac'"


def _per_state(results: list[TaskResult], limit: int) -> dict[str, list[tuple[str, str, Any, int, Any, Any]]]:
    """Each state's first ``limit`` results in the summary's order, as the fields a summary shows."""
    firsts: dict[str, Firsts[TaskResult]] = {}
    for r in results:
        firsts.setdefault(str(r.state), Firsts(limit, _order)).add(r)
    return {state: [(r.task_id, r.label, r.exit_code, r.attempts, r.failure_category, r.failure_message)
                    for r in kept.firsts()] for state, kept in firsts.items()}


@pytest.mark.timeout(240)
def test_a_summary_reads_only_the_rows_it_shows(project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ins = project.container("inputs")
    names = [f"ok{i:02d}.txt" for i in range(14)] + [f"bad{i:02d}.txt" for i in range(9)]
    project.put_inputs(ins, {name: b"x" for name in names})
    job = job_from_dict({"id": f"sum-{uuid.uuid4().hex[:6]}", "command": BY_NAME, "inputs": {"container": ins}},
                        base_dir=project.dir)
    be = LocalBackend(project.config())
    be.submit(job)
    counts = be.run_to_end(job, workers=2)
    assert (counts.succeeded, counts.failed) == (14, 9), counts

    read: list[list[str]] = []
    find_tasks = be.store.find_tasks
    monkeypatch.setattr(be.store, "find_tasks", lambda job_id, ids, **kw: read.append(list(ids)) or
                        find_tasks(job_id, ids, **kw))
    limit = 4
    chosen = list(be.summary_results(job.id, order=_order, limit=limit))
    assert _per_state(chosen, limit) == _per_state(list(be.list_task_results(job.id)), limit)
    assert sorted(i for ids in read for i in ids) == sorted(r.task_id for r in chosen) and len(chosen) == 2 * limit
    assert all(r.failure_category == "exit_code" and r.exit_code == 3 for r in chosen if r.label.startswith("bad"))

    # A row whose task the manifest does not name (recorded by another submission): every row is read.
    manifest_rows = be.store.manifest_rows
    monkeypatch.setattr(be.store, "manifest_rows", lambda job_id: manifest_rows(job_id)[1:])
    assert len(list(be.summary_results(job.id, order=_order, limit=limit))) == len(names)


@pytest.mark.timeout(240)
def test_the_status_table_counts_what_it_does_not_show(project: Any) -> None:
    ins = project.container("inputs")
    names = [f"ok{i:02d}.txt" for i in range(SUMMARY_ROWS + 3)] + [f"bad{i:02d}.txt" for i in range(SUMMARY_ROWS + 2)]
    project.put_inputs(ins, {name: b"x" for name in names})
    job_id = f"sum-{uuid.uuid4().hex[:6]}"
    (project.dir / "job.toml").write_text(f'id = "{job_id}"\ncommand = {json.dumps(BY_NAME)}\n'
                                          f'[inputs]\ncontainer = "{ins}"\n', encoding="utf-8")
    ran = project.cli("run", "job.toml", "--workers", "2", timeout=200)
    assert ran.returncode == 1, ran.stdout + ran.stderr  # some tasks failed
    status = project.cli("status", job_id)
    for text in (ran.stdout, status.stdout):
        assert f"{job_id}: {SUMMARY_ROWS + 3} succeeded, {SUMMARY_ROWS + 2} failed" in text, text
        failed_rows = re.findall(r"│\s+failed\s+│", text)
        assert len(failed_rows) == SUMMARY_ROWS and not re.search(r"│\s+succeeded\s+│", text), text  # failed first
        assert f"... and 2 more failed, {SUMMARY_ROWS + 3} more succeeded" in text, text
        assert f"... and 2 more failed tasks (batchyard status {job_id} --json)" in text, text
