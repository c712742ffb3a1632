"""How each command's cost grows with the job: 1,000 to 100,000 tasks (CSV table, ``true {KEY}``).

Every step is the ``batchyard`` command as a user runs it, a process of its own, timed from start
to exit, its peak RSS read from the kernel's accounting of that child (``os.wait4``). For
``status --json`` the time to its first byte of output is taken too (it streams).

Local backend (Azurite): ``run --no-wait`` (submit), ``status``, ``status --json``, ``report``,
``cancel``, ``status`` once more (every task cancelled), ``delete``.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .common import isolated_config

STEPS = ("submit", "status", "status_json", "report", "cancel", "status_cancelled", "delete")


def command(args: list[str], *, cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Run ``batchyard ARGS``; seconds, peak RSS (MiB) and seconds to the first byte on stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "batchyard", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    return {"s": round(seconds, 3), "rss_mib": round(usage.ru_maxrss / 1024, 1),
            "first_byte_s": round(first_byte, 3) if first_byte is not None else None, "out_bytes": out_bytes}


def local(conn: str, *, n: int) -> dict[str, Any]:
    """One n-task job on the local backend through every command (no worker runs: the commands
    are timed against a job of n tasks, as a user's submitted job before and after cancel)."""
    with tempfile.TemporaryDirectory(prefix="by-bench-scale-") as tmp:
        root = Path(tmp)
        isolated_config(root, conn, workers=2)
        (root / "tasks.csv").write_text("KEY\n" + "".join(f"k{i:06d}\n" for i in range(n)), encoding="utf-8")
        job_id = f"scale{n}-{uuid.uuid4().hex[:6]}"
        (root / "job.toml").write_text(f'id = "{job_id}"\ncommand = "true {{KEY}}"\ntasks = "tasks.csv"\n',
                                       encoding="utf-8")
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn, "BATCHYARD_HOME": str(root / "home"),
               "BATCHYARD_BACKEND": "local"}
        env.pop("BATCHYARD_CONFIG", None)
        argv = {"submit": ["run", "job.toml", "--no-wait"], "status": ["status", job_id],
                "status_json": ["status", job_id, "--json"],
                "report": ["report", job_id, "--out", str(root / "report")], "cancel": ["cancel", job_id],
                "status_cancelled": ["status", job_id], "delete": ["delete", job_id]}
        out: dict[str, Any] = {"tasks": n}
        for step in STEPS:
            out[step] = command(argv[step], cwd=root, env=env)
            print(f"  local {n}: {step:<17} {out[step]['s']:8.2f} s  {out[step]['rss_mib']:7.1f} MiB"
                  + (f"  first byte {out[step]['first_byte_s']} s" if step == "status_json" else ""), flush=True)
        return out


def run(conn: str, *, sizes: list[int]) -> dict[str, Any]:
    return {"local": {str(n): local(conn, n=n) for n in sizes}}
