"""Issue #20's local submit: ``batchyard run job.toml --no-wait`` of an n-task job (a CSV table,
``true {KEY}``), on a fresh Azurite of its own, each repetition a new job in an isolated config.

For each run: wall seconds, the command's own CPU (user + system, from ``os.wait4``) and peak RSS,
Azurite's CPU over the same span (``psutil``), the queue messages the job's queue holds after it,
and the load average before it. ``--profile DIR`` writes a cProfile of each run there.
``--tree NAME=DIR`` (repeatable) runs the command of another checkout too (DIR on PYTHONPATH),
each repetition going through every tree in turn on the same Azurite: a before/after comparison
made in one session.

``--run-all`` runs every task instead (``batchyard run job.toml --workers 2``, the submit
included), each run on an Azurite of its own, so a run finds the storage as a new user's first run
does; tasks per second is n over the wall seconds. This is issue #20's "running all tasks" of the
``true {KEY}`` job, whose tasks write no blob: what grows with n is the table's rows.

    .venv/bin/python -m benchmarks.big_submit --n 100000 --reps 3
    .venv/bin/python -m benchmarks.big_submit --n 100000 --reps 3 --tree before=/tmp/base --tree after=.
    .venv/bin/python -m benchmarks.big_submit --run-all --n 2000 --n 20000 --tree before=/tmp/base --tree after=.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from .common import ChildPeakRss, isolated_config
from .download import RssSampler


def one(conn: str, azurite_pid: int | None, *, n: int, profile: Path | None,
        tree: tuple[str, Path] | None = None, run_all: bool = False) -> dict[str, Any]:
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
        how = ["--workers", "2"] if run_all else ["--no-wait"]
        proc = subprocess.Popen([sys.executable, *prof, "-m", "batchyard", "run", "job.toml", *how],
                                cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = ChildPeakRss(proc.pid)
        sampler = RssSampler(proc.pid) if run_all else None  # the command and its workers
        if sampler:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        err = proc.stderr.read().decode() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"submit failed: {err[-2000:]}")
        out: dict[str, Any] = {
            **({"tree": tree[0]} if tree else {}),
            "tasks": n, "s": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "rss_mib": peak.stop(), "load_1m": round(load[0], 2)}
        if sampler:
            out["tasks_per_s"] = round(n / seconds, 1)
            out["sampled"] = sampler.stop()
        if azurite and before:
            after = azurite.cpu_times()
            out["azurite_cpu_s"] = round(after.user + after.system - before.user - before.system, 2)
        if not run_all:
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
    parser.add_argument("--run-all", action="store_true",
                        help="run every task (--workers 2), each run on an Azurite of its own")
    args = parser.parse_args()
    trees: list[tuple[str, Path] | None] = [(name, Path(path)) for name, _, path in
                                            (t.partition("=") for t in args.tree)] or [None]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    runs = [(n, tree) for n in args.n or [100_000] for _ in range(args.reps) for tree in trees]
    with contextlib.ExitStack() as shared:
        instance = None if args.run_all else shared.enter_context(_azurite())
        for n, tree in runs:
            with contextlib.ExitStack() as own:
                azurite = instance or own.enter_context(_azurite())
                result = one(azurite.connection_string(), azurite.pid, n=n, profile=args.profile, tree=tree,
                             run_all=args.run_all)
            print(json.dumps(result), flush=True)
    return 0


def run_all(sizes: list[int]) -> dict[str, Any]:
    """``make bench``'s part of it: every task of the ``true {KEY}`` job run, each size on an Azurite of
    its own; the figures by size, and the largest job's tasks per second over the smallest's."""
    results: dict[str, Any] = {}
    for n in sizes:
        with _azurite() as instance:
            results[str(n)] = one(instance.connection_string(), instance.pid, n=n, profile=None, run_all=True)
    rates = [results[str(n)]["tasks_per_s"] for n in sizes]
    return {"sizes": results, "tasks_per_s_vs_smallest": round(rates[-1] / rates[0], 3) if len(rates) > 1 else None}


@contextlib.contextmanager
def _azurite() -> Iterator[Any]:
    from batchyard.emulator.azurite import start_ephemeral

    with tempfile.TemporaryDirectory(prefix="by-bench-azurite-") as tmp:
        instance, stop = start_ephemeral(Path(tmp))
        try:
            yield instance
        finally:
            stop()


if __name__ == "__main__":
    raise SystemExit(main())
