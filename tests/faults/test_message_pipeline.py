"""Promise 18: the next message is opened while a message's last command runs (short tasks only),
and a worker that stops meanwhile gives it back at once; nothing is lost or run twice.

Real Azurite, real commands, an in-process worker (so the test can stop it at a chosen moment).
The command that must still run when the test acts waits for a gate file the test opens
afterwards, and the worker's pace is pinned or only ever longer under load, so a busy machine
changes how long these tests take, never what they see.
"""

from __future__ import annotations

import threading
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

from .support import drain_queue, gate, job_queue, open_gate, runs_of, tool_command, wait_for


def _two_messages(project: Any, job_id: str, runs: Path,
                  sleeps: dict[str, float | str]) -> tuple[Any, Any, list[str], list[str]]:
    """Submit a job, then re-queue its tasks as two messages: the first half, then the second."""
    (project.dir / f"{job_id}.csv").write_text(
        "KEY,SLEEP\n" + "".join(f"{k},{s}\n" for k, s in sleeps.items()), encoding="utf-8")
    job = job_from_dict({"id": job_id, "command": tool_command("count", str(runs), "{KEY}", "{SLEEP}", "-", "0"),
                         "tasks": f"{job_id}.csv"}, source="test", base_dir=project.dir)
    be = get_backend("local", project.config())
    be.submit(job)
    drain_queue(job_queue(be, job.id))
    tasks = be.fan_out(job)
    half = len(tasks) // 2
    for message in pack(job.id, tasks, half, key=job_message_key(be.store, job.id)):
        assert isinstance(message, TaskMessage)
        be.store.send(message)
    return be, job, [t.task_id for t in tasks[:half]], [t.task_id for t in tasks[half:]]


def _short_task_worker(be: Any, tmp_path: Path, *, lease_s: float) -> Worker:
    """A worker pinned to a short pace (commands of 10 ms), so it opens the next message ahead."""
    return Worker(be.storage, be.config, index=0, work_dir=tmp_path / "work",
                  options=WorkerOptions(lease_s=lease_s, idle_exit_s=1.5, pace_s=0.01))


@contextmanager
def _serving(worker: Worker, stop: threading.Event | None = None) -> Iterator[threading.Thread]:
    """``worker`` serving on a thread; on leaving, wait for it to go idle (or ``stop``) and close it."""
    stop = stop or threading.Event()
    thread = threading.Thread(target=worker.serve, args=(stop,))
    thread.start()
    try:
        yield thread
    finally:
        thread.join(timeout=120)
        worker.close()


def _rows(be: Any, job: Any) -> dict[str, dict[str, Any]]:
    return {r["RowKey"]: r for r in be.store.task_entities(job.id)}


def test_next_message_is_opened_while_the_last_command_runs(project: Any, tmp_path: Path) -> None:
    runs, a3_gate = tmp_path / "runs.txt", tmp_path / "a3.gate"
    sleeps: dict[str, float | str] = {f"a{i}": 0.0 for i in range(4)} | {f"b{i}": 0.0 for i in range(4)}
    sleeps["a3"] = gate(a3_gate)  # the first message's last command: the second message is opened meanwhile
    be, job, _, second = _two_messages(project, "pipe-next", runs, sleeps)
    with be:
        worker = _short_task_worker(be, tmp_path, lease_s=30)
        try:
            with _serving(worker):
                wait_for(lambda: "a3" in runs_of(runs), timeout=120, what="a3 to start")
                rows = wait_for(lambda: (r := _rows(be, job)).get(second[0], {}).get("state") == "running" and r,
                                timeout=120, what="the second message's first task to be claimed while a3 runs")
                assert "b0" not in runs_of(runs), "b0 started before a3 ended"
                assert rows[second[0]]["claim_owner"] == worker.owner
                # The whole second message left the queue with this worker: nothing for another to take.
                assert not list(job_queue(be, job.id).receive_messages(max_messages=1, visibility_timeout=1))
                open_gate(a3_gate)
        finally:
            open_gate(a3_gate)
        results = {r.task_id: r for r in be.list_task_results(job.id)}
        left = list(job_queue(be, job.id).receive_messages(max_messages=32, visibility_timeout=1))
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}, results
    assert sorted(runs_of(runs)) == sorted(sleeps), "a task ran twice or not at all"
    assert runs_of(runs).index("a3") < runs_of(runs).index("b0"), "the messages ran out of order"
    assert not left, "a finished message was not deleted"


def test_a_worker_stopping_gives_back_the_message_it_opened_ahead(project: Any, tmp_path: Path) -> None:
    runs, a3_gate = tmp_path / "runs.txt", tmp_path / "a3.gate"
    sleeps: dict[str, float | str] = {f"a{i}": 0.0 for i in range(4)} | {f"b{i}": 0.0 for i in range(4)}
    sleeps["a3"] = gate(a3_gate)
    be, job, first, second = _two_messages(project, "pipe-stop", runs, sleeps)
    with be:
        worker = _short_task_worker(be, tmp_path, lease_s=60)
        stop = threading.Event()
        try:
            with _serving(worker, stop) as serving:
                wait_for(lambda: _rows(be, job).get(second[0], {}).get("state") == "running", timeout=120,
                         what="the second message to be opened while a3 runs")
                stop.set()  # while a3 runs: the worker finishes a3, then must hand the second message back
                open_gate(a3_gate)
                serving.join(timeout=120)
                assert not serving.is_alive()
        finally:
            open_gate(a3_gate)
        rows = _rows(be, job)
        assert all(rows[t]["state"] == "succeeded" for t in first), {t: rows[t]["state"] for t in first}
        given_back = [t for t in second if t in rows]
        assert given_back and all(rows[t]["state"] == "pending" and not rows[t]["claim_owner"] for t in given_back)
        # Visible again now, not when its 60 s lease ends (a peek sees only visible messages).
        (visible,) = job_queue(be, job.id).peek_messages(max_messages=32)
        assert TaskMessage.decode(visible.content).task_ids == tuple(second)
        other = Worker(be.storage, be.config, index=1, work_dir=tmp_path / "work2",
                       options=WorkerOptions(lease_s=60, idle_exit_s=1.0))
        other.serve(threading.Event())
        other.close()
        results = {r.task_id: r for r in be.list_task_results(job.id)}
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}, results
    assert sorted(runs_of(runs)) == sorted(sleeps), "a task ran twice or not at all"
    for task_id in second:  # given back, not lost: no attempt is counted against them
        assert [a["failure_category"] for a in results[task_id].attempt_records] == [None]


def test_long_tasks_leave_the_next_message_in_the_queue(project: Any, tmp_path: Path) -> None:
    """With long commands the next message stays in the queue, where an idle worker can start it."""
    runs, a1_gate = tmp_path / "runs.txt", tmp_path / "a1.gate"
    sleeps: dict[str, float | str] = {"a0": 0.0, "a1": gate(a1_gate), "b0": 0.0, "b1": 0.0}
    be, job, _, second = _two_messages(project, "pipe-long", runs, sleeps)
    decided = threading.Event()
    with be:
        # The worker's checkpoint hook tells when it decided, during the last command, about the next message.
        worker = Worker(be.storage, be.config, index=0, work_dir=tmp_path / "work",
                        options=WorkerOptions(lease_s=30, idle_exit_s=1.5),
                        checkpoint=lambda point: point == "next-message-left" and decided.set())
        worker.note_pace(5.0)  # its recent commands took 5 s (a busy machine only makes them longer)
        try:
            with _serving(worker):
                wait_for(lambda: "a1" in runs_of(runs), timeout=120, what="a1 to start")
                assert decided.wait(timeout=120), "the worker never decided about the next message"
                assert second[0] not in _rows(be, job), "the next message was opened during a long command"
                open_gate(a1_gate)
        finally:
            open_gate(a1_gate)
        results = {r.task_id: r for r in be.list_task_results(job.id)}
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}, results
    assert sorted(runs_of(runs)) == sorted(sleeps)
