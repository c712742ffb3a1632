"""A submit past HELD_TASKS holds none of its tasks: one pass plans, writes the manifest and keeps the
tasks to queue in a temporary file (issue #23, point 6). The limit is lowered here so a small job takes
the same path a million-task job does; every task must still run exactly once, and a re-run of some
must reset their rows and run only them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.local import backend as local_backend
from batchyard.backends.local import enqueue as local_enqueue

from .support import runs_of, serve_until_idle, table_job, tool_command

pytestmark = pytest.mark.timeout(240)
KEYS = [f"k{i:03d}" for i in range(37)]


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks past 5 kept on disk; two messages' worth of tasks packed at a time."""
    monkeypatch.setattr(local_backend, "HELD_TASKS", 5)
    monkeypatch.setattr(local_enqueue, "SLICE_MESSAGES", 2)


def test_a_streamed_submit_runs_every_task_once_and_its_manifest_is_whole(project: Any, tmp_path: Path,
                                                                         streamed: None) -> None:
    runs = tmp_path / "runs.txt"
    job = table_job(project, "streamjob", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), KEYS)
    with get_backend("local", project.config()) as be:
        result = be.submit(job)
        assert (result.total, result.enqueued) == (37, 37)
        assert [label for _, label in be.store.load_manifest("streamjob")] == [f"KEY={k}" for k in KEYS]
        serve_until_idle(be, tmp_path)
        assert sorted(runs_of(runs)) == KEYS
        counts = be.task_counts("streamjob")
        assert (counts.succeeded, counts.failed, counts.total) == (37, 0, 37)
        # Again, naming some: only they run, once more each, from rows set back to pending first.
        ids = {label: task_id for task_id, label in be.store.load_manifest("streamjob")}
        again = be.submit(job, rerun=[ids["KEY=k001"], ids["KEY=k020"].upper(), ids["KEY=k036"]])
        assert (again.total, again.enqueued, again.already_succeeded) == (37, 3, 34)
        assert be.task_counts("streamjob").pending == 3
        serve_until_idle(be, tmp_path)
        assert sorted(runs_of(runs)) == sorted([*KEYS, "k001", "k020", "k036"])
        assert be.task_counts("streamjob").succeeded == 37


def test_a_streamed_submit_refuses_a_bad_row_before_anything_is_queued(project: Any, tmp_path: Path,
                                                                      streamed: None) -> None:
    """The plan's pass reads the whole table first: a repeat of the first row on the last line stops
    the submit with no job document, no manifest and no message written."""
    from batchyard.core.errors import JobValidationError

    job = table_job(project, "streambad", "true {KEY}", [*KEYS, KEYS[0]])
    with get_backend("local", project.config()) as be:
        with pytest.raises(JobValidationError, match="line 39 repeats line 2"):
            be.submit(job)
        assert be.store.get_job_entity("streambad") is None
        assert be.store.manifest_rows("streambad") is None


def test_a_spill_gives_back_what_it_was_given_in_order_and_leaves_no_file() -> None:
    from batchyard.core.job import TaskDef
    from batchyard.core.spill import Spill

    tasks = [TaskDef(task_id=f"t{i}", argv=("echo", str(i)), params=(("KEY", str(i)),), fingerprint="f")
             for i in range(1234)]
    for keep, rows in ((10_000, False), (100, False), (0, False), (100, True)):
        codec = {"encode": TaskDef.as_row, "decode": lambda row: TaskDef(*row)} if rows else {}
        with Spill[TaskDef](keep=keep, block=50, **codec) as spill:
            for task in tasks:
                spill.append(task)
            assert spill.count == 1234 and list(spill) == tasks
            on_disk = spill._file
            assert (on_disk is None) == (keep >= 1234)
        assert on_disk is None or on_disk.closed
