"""Killing a task's whole process tree (its group, its descendants, and any that ran away),
and the watchdog that does it when a command overstays its wall clock or is cancelled."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

WATCH_INTERVAL_S = 0.25  # how often a running command's cancel flag is checked


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


@dataclass(eq=False)
class Watch:
    """One command under the watchdog; ``stopped`` says why it was killed, if it was."""

    proc: subprocess.Popen[bytes]
    deadline: float | None
    cancel: threading.Event | None
    task_dir: Path | None
    stopped: str | None = None
    killed: threading.Event = field(default_factory=threading.Event)


class Watchdog:
    """One thread per process that enforces every running command's wall clock and cancel flag.

    It lets the thread that started a command block in ``waitpid`` and see its exit at once
    (polling ``Popen.wait(timeout)`` notices an exit only after its next back-off sleep, up to
    50 ms, which for a short command costs more than the command). One shared thread, rather
    than a thread per command, saves a thread start and join per task.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child has none of our threads

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._watches: set[Watch] = set()
        self._started = False

    def watch(self, proc: subprocess.Popen[bytes], *, deadline: float | None, cancel: threading.Event | None,
              task_dir: Path | None) -> Watch:
        entry = Watch(proc, deadline, cancel, task_dir)
        with self._cond:
            if not self._started:
                threading.Thread(target=self._loop, name="watchdog", daemon=True).start()
                self._started = True
            self._watches.add(entry)
            self._cond.notify()
        return entry

    def release(self, entry: Watch) -> str | None:
        """Stop watching a command that exited: None, or why it was killed ('timeout', 'cancelled')."""
        with self._cond:
            if entry in self._watches:
                self._watches.discard(entry)
                return None
        entry.killed.wait()  # being killed right now: return once the whole tree is gone
        return entry.stopped

    def _loop(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = []
                for entry in list(self._watches):
                    if entry.deadline is not None and now >= entry.deadline:
                        entry.stopped = "timeout"
                    elif entry.cancel is not None and entry.cancel.is_set():
                        entry.stopped = "cancelled"
                    else:
                        continue
                    self._watches.discard(entry)
                    due.append(entry)
                if not due:
                    waits = [WATCH_INTERVAL_S] + [e.deadline - now for e in self._watches if e.deadline is not None]
                    self._cond.wait(max(0.0, min(waits)) if self._watches else None)
                    continue
            for entry in due:
                try:
                    kill_process_tree(entry.proc, task_dir=entry.task_dir)
                finally:
                    entry.killed.set()


WATCHDOG = Watchdog()
