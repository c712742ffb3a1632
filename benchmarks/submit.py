"""Submit throughput: N tasks submitted (records + messages, or Batch tasks), nothing run.

Local: LocalBackend.submit (table transactions of 100 + queue messages of up to 32 ids).
Azure: AzureBackend.submit against the Batch API emulator (add-collection, 100 per request).
Peak RSS of this process is sampled during the submit (memory.submit_rss_mib).
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from batchyard.core.config import load_config
from batchyard.core.job import job_from_dict

from .common import isolated_config, median, storage_of, timed


class PeakRss:
    """Samples this process's RSS every 20 ms while active."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.peak = psutil.Process().memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _inputs(conn: str, n: int) -> str:
    storage = storage_of(conn)
    container = f"sub-{uuid.uuid4().hex[:8]}"
    storage.ensure_container(container)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda i: storage.upload_bytes(container, f"f{i:06d}.txt", b"x"), range(n)))
    return container


def local(conn: str, *, n: int = 10_000, reps: int = 3) -> dict[str, Any]:
    from batchyard.backends.local.backend import LocalBackend

    container = _inputs(conn, n)
    times, peaks = [], []
    for rep in range(reps):
        with tempfile.TemporaryDirectory(prefix="by-bench-submit-") as tmp:
            config = isolated_config(Path(tmp), conn, workers=2)
            backend = LocalBackend(config)
            job = job_from_dict({"id": f"sub-{uuid.uuid4().hex[:6]}", "command": "true {input}",
                                 "inputs": {"container": container}}, base_dir=Path(tmp))
            backend.store.ensure()
            with PeakRss() as rss:
                seconds, result = timed(lambda: backend.submit(job))  # noqa: B023
            assert result.enqueued == n, result
            times.append(seconds)
            peaks.append(rss.peak / 2**20)
            print(f"  submit local rep {rep + 1}/{reps}: {seconds:.2f} s, peak RSS {peaks[-1]:.0f} MiB", flush=True)
    return {"tasks": n, "seconds": round(median(times), 3), "runs_s": [round(t, 3) for t in times],
            "tasks_per_s": round(n / median(times), 1), "peak_rss_mib": round(max(peaks), 1)}


def azure_emulator(conn: str, *, n: int = 10_000, reps: int = 3) -> dict[str, Any] | None:
    try:
        from batchyard.backends.azure.backend import AzureBackend
        from batchyard.emulator.batch import BatchEmulator
    except ImportError as exc:
        print(f"  submit azure: skipped ({exc})")
        return None
    container = _inputs(conn, n)
    times = []
    for rep in range(reps):
        with tempfile.TemporaryDirectory(prefix="by-bench-azsubmit-") as tmp:
            root = Path(tmp)
            with BatchEmulator(storage_connection_string=conn, data_dir=root / "emu") as emu:
                isolated_config(root, conn, workers=2)
                # A pool with no nodes: the emulator queues the tasks and runs none, so only submit is timed.
                text = (root / "batchyard.toml").read_text() + '[azure]\npool_id = "bench-empty"\n' \
                    '[azure.pool]\ndedicated_nodes = 0\n'
                (root / "batchyard.toml").write_text(text)
                config = load_config(root / "batchyard.toml", backend="azure", env=config_env(conn, root, emu))
                backend = AzureBackend(config)
                job = job_from_dict({"id": f"asub-{uuid.uuid4().hex[:6]}", "command": "true {input}",
                                     "inputs": {"container": container}}, base_dir=root)
                seconds, result = timed(lambda: backend.submit(job))  # noqa: B023
                assert result.enqueued == n, result
                times.append(seconds)
                backend.close()
                print(f"  submit azure(emulator) rep {rep + 1}/{reps}: {seconds:.2f} s", flush=True)
    return {"tasks": n, "seconds": round(median(times), 3), "runs_s": [round(t, 3) for t in times],
            "tasks_per_s": round(n / median(times), 1)}


def config_env(conn: str, root: Path, emu: Any) -> dict[str, str]:
    return {"AZURE_STORAGE_CONNECTION_STRING": conn, "BATCHYARD_HOME": str(root / "home"),
            "BATCHYARD_BATCH_URL": emu.url, "BATCHYARD_BATCH_ACCOUNT": emu.account_name,
            "BATCHYARD_BATCH_KEY": emu.account_key}
