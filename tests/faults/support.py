"""Helpers shared by the fault tests: jobs that count their runs, workers as real processes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from batchyard.backends import get_backend
from batchyard.backends.base import TaskCounts, TaskResult
from batchyard.backends.local.worker import WorkerOptions
from batchyard.core.job import Job, job_from_dict

TOOL = Path(__file__).with_name("fault_tool.py").resolve()
PY = sys.executable
REPO = Path(__file__).resolve().parents[2]


def tool_command(*args: str) -> str:
    """A job command running fault_tool.py; placeholders ({KEY}...) are passed through unquoted."""
    def q(arg: str) -> str:
        return arg if arg.startswith("{") and arg.endswith("}") else shlex.quote(arg)
    return " ".join([shlex.quote(PY), shlex.quote(str(TOOL)), *map(q, args)])


def table_job(project: Any, job_id: str, command: str, keys: Iterable[str], **extra: Any) -> Job:
    """A job with one task per key (a CSV task table with column KEY)."""
    (project.dir / f"{job_id}.csv").write_text("KEY\n" + "".join(f"{k}\n" for k in keys), encoding="utf-8")
    return job_from_dict({"id": job_id, "command": command, "tasks": f"{job_id}.csv", **extra},
                         source="test", base_dir=project.dir)


def runs_of(path: Path) -> list[str]:
    """Keys recorded by fault_tool (one line per run of a command)."""
    if not path.exists():
        return []
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def run_job(project: Any, job: Job, *, workers: int = 2, lease_s: float = 10.0, timeout: float = 240,
            before_start: Callable[[], None] | None = None) -> tuple[dict[str, TaskResult], TaskCounts]:
    """Submit and run ``job`` on the local backend with worker processes; results by label.

    The lease (10 s) is long enough that a busy machine never lets a claim lapse, which would
    rightly run a task again; a test that wants a takeover passes a short one.
    """
    with get_backend("local", project.config()) as be:
        be.preflight()
        be.submit(job)
        if before_start is not None:
            before_start()
        counts = be.run_to_end(job, workers=workers, timeout=timeout, poll_interval=0.3,
                               options=WorkerOptions(lease_s=lease_s))
        assert counts.finished, f"job {job.id} did not finish in {timeout}s: {counts}"
        return {r.label: r for r in be.list_task_results(job.id)}, counts


# The worker stops (finishing what it holds, like on Ctrl-C) once the file argv[7] exists.
_WORKER_MAIN = """
import logging, os, sys, threading, time
from batchyard.core.config import load_config
from batchyard.backends.local.worker import WorkerOptions, worker_process_main
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
config = load_config(sys.argv[1])
idle = None if sys.argv[3] == "none" else float(sys.argv[3])
pace = None if sys.argv[8] == "none" else float(sys.argv[8])
options = WorkerOptions(lease_s=float(sys.argv[2]), idle_exit_s=idle, max_dequeue_count=int(sys.argv[4]),
                        pace_s=pace)
stop = threading.Event()
def watch():
    while not os.path.exists(sys.argv[7]):
        time.sleep(0.05)
    stop.set()
threading.Thread(target=watch, daemon=True).start()
worker_process_main(config.storage_connection_string, config, int(sys.argv[5]), stop, options, sys.argv[6])
"""


def spawn_worker(project: Any, *, lease_s: float = 2.0, idle_exit: float | None = None, index: int = 0,
                 max_dequeue_count: int = 5, env: dict[str, str] | None = None,
                 pace_s: float | None = None) -> subprocess.Popen[bytes]:
    """One worker as its own OS process (``worker_process_main``), its log in ``worker-<index>.log``.

    ``pace_s`` pins the pace the worker assumes (WorkerOptions.pace_s), so whether it groups claims
    does not depend on how fast the machine runs its commands. :func:`stop_worker` stops it.
    """
    log = (project.dir / f"worker-{index}.log").open("ab")
    return subprocess.Popen(
        [PY, "-c", _WORKER_MAIN, str(project.dir / "batchyard.toml"), str(lease_s),
         "none" if idle_exit is None else str(idle_exit), str(max_dequeue_count), str(index),
         str(project.dir / "work"), str(_stop_file(project, index)), "none" if pace_s is None else str(pace_s)],
        cwd=project.dir, env={**project.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
    )


def _stop_file(project: Any, index: int) -> Path:
    return project.dir / f"worker-{index}.stop"


def stop_worker(project: Any, worker: subprocess.Popen[bytes], index: int, *, timeout: float = 120) -> int:
    """Ask a worker from :func:`spawn_worker` to stop (as on Ctrl-C: it finishes what it holds); its exit code."""
    _stop_file(project, index).touch()
    return worker.wait(timeout=timeout)


def gate(path: Path) -> str:
    """fault_tool's SLEEP argument that waits until ``path`` exists (see :func:`open_gate`)."""
    return f"@{path}"


def open_gate(path: Path) -> None:
    path.touch()


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it is true (returns its value); ``timeout`` should be generous: it only
    bounds a failure, so a busy machine never makes a correct run fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def known_bytes_md5(mib: int) -> bytes:
    """MD5 of fault_tool's 'known bytes' file of ``mib`` MiB."""
    digest = hashlib.md5(usedforsecurity=False)
    for i in range(mib):
        digest.update(hashlib.sha256(str(i).encode()).digest() * (1024 * 1024 // 32))
    return digest.digest()


def blob_md5(storage: Any, container: str, name: str) -> tuple[bytes, bytes | None, int]:
    """(md5 of the downloaded bytes, the blob's Content-MD5 header, size), streaming the download."""
    client = storage.container(container).get_blob_client(name)
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    for chunk in client.download_blob(max_concurrency=2).chunks():
        digest.update(chunk)
        size += len(chunk)
    header = client.get_blob_properties().content_settings.content_md5
    return digest.digest(), bytes(header) if header else None, size


def serve_until_idle(be: Any, tmp_path: Path, *, lease_s: float = 2, **options: Any) -> Any:
    """One in-process worker serving ``be``'s queue until it has been idle 1.5 s; returns it."""
    import threading

    from batchyard.backends.local.worker import Worker

    worker = Worker(be.storage, be.config, index=0, work_dir=tmp_path / "work",
                    options=WorkerOptions(lease_s=lease_s, idle_exit_s=1.5, **options))
    worker.serve(threading.Event())
    worker.close()
    return worker


def job_queue(be: Any, job_id: str, *, raw: bool = False) -> Any:
    """The queue of ``job_id``'s messages (each job has its own): batchyard's client, or with ``raw``
    one without its encoding (what someone else's client puts and gets)."""
    from batchyard.backends.local.job_queues import job_queue as queue_of

    client = queue_of(be.store, job_id)
    return be.storage.queue_service.get_queue_client(client.queue_name) if raw else client


def queued(be: Any, job_id: str) -> int:
    """How many messages ``job_id``'s queue holds (hidden ones included)."""
    return int(job_queue(be, job_id).get_queue_properties().approximate_message_count)


def drain_queue(queue: Any) -> list[dict[str, Any]]:
    """Receive and delete every message of ``queue``; their JSON bodies (each checked to fit 64 KiB)."""
    import json

    from batchyard.backends.local.messages import MAX_MESSAGE_BYTES

    found = []
    while batch := list(queue.receive_messages(max_messages=32, visibility_timeout=30)):
        for message in batch:
            assert len(message.content.encode()) <= MAX_MESSAGE_BYTES
            found.append(json.loads(message.content))
            queue.delete_message(message)
    return found
