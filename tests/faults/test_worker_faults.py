"""Promises 1, 2 and 9: workers that die, tasks that outlive the lease, duplicate submits and messages.

Real Azurite, real worker processes, real SIGKILL; every command counts its runs in a side file.
A command that must still run when the test acts waits for a gate file (fault_tool's ``@PATH``),
and the test waits for what it observes by polling with generous deadlines, never by sleeping.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from batchyard.backends import get_backend
from batchyard.backends.local.admission import job_message_key
from batchyard.backends.local.messages import TaskMessage, pack
from batchyard.backends.local.worker import Worker, WorkerOptions

from .support import (
    blob_md5,
    drain_queue,
    gate,
    job_queue,
    kill_quietly,
    known_bytes_md5,
    open_gate,
    queued,
    runs_of,
    spawn_worker,
    stop_worker,
    table_job,
    tool_command,
    wait_for,
)


def test_worker_killed_mid_task_another_finishes(project: Any, tmp_path: Path) -> None:
    """1. SIGKILL the worker mid-task (lease 2 s): another worker takes over, one result, lost attempt noted."""
    outs = project.container("outputs")
    runs, held = tmp_path / "runs.txt", tmp_path / "k1.gate"
    # The command runs until the gate opens (after the kill), then writes its 6 MiB output.
    job = table_job(project, "killed", tool_command("count", str(runs), "{KEY}", gate(held), "out.bin", "6"), ["k1"],
                    outputs=[{"pattern": "out.bin", "container": outs, "path": "{job_id}/{KEY}.bin"}])
    orphans: list[int] = []
    second = None
    with get_backend("local", project.config()) as be:
        be.submit(job)
        first = spawn_worker(project, index=0, lease_s=2)
        try:
            wait_for(lambda: runs_of(runs), timeout=120, what="the command to start under worker 0")
            first.send_signal(signal.SIGKILL)
            assert first.wait(timeout=60) == -signal.SIGKILL
            orphans = [int(line.split()[1]) for line in runs.read_text().splitlines()]
            open_gate(held)
            second = spawn_worker(project, index=1, lease_s=2)
            wait_for(lambda: be.task_counts(job.id).finished, timeout=180, what="worker 1 to finish the task")
            assert stop_worker(project, second, 1) == 0, (project.dir / "worker-1.log").read_text()
        finally:
            open_gate(held)
            for pid in orphans:  # the killed worker's command, left running like on a lost node
                kill_quietly(pid)
            kill_quietly(first.pid)
            if second is not None:
                kill_quietly(second.pid)
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
    """2. A task running on past its first claim and the lease after it: both are renewed, no other
    worker (there are two) runs it. The lease is 5 s, so a keeper a busy machine delays still renews
    in time; the command runs until the test has seen its claim renewed past two leases."""
    lease = 5.0
    runs, held = tmp_path / "runs.txt", tmp_path / "slow.gate"
    job = table_job(project, "longtask", tool_command("count", str(runs), "{KEY}", gate(held), "-", "0"), ["slow"])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        be.start_execution(job, workers=2, options=WorkerOptions(lease_s=lease))
        try:
            wait_for(lambda: runs_of(runs), timeout=120, what="the command to start")
            (row,) = be.store.task_entities(job.id)
            first_expiry = float(row["claim_expires"])
            wait_for(lambda: float(next(iter(be.store.task_entities(job.id)))["claim_expires"]) > first_expiry + lease
                     and time.time() > first_expiry + lease, timeout=120,
                     what="the claim to be renewed while the command runs past two leases")
            open_gate(held)
            assert be.wait(job.id, timeout=300, poll_interval=0.3).finished
        finally:
            open_gate(held)
            be.stop_execution()
        results = {r.label: r for r in be.list_task_results(job.id)}
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
    lease = 15.0  # long enough that a busy machine never lets a claim lapse (a lapse may rightly run a task again)
    with get_backend("local", project.config()) as be:
        first, second = be.submit(job), be.submit(job)
        assert first.enqueued == second.enqueued == len(keys)  # nothing ran yet: queued twice
        ids = [r.task_id for r in be.list_task_results(job.id)]
        for task_id in ids:  # and a third copy of every message, as a redelivery would make
            be.store.send(TaskMessage(job.id, (task_id,)))
        be.store.send(TaskMessage(job.id, tuple(ids)))
        be.start_execution(job, workers=2, options=WorkerOptions(lease_s=lease))
        try:
            counts = be.wait(job.id, timeout=300, poll_interval=0.3)
            unsucceeded = [(r.task_id, r.failure_category, r.failure_message,
                            [(a.get("failure_category"), a.get("failure_message")) for a in r.attempt_records])
                           for r in be.list_task_results(job.id) if r.state != "succeeded"]
            assert counts.succeeded == len(keys), (counts, unsucceeded)
            # drain the duplicates: every one must be consumed without running anything
            wait_for(lambda: queued(be, job.id) == 0,
                     timeout=120, what="the duplicate messages to be consumed")
        finally:
            be.stop_execution()
        assert sorted(runs_of(runs)) == sorted(keys), "a duplicate ran a command again"
        ended = {r.task_id: r.ended_at for r in be.list_task_results(job.id)}

        again = be.submit(job)  # after success: nothing is queued
        assert (again.enqueued, again.already_succeeded) == (0, len(keys))
        be.store.send(TaskMessage(job.id, tuple(ids)))
        be.start_execution(job, workers=1, options=WorkerOptions(lease_s=lease, idle_exit_s=2))
        try:
            wait_for(lambda: queued(be, job.id) == 0,
                     timeout=120, what="the late duplicate to be consumed")
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
        drain_queue(job_queue(be, job.id))
        tasks = be.fan_out(job)
        (message,) = pack(job.id, tasks, len(tasks), key=job_message_key(be.store, job.id))
        be.store.send(message)
        options = WorkerOptions(lease_s=1, idle_exit_s=1.0, pace_s=0.01)  # claims all three at once
        dead = Worker(be.storage, be.config, index=0, work_dir=tmp_path / "dead", options=options)
        received = wait_for(dead._receive, timeout=60, what="the message")
        opened = dead.open_message(*received)
        assert opened is not None
        opened.keeper.stop()  # the worker dies here: nothing renews its message or its claims
        dead.close()
        owner = {r["RowKey"]: r["claim_owner"] for r in be.store.task_entities(job.id)}
        assert set(owner.values()) == {dead.owner}, owner
        heir = Worker(be.storage, be.config, index=1, work_dir=tmp_path / "heir", options=options)
        again = wait_for(heir._receive, timeout=60, what="the message to come back", interval=0.001)
        taken = heir.open_message(*again)
        assert taken is not None and taken.first is not None, "the tasks were left to the dead worker"
        taken.abandon()
        heir.close()
