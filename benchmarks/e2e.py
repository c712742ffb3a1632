"""Tiny tasks end to end, as a user runs them: N files of 1 KiB, ``python up.py IN OUT`` per file.

Four ways over the same files with 2 at a time, alternating, each a process timed from start to exit:

- ``batchyard``: ``batchyard run job.toml --workers 2`` on the local backend, the inputs uploaded from
  ``local_dir`` by that run (a fresh container each time), outputs and logs uploaded;
- ``azure_emulator``: the same ``batchyard run job.toml`` on the azure backend, to the Batch API
  emulator (a process of its own, started once) with a pool of 1 node x 2 slots made before the first
  repetition (a user's standing pool): the same upload, SAS URLs, add-collection, the node staging
  each input and uploading each output and log, polling of the job's counts, the run's end;
- the floor: ``xargs -P 2 -n 2 python up.py`` on local disk, no storage;
- the storage floor (``raw_storage``, :mod:`benchmarks.e2e_raw`): the same commands, 2 at a time, each
  file's input put, got back and its output put with the raw SDK and nothing else (no queue, table,
  record or log): what storage alone costs on this machine, whatever the tool;
- Snakemake (``--cores 2``, local disk, no storage), installed by this benchmark into a venv of its
  own under the cache (``$BATCHYARD_CACHE``, default ~/.cache/batchyard): ``pip install snakemake``.

Figures: each one's seconds (median of the repetitions), batchyard's throughput as a fraction of the
floor's (``ratio_vs_floor``; ``azure_emulator_ratio_vs_floor`` for the azure backend), and
batchyard's throughput over Snakemake's.
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

from batchyard.storage.account import Storage

from .common import UPPER_PY, isolated_config, median, start_batch_emulator, stop_process, storage_of

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


def _standing_pool(ready: dict[str, Any], key: str, pool_id: str, *, timeout_s: float = 120.0) -> None:
    """A pool of 1 node x 2 slots on the emulator, its node idle (made before any run is timed)."""
    from azure.batch import BatchClient
    from azure.batch import models as bm
    from azure.core.credentials import AzureNamedKeyCredential

    client = BatchClient(ready["url"], AzureNamedKeyCredential(ready["account_name"], key))
    client.create_pool(bm.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1, task_slots_per_node=2,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server"),
            node_agent_sku_id="batch.node.ubuntu 24.04")))
    deadline = time.monotonic() + timeout_s
    while [str(n.state) for n in client.list_nodes(pool_id)] != ["BatchNodeState.IDLE"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pool {pool_id}: its node is not idle after {timeout_s:.0f} s")
        time.sleep(0.2)


def _job_toml(root: Path, uid: str) -> None:
    (root / "job.toml").write_text(
        f'id = "e2e-{uid}"\ncommand = "{sys.executable} up.py {{input}} {{input_stem}}.out"\n'
        f'[inputs]\ncontainer = "e2e-{uid}"\nlocal_dir = "in"\n'
        '[[resource_files]]\nsource = "up.py"\n'
        f'[[outputs]]\npattern = "*.out"\ncontainer = "e2e-{uid}"\npath = "out/"\n',
        encoding="utf-8")


def run(conn: str, *, n: int = 300, reps: int = 3, azure: bool = True) -> dict[str, Any]:
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
        emulator = start_batch_emulator(conn, root) if azure else None
        try:
            if emulator is not None:
                _, ready, key = emulator
                pool_id = f"e2e-{uuid.uuid4().hex[:8]}"
                _standing_pool(ready, key, pool_id)
                with (root / "batchyard.toml").open("a", encoding="utf-8") as toml:
                    toml.write(f'[azure]\npool_id = "{pool_id}"\n')
                azure_env = {**env, "BATCHYARD_BACKEND": "azure", "BATCHYARD_BATCH_URL": ready["url"],
                             "BATCHYARD_BATCH_ACCOUNT": ready["account_name"], "BATCHYARD_BATCH_KEY": key}
            times = _repetitions(root, env, azure_env if emulator is not None else None, snakemake, n=n, reps=reps,
                                 storage=storage_of(conn))
        finally:
            if emulator is not None:
                stop_process(emulator[0])
    out: dict[str, Any] = {"files": n, "reps": reps, "runs_s": {k: [round(t, 3) for t in v] for k, v in times.items()}}
    for name, values in times.items():
        out[f"{name}_s"] = round(median(values), 3) if values else None
    out["ratio_vs_floor"] = round(out["floor_s"] / out["batchyard_s"], 3)
    out["ratio_runs"] = [round(f / b, 3) for f, b in zip(times["floor"], times["batchyard"], strict=True)]
    out["vs_snakemake"] = round(out["snakemake_s"] / out["batchyard_s"], 3) if out["snakemake_s"] else None
    out["raw_storage_ratio_vs_floor"] = round(out["floor_s"] / out["raw_storage_s"], 3)
    out["vs_raw_storage"] = round(out["raw_storage_s"] / out["batchyard_s"], 3)
    out["snakemake_ratio_vs_floor"] = round(out["floor_s"] / out["snakemake_s"], 3) if out["snakemake_s"] else None
    if times["azure_emulator"]:
        out["azure_emulator_ratio_vs_floor"] = round(out["floor_s"] / out["azure_emulator_s"], 3)
        out["azure_emulator_ratio_runs"] = [round(f / a, 3) for f, a in zip(times["floor"], times["azure_emulator"],
                                                                             strict=True)]
    return out


def _repetitions(root: Path, env: dict[str, str], azure_env: dict[str, str] | None, snakemake: Path | None, *,
                 n: int, reps: int, storage: Storage) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"batchyard": [], "floor": [], "raw_storage": [], "snakemake": [],
                                     "azure_emulator": []}
    for rep in range(reps):
        for name in ("floor", "batchyard", "raw_storage", "azure_emulator", "snakemake"):
            shutil.rmtree(root / "out", ignore_errors=True)
            (root / "out").mkdir()
            if name == "floor":
                times[name].append(_timed(["sh", "-c", f"xargs -P 2 -n 2 {sys.executable} up.py < pairs.txt"],
                                          cwd=root))
            elif name == "raw_storage":
                container = f"e2e-raw-{uuid.uuid4().hex[:8]}"
                times[name].append(_timed([sys.executable, str(Path(__file__).with_name("e2e_raw.py")),
                                           env["AZURE_STORAGE_CONNECTION_STRING"], container, str(root / "in")],
                                          cwd=root, env=env))
                storage.container(container).delete_container()  # untimed, as below
            elif name == "batchyard" or (name == "azure_emulator" and azure_env is not None):
                uid = uuid.uuid4().hex[:8]
                _job_toml(root, uid)
                argv = ["run", "job.toml", "--workers", "2"] if name == "batchyard" else ["run", "job.toml"]
                times[name].append(_timed([sys.executable, "-m", "batchyard", *argv], cwd=root,
                                          env=env if name == "batchyard" else azure_env))
                # Untimed: the next run starts on an account as empty as this one's was (the floor's
                # repetitions each start with an empty folder), not on this run's 600 blobs.
                storage.container(f"e2e-{uid}").delete_container()
            elif name == "snakemake" and snakemake is not None:
                times[name].append(_timed([str(snakemake), "--cores", "2", "--quiet", "all"], cwd=root))
                shutil.rmtree(root / ".snakemake", ignore_errors=True)
            if times[name] and len(times[name]) == rep + 1:
                print(f"  e2e {n} rep {rep + 1}/{reps}: {name} {times[name][-1]:.2f} s", flush=True)
    return times
