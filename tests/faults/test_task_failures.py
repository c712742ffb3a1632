"""Promises 5-8: missing input, non-zero exit, hang past the wall clock, outputs (none, 200 MB)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends.local.messages import (
    MAX_MESSAGE_BYTES,
    MAX_TASKS_PER_MESSAGE,
    TaskMessage,
    chunk_size_for,
    chunk_sizes,
)
from batchyard.core.job import job_from_dict

from .support import alive, blob_md5, job_queue, known_bytes_md5, run_job, runs_of, table_job, tool_command, wait_for


def test_missing_input_fails_once_as_input_missing(project: Any, tmp_path: Path) -> None:
    """5. An input blob deleted after submit: failed as input_missing, not retried, the message names it."""
    ins = project.container("inputs")
    project.put_inputs(ins, {"here.txt": b"1", "gone.txt": b"2"})
    runs = tmp_path / "runs.txt"
    job = job_from_dict({"id": "missing", "command": tool_command("count", str(runs), "{input_name}", "0", "-", "0"),
                         "inputs": {"container": ins}, "constraints": {"max_task_retry_count": 3}},
                        source="test", base_dir=project.dir)
    results, _ = run_job(project, job,
                         before_start=lambda: project.storage.container(ins).delete_blob("gone.txt"))
    gone = results["gone.txt"]
    assert (gone.state, gone.failure_category, gone.attempts) == ("failed", "input_missing", 1)
    assert f"{ins}/gone.txt" in (gone.failure_message or "") and "not found" in (gone.failure_message or "")
    assert gone.exit_code is None
    assert results["here.txt"].state == "succeeded"
    assert runs_of(runs) == ["here.txt"], "the command ran for a task whose input is missing"


def test_nonzero_exit_retried_then_failed_with_code_and_stderr(project: Any, tmp_path: Path) -> None:
    """6. Exit 5 with max_task_retry_count=2: three runs, then failed with exit code 5 and the stderr tail."""
    runs = tmp_path / "runs.txt"
    job = table_job(project, "exits", tool_command("fail", str(runs), "{KEY}", "5"), ["e"],
                    constraints={"max_task_retry_count": 2})
    results, _ = run_job(project, job)
    result = results["KEY=e"]
    assert (result.state, result.failure_category, result.exit_code, result.attempts) == ("failed", "exit_code", 5, 3)
    assert runs_of(runs) == ["e", "e", "e"]
    assert "failing on purpose with code 5" in result.stderr_tail
    assert "exited with code 5" in (result.failure_message or "")
    assert [a["exit_code"] for a in result.attempt_records] == [5, 5, 5]
    assert [a["number"] for a in result.attempt_records] == [1, 2, 3]


def test_hang_past_wall_clock_kills_the_whole_tree(project: Any, tmp_path: Path) -> None:
    """7. At the wall clock, the group, a setsid grandchild and a double-forked daemon are all killed."""
    piddir = tmp_path / "pids"
    piddir.mkdir()
    job = table_job(project, "hangs", tool_command("hang", str(piddir)), ["h"],
                    constraints={"max_wall_clock_time": "3s", "max_task_retry_count": 2})
    pids: dict[str, int] = {}
    try:
        results, _ = run_job(project, job)
        assert (piddir / "ready").exists(), "the command did not get to start its descendants"
        pids = {p.name: int(p.read_text()) for p in piddir.iterdir() if p.name != "ready"}
        assert set(pids) == {"child", "middle", "setsid_grandchild", "daemon"}
        result = results["KEY=h"]
        assert (result.state, result.failure_category, result.attempts) == ("failed", "timeout", 1)
        assert "max_wall_clock_time" in (result.failure_message or "")
        wait_for(lambda: not any(alive(p) for p in pids.values()), timeout=60,
                 what=f"every process of the timed-out task to die: {pids}")
    finally:
        for pid in pids.values():
            if alive(pid):
                import os
                import signal
                os.kill(pid, signal.SIGKILL)


def test_output_pattern_matching_nothing_is_output_missing(project: Any, tmp_path: Path) -> None:
    """8a. A required output pattern that matches nothing: failed as output_missing, naming the pattern."""
    outs = project.container("outputs")
    runs = tmp_path / "runs.txt"
    job = table_job(project, "noout", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), ["n"],
                    outputs=[{"pattern": "*.result", "container": outs}],
                    constraints={"max_task_retry_count": 2})
    results, _ = run_job(project, job)
    result = results["KEY=n"]
    assert (result.state, result.failure_category, result.attempts) == ("failed", "output_missing", 1)
    assert "'*.result' matched no file" in (result.failure_message or "")
    assert runs_of(runs) == ["n"], "output_missing is permanent: not retried"


def test_200_mb_output_uploaded_in_blocks_with_md5(project: Any, tmp_path: Path) -> None:
    """8b. A 200 MiB output: uploaded as a block blob of many blocks, bytes and Content-MD5 verified."""
    outs = project.container("outputs")
    runs = tmp_path / "runs.txt"
    job = table_job(project, "bigout", tool_command("count", str(runs), "{KEY}", "0", "big.bin", "200"), ["b"],
                    outputs=[{"pattern": "big.bin", "container": outs, "path": "{job_id}/big.bin"}])
    results, _ = run_job(project, job, workers=1)
    assert results["KEY=b"].state == "succeeded", results
    client = project.storage.container(outs).get_blob_client("bigout/big.bin")
    props = client.get_blob_properties()
    assert props.blob_type == "BlockBlob" and props.size == 200 * 1024 * 1024
    committed, _ = client.get_block_list("committed")
    assert len(committed) >= 200 // 8, f"expected an upload in 8 MiB blocks, got {len(committed)} block(s)"
    md5, header, size = blob_md5(project.storage, outs, "bigout/big.bin")
    assert size == 200 * 1024 * 1024
    assert md5 == known_bytes_md5(200), "downloaded bytes differ from what the command wrote"
    assert header == md5, "the blob's Content-MD5 does not match its bytes"


def test_no_queue_message_exceeds_64_kib(project: Any) -> None:
    """8c. The biggest ids-only message (256 ids of 64 chars, a 64-char job id) is far below 64 KiB, and the
    messages a submit really sends for a big job stay within the chunk limit."""
    job_id = "j" * 64
    ids = tuple(f"{i:03d}" + "x" * 61 for i in range(MAX_TASKS_PER_MESSAGE))
    text = TaskMessage(job_id, ids).encode()
    assert len(text.encode()) < MAX_MESSAGE_BYTES // 3
    assert TaskMessage.decode(text) == TaskMessage(job_id, ids)
    for n_tasks in (1, 100, 10_000, 1_000_000):
        for workers in (1, 2, 64, 512):
            assert 1 <= chunk_size_for(n_tasks, workers) <= MAX_TASKS_PER_MESSAGE
    try:
        TaskMessage(job_id, tuple("y" * 64 for _ in range(2000))).encode()
    except ValueError as exc:
        assert "64 KiB" in str(exc)
    else:
        raise AssertionError("an oversized task message was encoded")
    # What submit really sends for 2,000 tasks on 2 workers: every message within the limits.
    from batchyard.backends import get_backend

    keys = [f"row{i:05d}" for i in range(2000)]
    job = table_job(project, "m" * 64, tool_command("count", "/dev/null", "{KEY}", "0", "-", "0"), keys)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        seen = 0
        while batch := list(job_queue(be, job.id).receive_messages(messages_per_page=32, max_messages=32,
                                                            visibility_timeout=60)):
            for message in batch:
                assert len(message.content.encode()) <= MAX_MESSAGE_BYTES
                body = json.loads(message.content)
                assert len(body["tasks"]) <= MAX_TASKS_PER_MESSAGE
                seen += len(body["tasks"])
                job_queue(be, job.id).delete_message(message)
    assert seen == len(keys)


@pytest.mark.parametrize(("n_tasks", "workers"), [(2000, 2), (10_000, 8), (33, 1), (100, 64), (1, 2)])
def test_messages_get_smaller_towards_the_end_so_workers_finish_together(n_tasks: int, workers: int) -> None:
    """A worker runs a message's tasks in turn: a full last message would leave the others idle."""
    size = chunk_size_for(n_tasks, workers)
    sizes = list(chunk_sizes(n_tasks, size, workers))
    assert sum(sizes) == n_tasks and all(1 <= s <= size for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    # Each message holds at most a 2*workers-th of what was left when it was cut, so the
    # last message of every worker is a small share of the work, never a full chunk.
    left = n_tasks
    for count in sizes:
        assert count <= max(1, -(-left // (2 * workers)))
        left -= count
    assert sizes[-1] == 1
    if n_tasks == 2000:  # the case the tiny benchmark runs: 62 per message (each worker sees 16 or
        # more), then fewer: the last ones 5, 4, 3, 2, 2, 1, 1, 1
        assert sizes[0] == 62 and sizes[-8:] == [5, 4, 3, 2, 2, 1, 1, 1]
