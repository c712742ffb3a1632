"""Shared benchmark plumbing: an Azurite of its own, isolated configs, timing, machine facts."""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from batchyard.core.config import Config, load_config
from batchyard.storage.account import Storage

UPPER_PY = """import sys
data = open(sys.argv[1], 'rb').read()
open(sys.argv[2], 'wb').write(data.upper())
"""


@contextmanager
def azurite() -> Iterator[str]:
    """A fresh Azurite (persistent --location in a temp dir) for this benchmark run."""
    given = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if given:
        yield given
        return
    from batchyard.emulator.azurite import start_ephemeral

    with tempfile.TemporaryDirectory(prefix="by-bench-azurite-") as tmp:
        instance, stop = start_ephemeral(Path(tmp))
        try:
            yield instance.connection_string()
        finally:
            stop()


def isolated_config(root: Path, conn: str, *, workers: int, **local: Any) -> Config:
    uid = uuid.uuid4().hex[:8]
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in local.items())
    (root / "batchyard.toml").write_text(
        f'backend = "local"\n[storage]\nqueue = "b{uid}"\ntable_prefix = "b{uid}"\n'
        f'system_container = "sys-{uid}"\nlog_container = "logs-{uid}"\n'
        f'[local]\nworkers = {workers}\nwork_dir = "{root / "work"}"\n{extra}',
        encoding="utf-8",
    )
    return load_config(root / "batchyard.toml", env={"AZURE_STORAGE_CONNECTION_STRING": conn,
                                                     "BATCHYARD_HOME": str(root / "home")})


def start_batch_emulator(conn: str, root: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any], str]:
    """The Batch API emulator as a process of its own (its memory and CPU are measured apart):
    the process, its ready file ({url, account_name, pid}) and its account key."""
    ready, key_file = root / "emu-ready.json", root / "emu.key"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchyard.emulator.batch", "--data-dir", str(root / "emu"), "--key-file",
         str(key_file), "--ready-file", str(ready), "--storage-connection-string-env", "BENCH_STORAGE",
         "--log-level", "WARNING"],
        env={**os.environ, "BENCH_STORAGE": conn}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the Batch emulator did not start")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text()), key_file.read_text().strip()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ChildPeakRss:
    """A child process's own peak RSS: its ``VmHWM`` read every 50 ms on a thread while it lives.

    Not ``ru_maxrss`` from ``wait4``: Linux carries a parent's peak into its child across fork and
    exec, so a command started by a benchmark process of 240 MiB reports 240 MiB whatever it used.
    """

    def __init__(self, pid: int) -> None:
        self._pid, self._peak_kib, self._done = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                status = Path(f"/proc/{self._pid}/status").read_text()
            except OSError:
                return
            hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
            if hwm is None:  # a zombie: its memory is gone
                return
            self._peak_kib = max(self._peak_kib, hwm)
            self._done.wait(0.05)

    def stop(self) -> float:
        """The peak seen, in MiB (call once the process has exited)."""
        self._done.set()
        self._thread.join()
        return round(self._peak_kib / 1024, 1)


def emit_json(result: dict[str, Any], out: Path | None) -> int:
    """A standalone benchmark's end: its JSON on stdout, and in ``out`` if given; exit code 0."""
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine(conn: str | None = None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        from batchyard.emulator.azurite import AZURITE_VERSION

        facts["azurite"] = AZURITE_VERSION
    except ImportError:
        facts["azurite"] = None
    return facts


def storage_of(conn: str) -> Storage:
    return Storage.from_connection_string(conn)
