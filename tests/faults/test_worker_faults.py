"""Promises 1, 2 and 9: workers that die, tasks that outlive the lease, duplicate submits and messages.

Real Azurite, real worker processes, real SIGKILL; every command counts its runs in a side file.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from batchyard.backends import get_backend
from batchyard.backends.local.messages import TaskMessage, pack
from batchyard.backends.local.worker import Worker, WorkerOptions

from .support import (
    blob_md5,
    drain_queue,
    kill_quietly,
    known_bytes_md5,
    run_job,
    runs_of,
    spawn_worker,
    table_job,
    tool_command,
    wait_for,
)


def test_worker_killed_mid_task_another_finishes(project: Any, tmp_path: Path) -> None:
    """1. SIGKILL the worker mid-task (lease 2 s): another worker takes over, one result, lost attempt noted."""
    outs = project.container("outputs")
    runs = tmp_path / "runs.txt"
    job = table_job(project, "killed", tool_command("count", str(runs), "{KEY}", "3", "out.bin", "6"), ["k1"],
                    outputs=[{"pattern": "out.bin", "container": outs, "path": "{job_id}/{KEY}.bin"}])
    orphans: list[int] = []
    with get_backend("local", project.config()) as be:
        be.submit(job)
        first = spawn_worker(project, index=0, lease_s=2)
        try:
            wait_for(lambda: runs_of(runs), timeout=30, what="the command to start under worker 0")
            first.send_signal(signal.SIGKILL)
            assert first.wait(timeout=10) == -signal.SIGKILL
            orphans = [int(line.split()[1]) for line in runs.read_text().splitlines()]
            second = spawn_worker(project, index=1, lease_s=2, idle_exit=3)
            assert second.wait(timeout=60) == 0, (project.dir / "worker-1.log").read_text()
        finally:
            for pid in orphans:  # the killed worker's command, left running like on a lost node
                kill_quietly(pid)
            kill_quietly(first.pid)
        (result,) = be.list_task_results(job.id)
        rows = list(be.store.task_entities(job.id))
    assert result.state == "succeeded", result
    assert len(rows) == 1, "exactly one record per task"
    assert result.attempts == 2, result.attempt_records
    lost, won = result.attempt_records
    assert lost["failure_category"] == "lost" and "lost" in lost["failure_message"]
    assert won["failure_category"] is None and won["exit_code"] == 0
    assert result.node_id and result.node_id.endswith("-w1"), "the surviving worker recorded the result"
    assert runs_of(runs) == ["k1", "k1"], "at least once: the lost attempt ran, then the retry"
    md5, header, size = blob_md5(project.storage, outs, "killed/k1.bin")
    assert size == 6 * 1024 * 1024
    assert md5 == known_bytes_md5(6) == header, "the output blob is complete and matches its Content-MD5"


def test_long_task_outlives_the_lease_and_runs_once(project: Any, tmp_path: Path) -> None:
    """2. A 7 s task with a 2 s lease: the lease is renewed, no other worker runs it."""
    runs = tmp_path / "runs.txt"
    job = table_job(project, "longtask", tool_command("count", str(runs), "{KEY}", "7", "-", "0"), ["slow"])
    results, _ = run_job(project, job, workers=2, lease_s=2, timeout=60)
    result = results["KEY=slow"]
    assert result.state == "succeeded"
    assert runs_of(runs) == ["slow"], "the task ran more than once"
    assert result.attempts == 1
    assert not any(a["failure_category"] == "lost" for a in result.attempt_records)
    with get_backend("local", project.config()) as be:
        (row,) = be.store.task_entities(job.id)
    assert row["deliveries"] == 1, "the message was redelivered: its lease was not renewed"


def test_duplicate_submit_and_duplicate_message_run_once(project: Any, tmp_path: Path) -> None:
    """9. The same job submitted twice and its messages sent again: each command runs once."""
    runs = tmp_path / "runs.txt"
    keys = [f"d{i}" for i in range(6)]
    job = table_job(project, "dupes", tool_command("count", str(runs), "{KEY}", "0.3", "-", "0"), keys)
    with get_backend("local", project.config()) as be:
        first, second = be.submit(job), be.submit(job)
        assert first.enqueued == second.enqueued == len(keys)  # nothing ran yet: queued twice
        ids = [r.task_id for r in be.list_task_results(job.id)]
        for task_id in ids:  # and a third copy of every message, as a redelivery would make
            be.store.send(TaskMessage(job.id, (task_id,)))
        be.store.send(TaskMessage(job.id, tuple(ids)))
        be.start_execution(job, workers=2, options=WorkerOptions(lease_s=2))
        try:
            counts = be.wait(job.id, timeout=60, poll_interval=0.3)
            assert counts.succeeded == len(keys), counts
            # drain the duplicates: every one must be consumed without running anything
            wait_for(lambda: be.store.queue.get_queue_properties().approximate_message_count == 0,
                     timeout=30, what="the duplicate messages to be consumed")
        finally:
            be.stop_execution()
        assert sorted(runs_of(runs)) == sorted(keys), "a duplicate ran a command again"
        ended = {r.task_id: r.ended_at for r in be.list_task_results(job.id)}

        again = be.submit(job)  # after success: nothing is queued
        assert (again.enqueued, again.already_succeeded) == (0, len(keys))
        be.store.send(TaskMessage(job.id, tuple(ids)))
        be.start_execution(job, workers=1, options=WorkerOptions(lease_s=2, idle_exit_s=2))
        try:
            wait_for(lambda: be.store.queue.get_queue_properties().approximate_message_count == 0,
                     timeout=30, what="the late duplicate to be consumed")
        finally:
            be.stop_execution()
        assert sorted(runs_of(runs)) == sorted(keys), "a succeeded task ran again"
        assert {r.task_id: r.ended_at for r in be.list_task_results(job.id)} == ended
        assert all(r.attempts == 1 for r in be.list_task_results(job.id))
    assert json.loads(TaskMessage(job.id, tuple(ids)).encode())["v"] == 1


def test_a_dead_workers_message_comes_back_only_after_its_claims_expired(project: Any, tmp_path: Path) -> None:
    """A message whose worker died is taken over, never skipped as "claimed by a live worker".

    The worker dies right after claiming its message's tasks (its keeper never renews). Another
    worker polling as fast as it can receives the message the moment it is visible again: by then
    every claim the dead worker made must have expired, or the new worker would leave the tasks to
    a worker that is gone and delete their only message.
    """
    runs = tmp_path / "runs.txt"
    job = table_job(project, "comeback", tool_command("count", str(runs), "{KEY}", "0", "-", "0"),
                    [f"c{i}" for i in range(3)])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        drain_queue(be.store.queue)
        tasks = be.fan_out(job)
        (message,) = pack(job.id, tasks, len(tasks))
        be.store.send(message)
        options = WorkerOptions(lease_s=1, idle_exit_s=1.0, pace_s=0.01)  # claims all three at once
        dead = Worker(be.storage, be.config, index=0, work_dir=tmp_path / "dead", options=options)
        received = wait_for(dead._receive, timeout=60, what="the message")
        opened = dead.open_message(received)
        assert opened is not None
        opened.keeper.stop()  # the worker dies here: nothing renews its message or its claims
        dead.close()
        owner = {r["RowKey"]: r["claim_owner"] for r in be.store.task_entities(job.id)}
        assert set(owner.values()) == {dead.owner}, owner
        heir = Worker(be.storage, be.config, index=1, work_dir=tmp_path / "heir", options=options)
        again = wait_for(heir._receive, timeout=60, what="the message to come back", interval=0.001)
        taken = heir.open_message(again)
        assert taken is not None and taken.first is not None, "the tasks were left to the dead worker"
        taken.abandon()
        heir.close()
