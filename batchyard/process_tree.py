"""Killing a task's whole process tree: its group, its descendants, and any that ran away."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil


def _marked_processes(task_dir: str) -> list[psutil.Process]:
    """Live processes whose environment says they belong to the task in ``task_dir``.

    Every process the command starts inherits ``AZ_BATCH_TASK_DIR``, so this finds a
    daemon that left the process group *and* the process tree (setsid + double fork),
    unless it cleared its own environment.
    """
    found = []
    for candidate in psutil.process_iter():
        if candidate.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if candidate.environ().get("AZ_BATCH_TASK_DIR") == task_dir:
                found.append(candidate)
    return found


def kill_process_tree(proc: subprocess.Popen[bytes], *, task_dir: Path | None = None) -> None:
    """Kill the command's process group and every descendant, including any that left the group
    (and, given the task's ``task_dir``, any that left the tree while keeping its environment)."""
    for _ in range(3):  # a descendant may fork while we kill: sweep until nothing is left
        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        if task_dir is not None:
            descendants += _marked_processes(str(task_dir))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
        if not descendants:
            break
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)
