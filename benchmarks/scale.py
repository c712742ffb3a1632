"""How each command's cost grows with the job: 1,000 to 100,000 tasks (CSV table, ``true {KEY}``).

Every step is the ``batchyard`` command as a user runs it, a process of its own, timed from start
to exit, its peak RSS and CPU seconds read from the kernel's accounting of that child (``os.wait4``). For
``status --json`` the time to its first byte of output is taken too (it streams).

Local backend (Azurite): ``run --no-wait`` (submit), ``status``, ``status --json``, ``report``,
``cancel``, ``status`` once more (every task cancelled), ``delete``.

Azure backend against the Batch API emulator (a process of its own, on the same Azurite, a pool of
no nodes: tasks are held, none runs): the same commands but ``report``; the emulator's CPU seconds
during each, its RSS once it holds the job's tasks, and its peak.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from .common import ChildPeakRss, isolated_config, start_batch_emulator, stop_process

STEPS = ("submit", "status", "status_json", "report", "cancel", "status_cancelled", "delete")
AZURE_STEPS = ("submit", "status", "status_json", "cancel", "delete")


def command(args: list[str], *, cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Run ``batchyard ARGS``; seconds, peak RSS (MiB) and seconds to the first byte on stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "batchyard", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = ChildPeakRss(proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    first_byte: float | None = None
    out_bytes = 0
    err = b""
    streams = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    while streams:
        ready, _, _ = select.select(list(streams), [], [])
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                del streams[fd]
            elif streams[fd] == "out":
                if first_byte is None:
                    first_byte = time.perf_counter() - start
                out_bytes += len(chunk)
            else:
                err += chunk
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # 1: the job has failed or cancelled tasks, as the command says
        raise RuntimeError(f"batchyard {' '.join(args)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return {"s": round(seconds, 3), "rss_mib": peak.stop(),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "first_byte_s": round(first_byte, 3) if first_byte is not None else None, "out_bytes": out_bytes}


def _job_files(root: Path, n: int, prefix: str) -> str:
    (root / "tasks.csv").write_text("KEY\n" + "".join(f"k{i:06d}\n" for i in range(n)), encoding="utf-8")
    job_id = f"{prefix}{n}-{uuid.uuid4().hex[:6]}"
    (root / "job.toml").write_text(f'id = "{job_id}"\ncommand = "true {{KEY}}"\ntasks = "tasks.csv"\n',
                                   encoding="utf-8")
    return job_id


def _argv(job_id: str, root: Path) -> dict[str, list[str]]:
    return {"submit": ["run", "job.toml", "--no-wait"], "status": ["status", job_id],
            "status_json": ["status", job_id, "--json"],
            "report": ["report", job_id, "--out", str(root / "report")], "cancel": ["cancel", job_id],
            "status_cancelled": ["status", job_id], "delete": ["delete", job_id]}


def local(conn: str, *, n: int) -> dict[str, Any]:
    """One n-task job on the local backend through every command (no worker runs: the commands
    are timed against a job of n tasks, as a user's submitted job before and after cancel)."""
    with tempfile.TemporaryDirectory(prefix="by-bench-scale-") as tmp:
        root = Path(tmp)
        isolated_config(root, conn, workers=2)
        job_id = _job_files(root, n, "scale")
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn, "BATCHYARD_HOME": str(root / "home"),
               "BATCHYARD_BACKEND": "local"}
        argv = _argv(job_id, root)
        out: dict[str, Any] = {"tasks": n}
        for step in STEPS:
            out[step] = command(argv[step], cwd=root, env=env)
            print(f"  local {n}: {step:<17} {out[step]['s']:8.2f} s  {out[step]['rss_mib']:7.1f} MiB"
                  + (f"  first byte {out[step]['first_byte_s']} s" if step == "status_json" else ""), flush=True)
        return out


def azure_emulator(conn: str, *, n: int) -> dict[str, Any]:
    """One n-task job through the azure backend to the Batch API emulator (a pool of no nodes)."""
    with tempfile.TemporaryDirectory(prefix="by-bench-azscale-") as tmp:
        root = Path(tmp)
        isolated_config(root, conn, workers=2)
        with (root / "batchyard.toml").open("a", encoding="utf-8") as toml:
            toml.write(f'[azure]\npool_id = "scale-{uuid.uuid4().hex[:6]}"\n[azure.pool]\ndedicated_nodes = 0\n')
        job_id = _job_files(root, n, "azscale")
        proc, ready, key = start_batch_emulator(conn, root)
        try:
            env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn, "BATCHYARD_HOME": str(root / "home"),
                   "BATCHYARD_BACKEND": "azure", "BATCHYARD_BATCH_URL": ready["url"],
                   "BATCHYARD_BATCH_ACCOUNT": ready["account_name"], "BATCHYARD_BATCH_KEY": key}
            argv = _argv(job_id, root)
            emulator = psutil.Process(proc.pid)
            out: dict[str, Any] = {"tasks": n, "emulator_idle_rss_mib": round(emulator.memory_info().rss / 2**20, 1)}
            for step in AZURE_STEPS:
                before = emulator.cpu_times()
                out[step] = command(argv[step], cwd=root, env=env)
                after = emulator.cpu_times()
                out[step]["emulator_cpu_s"] = round(after.user + after.system - before.user - before.system, 2)
                out[step]["load_average"] = round(os.getloadavg()[0], 2)
                if step == "submit":
                    out["emulator_rss_holding_tasks_mib"] = round(emulator.memory_info().rss / 2**20, 1)
                    out["counts_call_s"] = _counts_call(root, env, job_id)
                print(f"  azure->emulator {n}: {step:<17} {out[step]['s']:8.2f} s  {out[step]['rss_mib']:7.1f} MiB",
                      flush=True)
            out["emulator_peak_rss_mib"] = round(_peak_rss(proc.pid) / 1024, 1)
            print(f"  azure->emulator {n}: emulator holding the tasks {out['emulator_rss_holding_tasks_mib']} MiB, "
                  f"peak {out['emulator_peak_rss_mib']} MiB", flush=True)
            return out
        finally:
            stop_process(proc)


def _counts_call(root: Path, env: dict[str, str], job_id: str) -> float:
    """Seconds of the backend's counts (Batch's job task-counts call), what ``status --watch`` polls."""
    from batchyard.backends import get_backend
    from batchyard.core.config import load_config

    config = load_config(root / "batchyard.toml", backend="azure", env=env)
    with get_backend("azure", config) as backend:
        backend.task_counts(job_id)  # the first call also reads the job's run chain
        start = time.perf_counter()
        counts = backend.task_counts(job_id)
        seconds = time.perf_counter() - start
    assert counts.total > 0, counts
    print(f"  azure->emulator: task counts {counts.to_dict()} in {seconds:.3f} s", flush=True)
    return round(seconds, 3)


def _peak_rss(pid: int) -> int:
    """A live process's peak RSS in KiB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run(conn: str, *, sizes: list[int], backends: tuple[str, ...] = ("local", "azure_emulator")) -> dict[str, Any]:
    steps = {"local": local, "azure_emulator": azure_emulator}
    return {backend: {str(n): steps[backend](conn, n=n) for n in sizes} for backend in backends}


def main() -> int:
    """``python -m benchmarks.scale --sizes 100000 --backends azure_emulator``: some sizes and backends
    alone, the figures as JSON (``latest.json`` is left as it is: ``make bench`` writes it)."""
    import argparse

    from .common import azurite

    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--sizes", default="1000,10000", help="job sizes, comma-separated")
    parser.add_argument("--backends", default="local,azure_emulator", help="local, azure_emulator (comma-separated)")
    parser.add_argument("--out", type=Path, help="write the JSON there (default: stdout, after the progress lines)")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = [round(x, 2) for x in os.getloadavg()]
    with azurite() as conn:
        figures = run(conn, sizes=[int(n) for n in args.sizes.split(",")], backends=tuple(args.backends.split(",")))
    text = json.dumps({"started": started, "load_average_at_start": load, "scale": figures}, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
