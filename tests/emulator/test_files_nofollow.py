"""The files API never follows a symlink a task planted, even one swapped in while a client reads."""

from __future__ import annotations

import shlex
import sys
import time
import uuid
from typing import Any

import pytest
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from .test_sdk_tutorial import client_for, make_job, make_pool, wait_all_completed

pytestmark = pytest.mark.timeout(120)
READS = 500
PASSWD_MARK = b"root:"  # the first line of every /etc/passwd

PLANT = """
import os
os.chdir(os.environ["AZ_BATCH_TASK_WORKING_DIR"])
with open("real.txt", "w") as fh:
    fh.write("real-content\\n")
os.symlink("/etc/passwd", "link.txt")
os.symlink("/etc", "linkdir")
os.mkfifo("fifo")
"""

# Swaps data.txt between a regular file and a symlink to /etc/passwd, atomically each way,
# until the test terminates the task (the loop is bounded in time as a safety net).
SWAP = """
import os, time
os.chdir(os.environ["AZ_BATCH_TASK_WORKING_DIR"])
with open("data.txt", "w") as fh:
    fh.write("real-content\\n")
deadline = time.monotonic() + 100
while time.monotonic() < deadline:
    os.symlink("/etc/passwd", "tmp.lnk")
    os.replace("tmp.lnk", "data.txt")
    with open("tmp.txt", "w") as fh:
        fh.write("real-content\\n")
    os.replace("tmp.txt", "data.txt")
"""


def python_task(task_id: str, script: str) -> bm.BatchTaskCreateOptions:
    return bm.BatchTaskCreateOptions(id=task_id, command_line=shlex.join([sys.executable, "-c", script]))


def read(client: Any, job_id: str, task_id: str, path: str) -> bytes | None:
    """The file's bytes, or None for a 404 (the SDK streams downloads, so it keeps no error body)."""
    try:
        return b"".join(client.download_task_file(job_id, task_id, path))
    except ResourceNotFoundError as exc:
        assert exc.status_code == 404
        return None


def read_or_refused(client: Any, job_id: str, task_id: str, path: str) -> bytes | None:
    """Like :func:`read`, but any refusal counts: this test is about never serving /etc/passwd."""
    try:
        return read(client, job_id, task_id, path)
    except HttpResponseError as exc:
        assert exc.status_code is not None and 400 <= exc.status_code < 500
        return None


def test_planted_symlinks_and_fifos_are_not_served(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    suffix = uuid.uuid4().hex[:8]
    pool_id, job_id = f"fp-{suffix}", f"fj-{suffix}"
    make_pool(client, pool_id, nodes=1, slots=1)
    make_job(client, job_id, pool_id)
    client.create_task(job_id, python_task("plant", PLANT))
    (task,) = wait_all_completed(client, job_id)
    assert task.execution_info.exit_code == 0
    assert read(client, job_id, "plant", "wd/real.txt") == b"real-content\n"
    for path in ("wd/link.txt", "wd/linkdir/passwd", "wd/fifo"):  # the fifo must not hang the request either
        assert read(client, job_id, "plant", path) is None, path
    names = {f.name for f in client.list_task_files(job_id, "plant", recursive=True)}
    assert "wd/real.txt" in names and not names & {"wd/link.txt", "wd/linkdir", "wd/fifo", "wd/linkdir/passwd"}
    # The node-level files API walks the same way.
    node_path = f"{task.node_info.task_root_directory}/wd/link.txt"
    assert b"".join(client.download_node_file(pool_id, task.node_info.node_id, node_path.replace(
        "link.txt", "real.txt"))) == b"real-content\n"
    with pytest.raises(ResourceNotFoundError):
        b"".join(client.download_node_file(pool_id, task.node_info.node_id, node_path))
    client.delete_task_file(job_id, "plant", "wd/linkdir")  # removes the link, never what it points at
    assert read(client, job_id, "plant", "wd/real.txt") == b"real-content\n"
    assert "wd/linkdir" not in {f.name for f in client.list_task_files(job_id, "plant", recursive=True)}


def test_symlink_swapped_in_while_reading_is_never_followed(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    suffix = uuid.uuid4().hex[:8]
    pool_id, job_id = f"sp-{suffix}", f"sj-{suffix}"
    make_pool(client, pool_id, nodes=1, slots=1)
    make_job(client, job_id, pool_id)
    client.create_task(job_id, python_task("swap", SWAP))
    deadline = time.monotonic() + 60
    while read_or_refused(client, job_id, "swap", "wd/data.txt") != b"real-content\n":  # the swapper is at work
        assert time.monotonic() < deadline, "the swapping task never produced its file"
        time.sleep(0.05)
    answers = [read_or_refused(client, job_id, "swap", "wd/data.txt") for _ in range(READS)]
    assert client.get_task(job_id, "swap").state == bm.BatchTaskState.RUNNING  # swapping throughout
    client.terminate_task(job_id, "swap")
    leaked = [a for a in answers if a is not None and PASSWD_MARK in a]
    assert len(leaked) == 0, f"{len(leaked)} of {READS} reads returned /etc/passwd"
    assert {a for a in answers} <= {b"real-content\n", None}
