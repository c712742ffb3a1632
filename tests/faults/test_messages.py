"""Promise 4: malformed, unknown-version and over-delivered queue messages go to the poison queue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchyard.backends import get_backend

from .support import drain_queue, job_queue, queued, runs_of, serve_until_idle, table_job, tool_command


def test_malformed_and_unknown_messages_are_poisoned_worker_keeps_going(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    job = table_job(project, "afterbad", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), ["ok"])
    bad = {
        "not json {": "not JSON",
        '{"v": 99, "job": "afterbad", "tasks": ["x"]}': "unknown message version 99",
        '{"job": "afterbad", "tasks": ["x"]}': "unknown message version None",
        "[1, 2, 3]": "not a JSON object",
        '{"v": 1, "job": "afterbad", "tasks": []}': "non-empty list of task ids",
        '{"v": 1, "job": "no-such-job", "tasks": ["t"]}': "names job 'no-such-job' but was on the queue of job",
        '{"tasks": ["a/b"], "v": 1, "job": "afterbad"}': "task id 'a/b' is not a valid id",
    }
    # Put as they are, not base64-encoded (as batchyard's are): hostile bodies whose JSON-escaped
    # copy would not fit in a poison message if kept whole.
    raw = {'"' * 40_000: "not base64-encoded", "\U0001f680" * 15_000: "not base64-encoded",
           '{"v":1,"job":"afterbad","tasks":["x"]}': "not base64-encoded"}
    with get_backend("local", project.config()) as be:
        be.submit(job)
        (good,) = drain_queue(job_queue(be, job.id))
        for body in bad:
            job_queue(be, job.id).send_message(body)
        for body in raw:
            job_queue(be, job.id, raw=True).send_message(body)
        bad.update(raw)
        job_queue(be, job.id).send_message(json.dumps(good))  # after the bad ones: the worker must get past them
        worker = serve_until_idle(be, tmp_path)
        assert worker.tasks_run == 1
        (result,) = be.list_task_results(job.id)
        assert result.state == "succeeded"
        assert queued(be, job.id) == 0
        poisoned = drain_queue(be.store.poison_queue)
    assert runs_of(runs) == ["ok"]
    assert len(poisoned) == len(bad), [p["reason"] for p in poisoned]
    by_start = {p["original"][:30]: p for p in poisoned}
    for body, reason in bad.items():
        entry = by_start[body[:30]]
        assert reason in entry["reason"], (reason, entry["reason"])
        assert body.startswith(entry["original"])
        assert entry["truncated"] == (entry["original"] != body)
    assert any(p["truncated"] for p in poisoned), "the hostile bodies should have been cut to fit"


def test_message_delivered_too_often_is_poisoned_and_its_task_failed(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    job = table_job(project, "toomany", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), ["p"])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        for _ in range(5):  # five deliveries that never finished (default max_dequeue_count = 5)
            (message,) = job_queue(be, job.id).receive_messages(max_messages=1, visibility_timeout=30)
            job_queue(be, job.id).update_message(message, visibility_timeout=0)
        serve_until_idle(be, tmp_path)
        (result,) = be.list_task_results(job.id)
        poisoned = drain_queue(be.store.poison_queue)
    assert (result.state, result.failure_category) == ("failed", "poison")
    assert "delivered 6 times (max_dequeue_count=5)" in (result.failure_message or "")
    assert runs_of(runs) == [], "a poisoned message's task ran"
    (entry,) = poisoned
    assert "delivered 6 times" in entry["reason"] and json.loads(entry["original"])["job"] == "toomany"
