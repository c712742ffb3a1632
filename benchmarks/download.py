"""Issue #20 on the local backend: running all tasks of a job, then ``batchyard download`` of its
outputs against the raw Azure Storage SDK's parallel download of the same blobs.

One n-task job (a CSV table; each task writes one 1-KiB file ``out-<KEY>.txt``, its bytes ``<KEY>``
repeated, so every file differs), in an isolated configuration on an Azurite of the benchmark's own:

1. ``batchyard run job.toml --workers 2``, a process of its own, timed start to exit (tasks per
   second = n / wall seconds, submit included); every batchyard process under it (the command and its
   workers: python processes, not the tasks' ``sh``/``head``) sampled with psutil every 0.2 s, the max
   RSS reported per process and overall; the command's own peak RSS (its VmHWM, ``common.ChildPeakRss``) too.
2. ``batchyard download JOB DEST`` and the raw baseline, each a process of its own, timed start to
   exit (so both pay an interpreter's start): the baseline lists the job's output blobs with
   azure-storage-blob's ``ContainerClient.list_blobs`` and downloads them with a ``ThreadPoolExecutor``
   of 8, 16 and 32 threads; the fastest is the baseline. ``--reps`` rounds, in turn.
3. Every destination holds the same n files with the same bytes (checked).

    .venv/bin/python -m benchmarks.download --n 2000
    .venv/bin/python -m benchmarks.download --n 2000 --n 10000 --reps 2 --out results.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from .common import ChildPeakRss, azurite, emit_json, isolated_config

THREADS = (8, 16, 32)
CONTAINER = "bench-out"


class RssSampler(threading.Thread):
    """Max RSS of a process and of every python descendant of it, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    if "python" not in proc.name().lower() and proc.pid != self.pid:
                        continue
                    rss = proc.memory_info().rss
                    role = "run" if proc.pid == self.pid else "worker"
                except psutil.Error:
                    continue
                if rss > self.peaks.get(proc.pid, ("", 0))[1]:
                    self.peaks[proc.pid] = (role, rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._halt.set()
        self.join()
        by_role: dict[str, float] = {}
        for role, rss in self.peaks.values():
            by_role[role] = max(by_role.get(role, 0.0), round(rss / 2**20, 1))
        return {"processes": len(self.peaks), "samples": self.samples, "max_rss_mib_by_role": by_role,
                "max_rss_mib": max(by_role.values(), default=0.0)}


def timed_process(argv: list[str], *, cwd: Path, env: dict[str, str], sample: bool = False) -> dict[str, Any]:
    """Run argv; wall seconds, CPU, its own peak RSS (:class:`ChildPeakRss`), load before, and the psutil samples."""
    load = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = ChildPeakRss(proc.pid)
    sampler = RssSampler(proc.pid) if sample else None
    if sampler:
        sampler.start()
    assert proc.stdout is not None
    output = proc.stdout.read()  # drained as it comes, so the pipe never blocks the command
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:5])} exited {code}: {output.decode(errors='replace')[-2000:]}")
    out: dict[str, Any] = {"s": round(seconds, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                           "rss_mib": peak.stop(), "load_1m": round(load[0], 2),
                           "tail": output.decode(errors="replace").strip().splitlines()[-1:]}
    if sampler:
        out["sampled"] = sampler.stop()
    return out


def make_job(root: Path, n: int) -> str:
    (root / "tasks.csv").write_text("KEY\n" + "".join(f"k{i:06d}\n" for i in range(n)), encoding="utf-8")
    job_id = f"dl{n}-{uuid.uuid4().hex[:6]}"
    (root / "job.toml").write_text(
        f'id = "{job_id}"\n'
        "command = \"sh -c 'yes {KEY} | head -c 1024 > out-{KEY}.txt'\"\n"
        'tasks = "tasks.csv"\n'
        "[[outputs]]\n"
        'pattern = "out-*.txt"\n'
        f'container = "{CONTAINER}"\n'
        'path = "{job_id}/"\n', encoding="utf-8")
    return job_id


def digest_tree(folder: Path) -> dict[str, str]:
    """{path relative to folder: sha256} of every file under it."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def one(conn: str, *, n: int, reps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="by-bench-download-") as tmp:
        root = Path(tmp)
        isolated_config(root, conn, workers=2)
        job_id = make_job(root, n)
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn, "BATCHYARD_HOME": str(root / "home"),
               "BATCHYARD_BACKEND": "local"}
        by = [sys.executable, "-m", "batchyard"]
        out: dict[str, Any] = {"tasks": n, "job": job_id}
        run = timed_process([*by, "run", "job.toml", "--workers", "2"], cwd=root, env=env, sample=True)
        run["tasks_per_s"] = round(n / run["s"], 1)
        out["run"] = run
        print(f"  {n}: run {run['s']:.1f} s = {run['tasks_per_s']} tasks/s (load {run['load_1m']}), max RSS "
              f"{run['sampled']['max_rss_mib_by_role']} MiB; {run['tail']}", flush=True)
        raw_env = {**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        rounds: list[dict[str, Any]] = []
        reference: dict[str, str] | None = None
        for rep in range(reps):
            row: dict[str, Any] = {}
            dest = root / f"by-{rep}"
            row["batchyard"] = timed_process([*by, "download", job_id, str(dest)], cwd=root, env=env)
            got = digest_tree(dest / CONTAINER)
            reference = reference or got
            assert len(got) == n and got == reference, (len(got), n)
            for threads in THREADS:
                raw_dest = root / f"raw-{threads}-{rep}"
                row[f"raw_{threads}"] = timed_process(
                    [sys.executable, "-m", "benchmarks.download", "--raw", CONTAINER, f"{job_id}/", str(raw_dest),
                     str(threads)], cwd=root, env=raw_env)
                assert digest_tree(raw_dest) == reference, f"raw download at {threads} threads differs"
            print(f"  {n}: round {rep + 1}: batchyard download {row['batchyard']['s']:.2f} s (load "
                  f"{row['batchyard']['load_1m']}); raw " + ", ".join(
                      f"{t} threads {row[f'raw_{t}']['s']:.2f} s" for t in THREADS), flush=True)
            rounds.append(row)
        out["downloads"] = rounds
        best_by = min(r["batchyard"]["s"] for r in rounds)
        best_threads = min(THREADS, key=lambda t: min(r[f"raw_{t}"]["s"] for r in rounds))
        best_raw = min(r[f"raw_{best_threads}"]["s"] for r in rounds)
        out["summary"] = {
            "tasks_per_s": run["tasks_per_s"], "max_rss_mib": run["sampled"]["max_rss_mib"],
            "batchyard_download_s": best_by, "batchyard_files_per_s": round(n / best_by, 1),
            "raw_threads": best_threads, "raw_download_s": best_raw, "raw_files_per_s": round(n / best_raw, 1),
            "ratio": round(best_raw / best_by, 3), "files_verified": n}
        print(f"  {n}: {json.dumps(out['summary'])}", flush=True)
        return out


def raw_download(container: str, prefix: str, dest: Path, threads: int) -> int:
    """The baseline: list the blobs under prefix, download them on ``threads`` threads into dest."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import ContainerClient

    session = requests.Session()  # a connection per thread (requests' default pool keeps 10)
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=threads))
    client = ContainerClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"], container,
        transport=RequestsTransport(session=session, session_owner=False))
    names = [b.name for b in client.list_blobs(name_starts_with=prefix)]
    made: set[Path] = set()
    for name in names:
        parent = (dest / name).parent
        if parent not in made:
            parent.mkdir(parents=True, exist_ok=True)
            made.add(parent)

    def fetch(name: str) -> None:
        (dest / name).write_bytes(client.download_blob(name).readall())

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fetch, names):
            pass
    print(f"{len(names)} blob(s) downloaded")
    return 0


def run_all(*, sizes: list[int], reps: int) -> dict[str, Any]:
    """:func:`one` for each size, each on a fresh Azurite (its look-ups cost more the more it holds):
    the figures by size, and the largest job's tasks per second over the smallest's."""
    results: dict[str, Any] = {}
    for n in sizes:
        with azurite() as conn:
            results[str(n)] = one(conn, n=n, reps=reps)
    rates = [results[str(n)]["summary"]["tasks_per_s"] for n in sizes]
    return {"sizes": results, "tasks_per_s_vs_smallest": round(rates[-1] / rates[0], 3) if len(rates) > 1 else None}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.download")
    parser.add_argument("--n", type=int, action="append", help="tasks (repeatable; default 2000)")
    parser.add_argument("--reps", type=int, default=2, help="download rounds (batchyard, then raw at 8/16/32)")
    parser.add_argument("--out", type=Path, help="also write the JSON there")
    parser.add_argument("--raw", nargs=4, metavar=("CONTAINER", "PREFIX", "DEST", "THREADS"),
                        help=argparse.SUPPRESS)  # the baseline, run as a process of its own
    args = parser.parse_args()
    if args.raw:
        container, prefix, dest, threads = args.raw
        return raw_download(container, prefix, Path(dest), int(threads))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results = run_all(sizes=args.n or [2000], reps=args.reps)
    return emit_json({"started": started, "cores": os.cpu_count(), **results}, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
