"""Tiny tasks: N files of 1 KiB, one `python3 up.py IN OUT` per file.

The floor is a `multiprocess` pool running the same command over the same files on local disk
(no storage) with the same worker count. The backend figure is end to end: submit (records +
messages) until every task is recorded, with outputs and logs uploaded.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from batchyard.backends.local.backend import LocalBackend
from batchyard.core.job import job_from_dict

from .common import UPPER_PY, isolated_config, median, storage_of, timed


def _floor_one(args: tuple[str, str, str]) -> int:
    script, src, dst = args
    return subprocess.run([sys.executable, script, src, dst], check=False).returncode


def floor(files: list[Path], out_dir: Path, script: Path, workers: int) -> float:
    import multiprocess

    jobs = [(str(script), str(f), str(out_dir / f"{f.stem}.out")) for f in files]
    with multiprocess.get_context("fork").Pool(workers) as pool:
        seconds, codes = timed(lambda: pool.map(_floor_one, jobs, chunksize=1))
    assert not any(codes)
    return seconds


def backend_once(conn: str, root: Path, container: str, n: int, workers: int) -> tuple[float, float]:
    config = isolated_config(root, conn, workers=workers)
    (root / "up.py").write_text(UPPER_PY, encoding="utf-8")
    job = job_from_dict({
        "id": f"tiny-{uuid.uuid4().hex[:6]}", "command": f"{sys.executable} up.py {{input}} {{input_stem}}.out",
        "inputs": {"container": container, "prefix": "in/"}, "resource_files": [{"source": "up.py"}],
        "outputs": [{"pattern": "*.out", "container": container, "path": "out/{job_id}/"}],
    }, base_dir=root)
    backend = LocalBackend(config)

    peak = [0]

    def sample(_counts: Any) -> None:  # worker RSS, sampled at each progress poll
        for proc in backend._procs:
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], psutil.Process(proc.pid).memory_info().rss)

    def go() -> Any:  # as `batchyard run` does it: the default polling of Backend.wait
        backend.submit(job)
        return backend.run_to_end(job, workers=workers, on_progress=sample)

    seconds, counts = timed(go)
    assert counts.succeeded == n, counts
    backend.close()
    # Azurite's blob look-ups slow down with the number of blobs in the account (a 1 KiB get
    # costs 0.9 ms of its CPU at 2,000 blobs, 2.7 ms at 8,000): each repetition starts with
    # only the inputs, as the floor starts each one with an empty output folder.
    storage = storage_of(conn)
    names = list(storage.list_blob_names(container, f"out/{job.id}/"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(storage.container(container).delete_blob, names))
    return seconds, peak[0] / 2**20


def run(conn: str, *, n: int = 2000, workers: int = 2, reps: int = 3) -> dict[str, Any]:
    storage = storage_of(conn)
    container = f"tiny-{uuid.uuid4().hex[:8]}"
    storage.ensure_container(container)
    payload = (b"hello batchyard " * 64)[:1024]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: storage.upload_bytes(container, f"in/f{i:05d}.txt", payload), range(n)))
    floors: list[float] = []
    backends: list[float] = []
    worker_rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="by-bench-tiny-") as tmp:
        base = Path(tmp)
        files = []
        (base / "in").mkdir()
        for i in range(n):
            path = base / "in" / f"f{i:05d}.txt"
            path.write_bytes(payload)
            files.append(path)
        script = base / "up.py"
        script.write_text(UPPER_PY, encoding="utf-8")
        for rep in range(reps):
            out = base / f"out{rep}"
            out.mkdir()
            floors.append(floor(files, out, script, workers))
            root = base / f"run{rep}"
            root.mkdir()
            seconds, rss = backend_once(conn, root, container, n, workers)
            backends.append(seconds)
            worker_rss.append(rss)
            print(f"  tiny rep {rep + 1}/{reps}: floor {floors[-1]:.2f} s, backend {backends[-1]:.2f} s", flush=True)
    f, b = median(floors), median(backends)
    return {
        "tasks": n, "workers": workers, "reps": reps,
        "floor_s": round(f, 3), "backend_s": round(b, 3),
        "tasks_per_s": round(n / b, 1), "floor_tasks_per_s": round(n / f, 1),
        "ratio_vs_floor": round((n / b) / (n / f), 3),
        "overhead_ms_per_task": round((b - f) / n * 1000, 2),
        "worker_peak_rss_mib": round(max(worker_rss), 1),
        "floor_runs_s": [round(x, 3) for x in floors], "backend_runs_s": [round(x, 3) for x in backends],
        # Each repetition's own ratio (its floor and backend ran back to back): how much of the
        # spread is the machine drifting between repetitions. The headline uses the medians.
        "ratio_runs": [round(f_ / b_, 3) for f_, b_ in zip(floors, backends, strict=True)],
    }
