"""A big job's queue messages hold up to a few hundred tasks (issue #20): more than one table
transaction takes (100 writes) and more than one row query names (32 ids). These tests show that
``pack`` fills each message to its byte limit with definitions a worker accepts, that a worker runs
every task of such a message exactly once (the message delivered twice), asking for its rows a
window at a time, and that a worker killed in the middle of one loses nothing.

Real Azurite, real worker processes, real SIGKILL. The command that must still be running when the
test acts waits for a gate file the test opens afterwards, and the worker's pace is pinned, so
nothing depends on how fast the machine runs a command.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.base import TaskState
from batchyard.backends.local.admission import job_message_key
from batchyard.backends.local.grouped_rows import LOOKUP_WINDOW
from batchyard.backends.local.messages import (
    MAX_PACKED_BYTES,
    TaskMessage,
    chunk_size_for,
    def_to_dict,
    pack,
)
from batchyard.backends.local.store import TABLE_BATCH, JobStore
from batchyard.core.job import TaskDef, job_from_dict
from batchyard.core.wire_json import compact_json

from .support import (
    drain_queue,
    job_queue,
    kill_quietly,
    open_gate,
    queued,
    runs_of,
    serve_until_idle,
    spawn_worker,
    stop_worker,
    wait_for,
)

SHORT_PACE_S = 0.01  # the pace a worker is told its commands take: it claims up to 32 tasks at once
KEY = b"k" * 43


def _reference_mac(job_id: str, task: TaskDef) -> str:
    """The MAC as docs/security.md defines it."""
    canonical = json.dumps([job_id, task.task_id, def_to_dict(task)], separators=(",", ":"), sort_keys=True)
    return hmac.new(KEY, canonical.encode(), hashlib.sha256).hexdigest()


def test_pack_fills_each_message_to_its_byte_limit_with_definitions_a_worker_accepts() -> None:
    job_id = "big-pack"
    fingerprint = "1:" + ",".join(f"{c}=0123456789ab" for c in "icrmeo")
    tasks = [TaskDef(task_id=f"k{i:06d}-{i:012x}", argv=("true", f"k{i:06d}"), params=(("KEY", f"k{i:06d}"),),
                     fingerprint=fingerprint) for i in range(20_000)]
    tasks[5] = TaskDef(task_id="wide", argv=("echo", "\u00e9\"\\\x01" * 2000))  # bytes, not characters, count
    tasks[9] = TaskDef(task_id="huge", argv=("echo", "y" * 60_000))  # fits no message
    workers = 2
    size = chunk_size_for(len(tasks), workers)
    out = list(pack(job_id, tasks, size, key=KEY, workers=workers))
    assert [t for t in out if isinstance(t, TaskDef)] == [tasks[9]]
    messages = [m for m in out if isinstance(m, TaskMessage)]
    sent = [t for m in messages for t in m.task_ids]
    assert sent == [t.task_id for t in tasks if t.task_id != "huge"], "every task once, in order"
    position = {t.task_id: i for i, t in enumerate(tasks)}
    for message in messages:
        text = message.encode()
        assert text == compact_json(message.body()), "the text packed is the message's JSON"
        assert len(text.encode()) <= MAX_PACKED_BYTES
        decoded = TaskMessage.decode(text)
        assert decoded == message and decoded.forged(KEY) is None
        assert message.macs == tuple(_reference_mac(job_id, t) for t in message.defs or ())
        # Guided self-scheduling: never more than a 2*workers-th of what was left (the task too big
        # for any message, just before, may have been counted in).
        left = len(tasks) - position[message.task_ids[0]] + 1
        assert len(message.task_ids) <= max(1, -(-left // (2 * workers)))
    full = [len(m.task_ids) for m in messages[2:20]]
    assert min(full) > 150, f"messages of tiny definitions are not filled to the byte limit: {full}"
    assert all(len(m.encode().encode()) > MAX_PACKED_BYTES - 400 for m in messages[2:20])
    assert [len(m.task_ids) for m in messages[-3:]] == [1, 1, 1], "the last messages are single tasks"
    # A small job keeps one task per message (the best balance between workers).
    assert chunk_size_for(60, 2) == 1 and chunk_size_for(100, 4) == 1


def _sh_job(project: Any, job_id: str, runs: Path, gates: dict[str, str]) -> Any:
    """One task per key: it appends "KEY pid" to ``runs``, then waits until its GATE path exists
    ("/" for a task that does not wait)."""
    (project.dir / f"{job_id}.csv").write_text("KEY,GATE\n" + "".join(f"{k},{g}\n" for k, g in gates.items()),
                                               encoding="utf-8")
    command = f"/bin/sh -c 'echo {{KEY}} $$ >> {runs}; while [ ! -e {{GATE}} ]; do sleep 0.05; done'"
    return job_from_dict({"id": job_id, "command": command, "tasks": f"{job_id}.csv"}, source="test",
                         base_dir=project.dir)


def _as_one_message(be: Any, job: Any) -> TaskMessage:
    """Re-queue a submitted job's tasks as one message (a job this size is sent one task to a message)."""
    drain_queue(job_queue(be, job.id))
    tasks = be.fan_out(job)
    (message,) = pack(job.id, tasks, len(tasks), key=job_message_key(be.store, job.id))
    assert isinstance(message, TaskMessage)
    assert len(message.task_ids) > TABLE_BATCH > LOOKUP_WINDOW, "the message holds more than a transaction"
    be.store.send(message)
    return message


@pytest.mark.timeout(600)  # a hang guard: each wait below has a generous deadline of its own
def test_a_message_holding_more_than_a_transaction_runs_each_task_once(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    keys = [f"m{i:03d}" for i in range(120)]
    job = _sh_job(project, "big-once", runs, dict.fromkeys(keys, "/"))
    with get_backend("local", project.config()) as be:
        be.submit(job)
        message = _as_one_message(be, job)
        be.store.send(message)  # delivered twice: the second copy finds every task final
        asked: list[int] = []
        real = JobStore.get_tasks

        def counting(self: JobStore, job_id: str, task_ids: Any) -> Any:
            ids = list(task_ids)
            asked.append(len(ids))
            return real(self, job_id, ids)

        JobStore.get_tasks = counting  # type: ignore[method-assign]
        try:
            worker = serve_until_idle(be, tmp_path, lease_s=10, pace_s=SHORT_PACE_S)
        finally:
            JobStore.get_tasks = real  # type: ignore[method-assign]
        rows = list(be.store.task_entities(job.id))
        assert queued(be, job.id) == 0, "both copies of the message left the queue"
    assert worker.tasks_run == 120
    assert sorted(runs_of(runs)) == keys, "each task ran exactly once"
    assert len(rows) == 120 and all(r["state"] == "succeeded" and int(r["attempt_count"]) == 1 for r in rows)
    assert asked and max(asked) <= LOOKUP_WINDOW, f"a row query named more than a window of ids: {asked}"
    assert sum(asked) >= 2 * 120, "each copy looked up every row of the message"


@pytest.mark.timeout(900)  # a hang guard: each wait below has a generous deadline of its own
def test_worker_killed_in_the_middle_of_a_big_message_loses_nothing(project: Any, tmp_path: Path) -> None:
    runs, middle_gate = tmp_path / "runs.txt", tmp_path / "middle.gate"
    keys = [f"g{i:03d}" for i in range(120)]
    gates = dict.fromkeys(keys, "/")
    middle = keys[105]  # past the first 100 writes and several row queries
    gates[middle] = str(middle_gate)
    job = _sh_job(project, "big-kill", runs, gates)
    first = second = None
    with get_backend("local", project.config()) as be:
        be.submit(job)
        _as_one_message(be, job)
        try:
            first = spawn_worker(project, index=0, lease_s=2, pace_s=SHORT_PACE_S)
            wait_for(lambda: middle in runs_of(runs), timeout=300, what=f"{middle} to start under worker 0")
            done_before = set(keys[:105])
            wait_for(lambda: done_before <= {r["label"].split(",")[0].removeprefix("KEY=")
                                             for r in be.store.task_entities(job.id) if r["state"] == "succeeded"},
                     timeout=120, what="the results before the middle task to be written")
            first.send_signal(signal.SIGKILL)
            assert first.wait(timeout=60) == -signal.SIGKILL
            open_gate(middle_gate)  # the middle task runs again under worker 1, and ends this time
            second = spawn_worker(project, index=1, lease_s=2)
            wait_for(lambda: be.task_counts(job.id).finished, timeout=300, what="worker 1 to finish every task")
            wait_for(lambda: queued(be, job.id) == 0, timeout=60, what="the message to leave the queue")
            assert stop_worker(project, second, 1) == 0, (project.dir / "worker-1.log").read_text()
        finally:
            open_gate(middle_gate)
            for line in runs.read_text().splitlines() if runs.exists() else []:
                kill_quietly(int(line.split()[1]))
            for proc in (first, second):
                if proc is not None:
                    kill_quietly(proc.pid)
        results = {r.label.split(",")[0].removeprefix("KEY="): r for r in be.list_task_results(job.id)}
        assert len(list(be.store.task_entities(job.id))) == 120, "exactly one row per task"
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}, results
    started = runs_of(runs)
    assert sorted(set(started)) == keys, "every task ran"
    assert started.count(middle) == 2, "the killed command runs again (its worker was lost)"
    twice = sorted(k for k in set(started) if started.count(k) > 1)
    assert twice == [middle], f"a task finished before the kill, or claimed but never started, ran twice: {twice}"
    assert [a["failure_category"] for a in results[middle].attempt_records] == ["lost", None]


def test_a_row_lookup_keeps_each_filter_within_azures_15_comparisons(project: Any, tmp_path: Path) -> None:
    """Azure's Table service refuses a ``$filter`` of more than 15 comparisons (Azurite takes any): a
    lookup of 40 rows is made of queries that each stay within it, and finds every row."""
    keys = [f"k{i:03d}" for i in range(40)]
    job = _sh_job(project, "lookup-limit", tmp_path / "runs.txt", dict.fromkeys(keys, "/"))
    with get_backend("local", project.config()) as be:
        be.submit(job)
        tasks = be.fan_out(job)
        be.store.write_pending(job.id, tasks)
        filters: list[str] = []
        real = be.store.tasks.query_entities

        def seen(query_filter: str, **kwargs: Any) -> Any:
            filters.append(query_filter)
            return real(query_filter, **kwargs)

        be.store.tasks.query_entities = seen
        found = be.store.get_tasks(job.id, [t.task_id for t in tasks])
    assert sorted(found) == sorted(t.task_id for t in tasks)
    assert len(filters) == 3 and all(f.count(" eq ") <= 15 for f in filters), filters
