"""Promise 18: the next message is opened while a message's last command runs (short tasks only),
and a worker that stops meanwhile gives it back at once; nothing is lost or run twice.

Real Azurite, real commands, an in-process worker (so the test can stop it at a chosen moment).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batchyard.backends import get_backend
from batchyard.backends.base import TaskState
from batchyard.backends.local.admission import job_message_key
from batchyard.backends.local.messages import TaskMessage, pack
from batchyard.backends.local.worker import Worker, WorkerOptions
from batchyard.core.job import job_from_dict

from .support import drain_queue, runs_of, tool_command, wait_for


def _two_messages(project: Any, job_id: str, runs: Path,
                  sleeps: dict[str, float]) -> tuple[Any, Any, list[str], list[str]]:
    """Submit a job, then re-queue its tasks as two messages: the first half, then the second."""
    (project.dir / f"{job_id}.csv").write_text(
        "KEY,SLEEP\n" + "".join(f"{k},{s}\n" for k, s in sleeps.items()), encoding="utf-8")
    job = job_from_dict({"id": job_id, "command": tool_command("count", str(runs), "{KEY}", "{SLEEP}", "-", "0"),
                         "tasks": f"{job_id}.csv"}, source="test", base_dir=project.dir)
    be = get_backend("local", project.config())
    be.submit(job)
    drain_queue(be.store.queue)
    tasks = be.fan_out(job)
    half = len(tasks) // 2
    for message in pack(job.id, tasks, half, key=job_message_key(be.store, job.id)):
        assert isinstance(message, TaskMessage)
        be.store.send(message)
    return be, job, [t.task_id for t in tasks[:half]], [t.task_id for t in tasks[half:]]


def _worker(be: Any, tmp_path: Path, *, pace: float, lease_s: float) -> Worker:
    worker = Worker(be.storage, be.config, index=0, work_dir=tmp_path / "work",
                    options=WorkerOptions(lease_s=lease_s, idle_exit_s=1.5))
    worker.note_pace(pace)  # what its recent commands took: short tasks prefetch, long ones do not
    return worker


@contextmanager
def _serving(worker: Worker, stop: threading.Event | None = None) -> Iterator[threading.Thread]:
    """``worker`` serving on a thread; on leaving, wait for it to go idle (or ``stop``) and close it."""
    stop = stop or threading.Event()
    thread = threading.Thread(target=worker.serve, args=(stop,))
    thread.start()
    try:
        yield thread
    finally:
        thread.join(timeout=60)
        worker.close()


def _rows(be: Any, job: Any) -> dict[str, dict[str, Any]]:
    return {r["RowKey"]: r for r in be.store.task_entities(job.id)}


def test_next_message_is_opened_while_the_last_command_runs(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    sleeps = {f"a{i}": 0.0 for i in range(4)} | {f"b{i}": 0.0 for i in range(4)}
    sleeps["a3"] = 3.0  # the first message's last command: the second message is opened meanwhile
    be, job, _, second = _two_messages(project, "pipe-next", runs, sleeps)
    with be:
        worker = _worker(be, tmp_path, pace=0.01, lease_s=30)
        with _serving(worker):
            wait_for(lambda: "a3" in runs_of(runs), timeout=30, what="a3 to start")
            rows = wait_for(lambda: (r := _rows(be, job)).get(second[0], {}).get("state") == "running" and r,
                            timeout=2.5, what="the second message's first task to be claimed while a3 runs")
            assert "a3" in runs_of(runs) and "b0" not in runs_of(runs), "b0 started before a3 ended"
            assert rows[second[0]]["claim_owner"] == worker.owner
            # The whole second message left the queue with this worker: nothing for another to take.
            assert not list(be.store.queue.receive_messages(max_messages=1, visibility_timeout=1))
        results = {r.task_id: r for r in be.list_task_results(job.id)}
        left = list(be.store.queue.receive_messages(max_messages=32, visibility_timeout=1))
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}, results
    assert sorted(runs_of(runs)) == sorted(sleeps), "a task ran twice or not at all"
    assert runs_of(runs).index("a3") < runs_of(runs).index("b0"), "the messages ran out of order"
    assert not left, "a finished message was not deleted"


def test_a_worker_stopping_gives_back_the_message_it_opened_ahead(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    sleeps = {f"a{i}": 0.0 for i in range(4)} | {f"b{i}": 0.0 for i in range(4)}
    sleeps["a3"] = 3.0
    be, job, first, second = _two_messages(project, "pipe-stop", runs, sleeps)
    with be:
        worker = _worker(be, tmp_path, pace=0.01, lease_s=60)
        stop = threading.Event()
        with _serving(worker, stop) as serving:
            wait_for(lambda: _rows(be, job).get(second[0], {}).get("state") == "running", timeout=30,
                     what="the second message to be opened while a3 runs")
            stop.set()  # while a3 runs: the worker finishes a3, then must hand the second message back
            serving.join(timeout=30)
            assert not serving.is_alive()
        rows = _rows(be, job)
        assert all(rows[t]["state"] == "succeeded" for t in first), {t: rows[t]["state"] for t in first}
        given_back = [t for t in second if t in rows]
        assert given_back and all(rows[t]["state"] == "pending" and not rows[t]["claim_owner"] for t in given_back)
        # Visible again now, not when its 60 s lease ends: a new worker takes it at once.
        began = time.monotonic()
        other = Worker(be.storage, be.config, index=1, work_dir=tmp_path / "work2",
                       options=WorkerOptions(lease_s=60, idle_exit_s=1.0))
        other.serve(threading.Event())
        other.close()
        assert time.monotonic() - began < 30, "the given-back message waited for its lease"
        results = {r.task_id: r for r in be.list_task_results(job.id)}
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}, results
    assert sorted(runs_of(runs)) == sorted(sleeps), "a task ran twice or not at all"
    for task_id in second:  # given back, not lost: no attempt is counted against them
        assert [a["failure_category"] for a in results[task_id].attempt_records] == [None]


def test_long_tasks_leave_the_next_message_in_the_queue(project: Any, tmp_path: Path) -> None:
    """With long commands the next message stays in the queue, where an idle worker can start it."""
    runs = tmp_path / "runs.txt"
    sleeps = {"a0": 0.0, "a1": 3.0, "b0": 0.0, "b1": 0.0}
    be, job, _, second = _two_messages(project, "pipe-long", runs, sleeps)
    with be:
        worker = _worker(be, tmp_path, pace=5.0, lease_s=30)
        with _serving(worker):
            wait_for(lambda: "a1" in runs_of(runs), timeout=30, what="a1 to start")
            time.sleep(1.5)  # the prefetch would have happened by now
            assert second[0] not in _rows(be, job), "the next message was opened during a long command"
        results = {r.task_id: r for r in be.list_task_results(job.id)}
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}, results
    assert sorted(runs_of(runs)) == sorted(sleeps)
