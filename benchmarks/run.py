"""`make bench`: every benchmark, a table on stdout, JSON in benchmarks/results/latest.json.

Each figure is a ratio against a baseline measured in the same run on this machine (median of
--reps repetitions). Options: --quick (small sizes, 1 repetition), --only NAME[,NAME].
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from . import big, final_step, submit, tiny
from .common import azurite, machine

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (a smoke run)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="tiny,submit,big", help="sections, comma-separated: tiny, submit, big, "
                        "final (the final step's cost; not in the default set)")
    args = parser.parse_args()
    reps = 1 if args.quick else args.reps
    only = set(args.only.split(","))
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick}
    with azurite() as conn:
        out["machine"] = machine(conn)
        print(f"machine: {out['machine']}")
        if "tiny" in only:
            print("tiny tasks ...", flush=True)
            out["tiny"] = tiny.run(conn, n=200 if args.quick else 2000, reps=reps)
        if "submit" in only:
            n = 1000 if args.quick else 10_000
            print("submit ...", flush=True)
            out["submit"] = {"local": submit.local(conn, n=n, reps=reps),
                             "azure_emulator": submit.azure_emulator(conn, n=n, reps=reps)}
            out["submit"]["local_10k_s"] = out["submit"]["local"]["seconds"]
            emu = out["submit"]["azure_emulator"]
            out["submit"]["azure_emulator_10k_s"] = emu["seconds"] if emu else None
        if "big" in only:
            print("big files ...", flush=True)
            out["big"] = big.run(conn, size=(64 if args.quick else 1024) << 20, reps=reps)
        if "final" in only:  # opt-in: --only final
            print("final step ...", flush=True)
            out["final"] = final_step.run(conn, n=100 if args.quick else 500, reps=reps)
    out["memory"] = {
        "worker_rss_mib": out.get("tiny", {}).get("worker_peak_rss_mib"),
        "submit_rss_mib": out.get("submit", {}).get("local", {}).get("peak_rss_mib"),
    }
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / "latest.json"
    if only != {"tiny", "submit", "big"} and latest.exists():
        # A partial run (--only) updates its sections and keeps the others, each with its own date.
        previous = json.loads(latest.read_text(encoding="utf-8"))
        for name in ("tiny", "submit", "big", "final"):
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
    m = out["memory"]
    rows.append(("memory: worker / submit RSS MiB", f"{m['worker_rss_mib']} / {m['submit_rss_mib']}", "", ""))
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, base, ratio in rows:
        print(f"{name:<{width}}  {value!s:>10}  {base:<18} {ratio}")
    print(f"\nwritten: {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
