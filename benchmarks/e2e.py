"""Tiny tasks end to end, as a user runs them: N files of 1 KiB, ``python up.py IN OUT`` per file.

Three ways over the same files with 2 at a time, alternating, each a process timed from start to exit:

- ``batchyard``: ``batchyard run job.toml --workers 2`` on the local backend, the inputs uploaded from
  ``local_dir`` by that run (a fresh container each time), outputs and logs uploaded;
- the floor: ``xargs -P 2 -n 2 python up.py`` on local disk, no storage;
- Snakemake (``--cores 2``, local disk, no storage), installed by this benchmark into a venv of its
  own under the cache (``$BATCHYARD_CACHE``, default ~/.cache/batchyard): ``pip install snakemake``.

Figures: each one's seconds (median of the repetitions), batchyard's throughput as a fraction of the
floor's, and batchyard's throughput over Snakemake's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .common import UPPER_PY, isolated_config, median

SNAKEFILE = """FILES = glob_wildcards("in/{{name}}.txt").name

rule all:
    input: expand("out/{{name}}.out", name=FILES)

rule up:
    input: "in/{{name}}.txt"
    output: "out/{{name}}.out"
    shell: "{python} up.py {{input}} {{output}}"
"""


def _cache() -> Path:
    return Path(os.environ.get("BATCHYARD_CACHE") or Path.home() / ".cache" / "batchyard") / "bench"


def snakemake_bin() -> Path | None:
    """Snakemake in a venv of its own (installed on first use); None if it cannot be installed."""
    venv = _cache() / "snakemake-venv"
    exe = venv / "bin" / "snakemake"
    if exe.exists():
        return exe
    print("  installing snakemake into its own venv (once) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode == 0:
        made = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "snakemake"],
                              capture_output=True, text=True)
    if made.returncode != 0 or not exe.exists():
        print(f"  snakemake not installed: {made.stderr.strip()[-500:]}", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        return None
    return exe


def _timed(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in ok:
        raise RuntimeError(f"{argv[:3]} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def run(conn: str, *, n: int = 300, reps: int = 3) -> dict[str, Any]:
    snakemake = snakemake_bin()
    with tempfile.TemporaryDirectory(prefix="by-bench-e2e-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        for i in range(n):
            (root / "in" / f"f{i:05d}.txt").write_bytes(bytes([97 + i % 26]) * 1024)
        (root / "up.py").write_text(UPPER_PY, encoding="utf-8")
        (root / "pairs.txt").write_text("".join(f"in/f{i:05d}.txt out/f{i:05d}.out\n" for i in range(n)))
        (root / "Snakefile").write_text(SNAKEFILE.format(python=sys.executable), encoding="utf-8")
        isolated_config(root, conn, workers=2)
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn, "BATCHYARD_HOME": str(root / "home"),
               "BATCHYARD_BACKEND": "local"}
        times: dict[str, list[float]] = {"batchyard": [], "floor": [], "snakemake": []}
        for rep in range(reps):
            for name in ("floor", "batchyard", "snakemake"):
                shutil.rmtree(root / "out", ignore_errors=True)
                (root / "out").mkdir()
                if name == "floor":
                    times[name].append(_timed(["sh", "-c", f"xargs -P 2 -n 2 {sys.executable} up.py < pairs.txt"],
                                              cwd=root))
                elif name == "batchyard":
                    uid = uuid.uuid4().hex[:8]
                    (root / "job.toml").write_text(
                        f'id = "e2e-{uid}"\ncommand = "{sys.executable} up.py {{input}} {{input_stem}}.out"\n'
                        f'[inputs]\ncontainer = "e2e-{uid}"\nlocal_dir = "in"\n'
                        '[[resource_files]]\nsource = "up.py"\n'
                        f'[[outputs]]\npattern = "*.out"\ncontainer = "e2e-{uid}"\npath = "out/"\n',
                        encoding="utf-8")
                    times[name].append(_timed([sys.executable, "-m", "batchyard", "run", "job.toml", "--workers",
                                               "2"], cwd=root, env=env))
                elif snakemake is not None:
                    times[name].append(_timed([str(snakemake), "--cores", "2", "--quiet", "all"], cwd=root))
                    shutil.rmtree(root / ".snakemake", ignore_errors=True)
                if times[name]:
                    print(f"  e2e {n} rep {rep + 1}/{reps}: {name} {times[name][-1]:.2f} s", flush=True)
    out: dict[str, Any] = {"files": n, "reps": reps, "runs_s": {k: [round(t, 3) for t in v] for k, v in times.items()}}
    for name, values in times.items():
        out[f"{name}_s"] = round(median(values), 3) if values else None
    out["ratio_vs_floor"] = round(out["floor_s"] / out["batchyard_s"], 3)
    out["ratio_runs"] = [round(f / b, 3) for f, b in zip(times["floor"], times["batchyard"], strict=True)]
    out["vs_snakemake"] = round(out["snakemake_s"] / out["batchyard_s"], 3) if out["snakemake_s"] else None
    out["snakemake_ratio_vs_floor"] = round(out["floor_s"] / out["snakemake_s"], 3) if out["snakemake_s"] else None
    return out
