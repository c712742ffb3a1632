"""Issue #20's local submit: ``batchyard run job.toml --no-wait`` of an n-task job (a CSV table,
``true {KEY}``), on a fresh Azurite of its own, each repetition a new job in an isolated config.

For each run: wall seconds, the command's own CPU (user + system, from ``os.wait4``) and peak RSS,
Azurite's CPU over the same span (``psutil``), the queue messages the job's queue holds after it,
and the load average before it. ``--profile DIR`` writes a cProfile of each run there.
``--tree NAME=DIR`` (repeatable) runs the command of another checkout too (DIR on PYTHONPATH),
each repetition going through every tree in turn on the same Azurite: a before/after comparison
made in one session.

    .venv/bin/python -m benchmarks.big_submit --n 100000 --reps 3
    .venv/bin/python -m benchmarks.big_submit --n 100000 --reps 3 --tree before=/tmp/base --tree after=.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from .common import ChildPeakRss, isolated_config


def one(conn: str, azurite_pid: int | None, *, n: int, profile: Path | None,
        tree: tuple[str, Path] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="by-bench-bigsubmit-") as tmp:
        root = Path(tmp)
        config = isolated_config(root, conn, workers=2)
        (root / "tasks.csv").write_text("KEY\n" + "".join(f"k{i:06d}\n" for i in range(n)), encoding="utf-8")
        job_id = f"big{n}-{uuid.uuid4().hex[:6]}"
        (root / "job.toml").write_text(f'id = "{job_id}"\ncommand = "true {{KEY}}"\ntasks = "tasks.csv"\n',
                                       encoding="utf-8")
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn, "BATCHYARD_HOME": str(root / "home"),
               "BATCHYARD_BACKEND": "local"}
        if tree is not None:
            env["PYTHONPATH"] = str(tree[1].resolve())
        prof = ["-m", "cProfile", "-o", str(profile / f"submit-{n}-{job_id}.prof")] if profile else []
        azurite = psutil.Process(azurite_pid) if azurite_pid else None
        load = os.getloadavg()
        before = azurite.cpu_times() if azurite else None
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *prof, "-m", "batchyard", "run", "job.toml", "--no-wait"],
                                cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = ChildPeakRss(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        err = proc.stderr.read().decode() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"submit failed: {err[-2000:]}")
        out: dict[str, Any] = {
            **({"tree": tree[0]} if tree else {}),
            "tasks": n, "s": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "rss_mib": peak.stop(), "load_1m": round(load[0], 2)}
        if azurite and before:
            after = azurite.cpu_times()
            out["azurite_cpu_s"] = round(after.user + after.system - before.user - before.system, 2)
        out["messages"] = _queued(conn, config, job_id)
        return out


def _queued(conn: str, config: Any, job_id: str) -> int | None:
    from batchyard.backends.local.store import JobStore
    from batchyard.storage.account import Storage

    store = JobStore(Storage.from_connection_string(conn), config)
    queue = (store.get_job_entity(job_id) or {}).get("queue")
    if not queue:
        return None
    return int(store.queue_client(queue).get_queue_properties().approximate_message_count)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.big_submit")
    parser.add_argument("--n", type=int, action="append", help="tasks (repeatable; default 100000)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="write a cProfile of each submit into this directory")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                        help="also time the checkout in DIR (on PYTHONPATH), in turn with the others")
    args = parser.parse_args()
    trees: list[tuple[str, Path] | None] = [(name, Path(path)) for name, _, path in
                                            (t.partition("=") for t in args.tree)] or [None]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    from batchyard.emulator.azurite import start_ephemeral

    results = []
    with tempfile.TemporaryDirectory(prefix="by-bench-azurite-") as tmp:
        instance, stop = start_ephemeral(Path(tmp))
        try:
            for n in args.n or [100_000]:
                for _ in range(args.reps):
                    for tree in trees:
                        result = one(instance.connection_string(), instance.pid, n=n, profile=args.profile, tree=tree)
                        print(json.dumps(result), flush=True)
                        results.append(result)
        finally:
            stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
