"""Issue #23, point 4: every message leaves the queue, once.

A message naming a task id that cannot be a table key, one whose task cannot be recorded, one
delivered again after its delete failed: each ends as exactly one poison copy and is gone from the
queue, and ``batchyard worker --idle-exit`` exits with nothing but such messages to serve. Values no
queue XML can carry travel base64-encoded; a message Azurite itself cannot deliver (raw control
bytes someone else put) does not stop a worker.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.local.worker import Worker, WorkerOptions

from .support import drain_queue, job_queue, runs_of, serve_until_idle, table_job, tool_command, wait_for

pytestmark = pytest.mark.timeout(300)


def _raw_queue(be: Any, job_id: str) -> Any:
    """The job's queue without batchyard's encoding: what someone else's client puts and gets."""
    return job_queue(be, job_id, raw=True)


def _count(queue: Any) -> int:
    return int(queue.get_queue_properties().approximate_message_count)


@contextmanager
def _serving(be: Any, tmp_path: Path, **options: Any) -> Iterator[Worker]:
    """One in-process worker serving ``be``'s queue until the block ends (it never exits on its own)."""
    worker = Worker(be.storage, be.config, index=0, work_dir=tmp_path / "work", options=WorkerOptions(**options))
    stop = threading.Event()
    thread = threading.Thread(target=worker.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=60)
        worker.close()


def test_a_worker_with_only_poison_bound_messages_idles_out(project: Any) -> None:
    """The issue's message, ``{"v":1,"job":"secjob","tasks":["a/b"]}``: put raw (as the issue did) and
    as batchyard encodes messages; the worker poisons each once and ``--idle-exit`` fires."""
    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text().replace("[local]\n", "[local]\nlease_seconds = 2\n"), encoding="utf-8")
    job = table_job(project, "secjob", tool_command("count", "/dev/null", "{KEY}", "0", "-", "0"), ["x"])
    body = '{"v":1,"job":"secjob","tasks":["a/b"]}'
    with get_backend("local", project.config()) as be:
        be.submit(job)
        drain_queue(job_queue(be, job.id))  # nothing runnable is left: only the two messages below
        _raw_queue(be, job.id).send_message(body)
        job_queue(be, job.id).send_message(body)
    served = project.cli("worker", "--workers", "1", "--idle-exit", "5", timeout=150)
    assert served.returncode == 0, served.stderr
    with get_backend("local", project.config()) as be:
        assert _count(job_queue(be, job.id)) == 0
        reasons = sorted(p["reason"] for p in drain_queue(be.store.poison_queue))
    assert len(reasons) == 2, reasons
    assert "not base64-encoded" in reasons[0] and "task id 'a/b' is not a valid id" in reasons[1], reasons


def test_a_message_poisoned_twice_leaves_one_copy(project: Any, tmp_path: Path) -> None:
    """Delivered again after its delete failed (here: its receipt went stale), a poison-bound
    message is not copied to the poison queue a second time."""
    job = table_job(project, "twice", tool_command("count", "/dev/null", "{KEY}", "0", "-", "0"), ["x"])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        drain_queue(job_queue(be, job.id))
        job_queue(be, job.id).send_message('{"v": 99, "job": "twice", "tasks": ["t"]}')
        raw = _raw_queue(be, job.id)
        (first,) = raw.receive_messages(max_messages=1, visibility_timeout=60)
        raw.update_message(first, visibility_timeout=0)  # visible again: first's receipt is stale
        (second,) = raw.receive_messages(max_messages=1, visibility_timeout=60)
        assert (first.id, first.dequeue_count + 1) == (second.id, second.dequeue_count)
        worker = Worker(be.storage, be.config, work_dir=tmp_path / "work", options=WorkerOptions(lease_s=60))
        try:
            source = worker.queues.of(job.id)
            assert worker.open_message(first, source) is None  # poisoned; the delete fails (stale receipt)
            assert worker.open_message(second, source) is None  # the same message: no second copy, deleted
        finally:
            worker.close()
        poisoned = drain_queue(be.store.poison_queue)
        assert _count(job_queue(be, job.id)) == 0
    assert [p["reason"] for p in poisoned] == [
        "malformed message: unknown message version 99 (this worker reads (1, 2))"]


def test_a_task_whose_row_cannot_be_written_is_poisoned_once_and_leaves(project: Any, tmp_path: Path) -> None:
    """A row property over the table's 32K characters: the claim is refused every time. After
    max_dequeue_count deliveries the message is poisoned once, its task recorded as poison (its
    label cut to fit a row), and the message deleted, where it used to come back forever with a
    new poison copy each time."""
    runs = tmp_path / "runs.txt"
    big = "B" * 33_000  # fits a queue message, not a row
    job = table_job(project, "bigrow", tool_command("count", str(runs), "row", "0", "-", "0"), [big])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        with _serving(be, tmp_path, lease_s=1, max_dequeue_count=1, idle_exit_s=None):
            wait_for(lambda: _count(be.store.poison_queue) >= 1 and _count(job_queue(be, job.id)) == 0,
                     timeout=90, what="the message to be poisoned and leave the queue", interval=0.2)
        poisoned = drain_queue(be.store.poison_queue)
        (result,) = be.list_task_results(job.id)
    assert len(poisoned) == 1 and "delivered 2 times" in poisoned[0]["reason"], poisoned
    assert (result.state, result.failure_category) == ("failed", "poison")
    assert result.label == f"KEY={big}"[:1024]
    assert runs_of(runs) == []


def test_values_no_queue_xml_can_carry_travel_base64_and_run(project: Any, tmp_path: Path) -> None:
    """U+FFFF and U+FFFE are not XML characters: sent as text, Azurite answered 500 to every receive
    that reached such a message and its task never ran."""
    value = "odd\uffffvalue\ufffe\x7fend"
    out = tmp_path / "argv.json"
    job = table_job(project, "oddchars", tool_command("argv", str(out), "{KEY}"), [value])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        (stored,) = _raw_queue(be, job.id).peek_messages(max_messages=1)
        assert json.loads(base64.b64decode(stored.content, validate=True))["job"] == "oddchars"
        counts = be.run_to_end(job, workers=1, timeout=90, poll_interval=0.3, options=WorkerOptions(lease_s=5))
        assert counts.succeeded == 1, counts
    assert json.loads(out.read_text(encoding="utf-8"))["argv"] == [value]


@pytest.mark.timeout(75)  # the SDK's own retries of that 500 held a worker ~90 s; the test takes ~5 s
def test_a_message_azurite_cannot_deliver_does_not_stop_the_worker(project: Any, tmp_path: Path) -> None:
    """Raw control bytes put by someone else: Azurite 3.35 stores them, then answers 500 to each
    receive that reaches the message, hiding it for the receive's visibility timeout; it cannot
    be deleted (no receipt ever comes back). The worker logs the error, waits a second (its own
    retry, not the SDK's) and goes on with the next message."""
    runs = tmp_path / "runs.txt"
    job = table_job(project, "afterctl", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), ["after"])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        (genuine,) = drain_queue(job_queue(be, job.id))
        _raw_queue(be, job.id).send_message("ctl\x01\x1f\uffff")
        job_queue(be, job.id).send_message(json.dumps(genuine))  # after the one Azurite cannot deliver
        worker = serve_until_idle(be, tmp_path, lease_s=5)
        (result,) = be.list_task_results(job.id)
        assert _count(job_queue(be, job.id)) == 1, "Azurite is expected to keep the message it cannot deliver"
    assert worker.tasks_run == 1 and result.state == "succeeded"
    assert runs_of(runs) == ["after"]


def test_a_poisoned_copy_leaves_a_task_another_worker_runs_alone(project: Any) -> None:
    """The owner's message delivered too often while another worker holds a live claim on one of its
    tasks (from another copy): the poisoning records the unclaimed task as ``poison`` and leaves the
    running one to the worker that runs it."""
    from batchyard.backends.local.admission import record_poisoned
    from batchyard.backends.local.messages import TaskMessage

    job = table_job(project, "poisonrun", tool_command("count", "/dev/null", "{KEY}", "0", "-", "0"), ["a", "b"])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        claimed, unclaimed = be.fan_out(job)
        assert be.store.claim_new(job.id, claimed, owner="other-worker", lease_s=600) is not None
        record_poisoned(be.store, TaskMessage(job.id, (claimed.task_id, unclaimed.task_id),
                                              (claimed, unclaimed)), "delivered 6 times")
        running = be.store.get_task(job.id, claimed.task_id)
        poisoned = be.store.get_task(job.id, unclaimed.task_id)
    assert (running["state"], running["claim_owner"]) == ("running", "other-worker")
    assert poisoned["state"] == "failed" and poisoned["failure_category"] == "poison"
