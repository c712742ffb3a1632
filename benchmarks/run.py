"""`make bench`: every benchmark, a table on stdout, JSON in benchmarks/results/latest.json.

Each figure is a ratio against a baseline measured in the same run on this machine (median of
--reps repetitions). Options: --quick (small sizes, 1 repetition), --only NAME[,NAME].
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from . import big, big_submit, download, e2e, final_step, scale, submit, tiny
from .common import azurite, machine

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("tiny", "submit", "big", "scale", "e2e", "run_all")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (a smoke run)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {', '.join(SECTIONS)}, "
                        "final (the final step's cost; not in the default set)")
    parser.add_argument("--scale", action="store_true",
                        help="scale and run_all's true job up to 100,000 tasks, its download job 10,000 "
                             "(default: scale 1,000 and 10,000; run_all 2,000 and 20,000, its download job 2,000)")
    args = parser.parse_args()
    reps = 1 if args.quick else args.reps
    only = set(args.only.split(","))
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick,
                           "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    out["machine"] = machine()
    print(f"machine: {out['machine']}")
    for name in (*SECTIONS, "final"):
        if name in only:
            # Each section on an Azurite of its own: Azurite's blob and row look-ups cost more the more
            # the account holds (docs/performance.md), so one section's leftovers would slow the next.
            with azurite() as conn:
                out[name] = _section(name, conn, args, reps)
    out["memory"] = {
        "worker_rss_mib": out.get("tiny", {}).get("worker_peak_rss_mib"),
        "submit_rss_mib": out.get("submit", {}).get("local", {}).get("peak_rss_mib"),
    }
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / "latest.json"
    if only != set(SECTIONS) and latest.exists():
        # A partial run (--only) updates its sections and keeps the others, each with its own date.
        previous = json.loads(latest.read_text(encoding="utf-8"))
        for name in (*SECTIONS, "final"):  # final: opt-in (--only final), kept like the others
            if name not in out and name in previous:
                out[name] = previous[name]
                # A section the previous file had itself kept keeps its own, older date.
                since = previous.get("kept_from", {}).get(name, previous.get("started"))
                out.setdefault("kept_from", {})[name] = since
        out["memory"] = {
            "worker_rss_mib": out.get("tiny", {}).get("worker_peak_rss_mib"),
            "submit_rss_mib": out.get("submit", {}).get("local", {}).get("peak_rss_mib"),
        }
    latest.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    _table(out)
    return 0


def _section(name: str, conn: str, args: argparse.Namespace, reps: int) -> Any:
    if name == "tiny":
        print("tiny tasks ...", flush=True)
        return tiny.run(conn, n=200 if args.quick else 2000, reps=reps)
    if name == "submit":
        n = 1000 if args.quick else 10_000
        print("submit ...", flush=True)
        section: dict[str, Any] = {"local": submit.local(conn, n=n, reps=reps),
                                   "azure_emulator": submit.azure_emulator(conn, n=n, reps=reps)}
        section["local_10k_s"] = section["local"]["seconds"]
        emu = section["azure_emulator"]
        section["azure_emulator_10k_s"] = emu["seconds"] if emu else None
        return section
    if name == "big":
        print("big files ...", flush=True)
        return big.run(conn, size=(64 if args.quick else 1024) << 20, reps=reps)
    if name == "e2e":
        print("tiny tasks end to end: batchyard run vs xargs vs snakemake ...", flush=True)
        return e2e.run(conn, n=50 if args.quick else 300, reps=reps)
    if name == "scale":
        sizes = [1000] if args.quick else [1000, 10_000, 100_000] if args.scale else [1000, 10_000]
        print(f"scale {sizes} ...", flush=True)
        return scale.run(conn, sizes=sizes)
    if name == "run_all":
        # The job (`true {KEY}`: rows, no blob) at two sizes, for how the rate holds as a job grows;
        # then a job writing one output per task, for download against the raw SDK. Azurite's cost per
        # blob request grows with the blobs it holds (docs/performance.md), so that one stops at 10,000.
        true_sizes = [200, 2000] if args.quick else [2000, 100_000] if args.scale else [2000, 20_000]
        print(f"running every task of a true job {true_sizes} ...", flush=True)
        true_job = big_submit.run_all(true_sizes)
        sizes = [200] if args.quick else [2000, 10_000] if args.scale else [2000]
        print(f"running every task, then download vs the raw SDK {sizes} ...", flush=True)
        return {**download.run_all(sizes=sizes, reps=1 if args.quick else 2), "true_job": true_job}
    print("final step ...", flush=True)  # opt-in: --only final
    return final_step.run(conn, n=100 if args.quick else 500, reps=reps)


def _table(out: dict[str, Any]) -> None:
    rows = []
    if "tiny" in out:
        t = out["tiny"]
        rows += [("tiny: backend tasks/s", t["tasks_per_s"], f"floor {t['floor_tasks_per_s']}",
                  f"ratio {t['ratio_vs_floor']}"),
                 ("tiny: overhead ms/task", t["overhead_ms_per_task"], "", "")]
    if "submit" in out:
        s = out["submit"]
        rows.append(("submit local (s)", s["local"]["seconds"], f"{s['local']['tasks']} tasks", ""))
        if s["azure_emulator"]:
            rows.append(("submit azure->emulator (s)", s["azure_emulator"]["seconds"], "", ""))
    if "big" in out:
        b = out["big"]
        rows += [("big: stage MB/s", b["stage_mb_s"], f"raw {b['raw_download_mb_s']}", f"ratio {b['stage_ratio']}"),
                 ("big: upload MB/s", b["upload_mb_s"], f"raw {b['raw_upload_mb_s']}", f"ratio {b['upload_ratio']}")]
    if out.get("e2e"):
        e = out["e2e"]
        rows += [(f"e2e {e['files']} files: batchyard run (s)", e["batchyard_s"], f"floor {e['floor_s']} s",
                  f"ratio {e['ratio_vs_floor']}"),
                 (f"e2e {e['files']} files: snakemake (s)", e["snakemake_s"], "",
                  f"batchyard / snakemake throughput {e['vs_snakemake']}")]
        if e.get("raw_storage_s"):
            rows.append((f"e2e {e['files']} files: raw SDK storage floor (s)", e["raw_storage_s"],
                         f"floor {e['floor_s']} s", f"ratio {e['raw_storage_ratio_vs_floor']}; batchyard / it "
                         f"{e['vs_raw_storage']}"))
        if e.get("azure_emulator_s"):
            rows.append((f"e2e {e['files']} files: azure->emulator (s)", e["azure_emulator_s"],
                         f"floor {e['floor_s']} s", f"ratio {e['azure_emulator_ratio_vs_floor']}"))
    if "scale" in out:
        for backend, section in out["scale"].items():
            for n, figures in section.items():
                for step, value in figures.items():
                    if isinstance(value, dict):
                        extra = f"first byte {value['first_byte_s']} s" if step == "status_json" else ""
                        rows.append((f"scale {backend} {n}: {step} (s)", value["s"], f"{value['rss_mib']} MiB", extra))
                    elif step != "tasks":
                        rows.append((f"scale {backend} {n}: {step}", value, "", ""))
    for n, section in (out.get("run_all") or {}).get("sizes", {}).items():
        summary = section["summary"]
        rows += [(f"run_all {n}: tasks/s", summary["tasks_per_s"], f"max RSS {summary['max_rss_mib']} MiB", ""),
                 (f"run_all {n}: download (s)", summary["batchyard_download_s"], f"raw {summary['raw_download_s']} s",
                  f"ratio {summary['ratio']}")]
    if (out.get("run_all") or {}).get("tasks_per_s_vs_smallest"):
        rows.append(("run_all: tasks/s vs the smallest job", out["run_all"]["tasks_per_s_vs_smallest"], "", ""))
    true_job = (out.get("run_all") or {}).get("true_job") or {}
    for n, result in true_job.get("sizes", {}).items():
        rows.append((f"run_all true {n}: tasks/s", result["tasks_per_s"],
                     f"max RSS {result['sampled']['max_rss_mib']} MiB", f"Azurite CPU {result.get('azurite_cpu_s')} s"))
    if true_job.get("tasks_per_s_vs_smallest"):
        rows.append(("run_all true: tasks/s vs the smallest job", true_job["tasks_per_s_vs_smallest"], "", ""))
    m = out["memory"]
    rows.append(("memory: worker / submit RSS MiB", f"{m['worker_rss_mib']} / {m['submit_rss_mib']}", "", ""))
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, base, ratio in rows:
        print(f"{name:<{width}}  {value!s:>10}  {base:<18} {ratio}")
    print(f"\nwritten: {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
