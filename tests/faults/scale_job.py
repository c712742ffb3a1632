"""Run one N-task job (tiny commands) to the end and report numbers as JSON (used by test_scale.py).

python scale_job.py CONFIG N RUNS WORKERS TIMEOUT -> prints {"rss_*_mb", "submit_s", "run_s", "counts", "anomalies"}
The submitting process only submits, polls and reports: workers are forked children, so its own peak RSS
is the submitter's memory. Read as VmHWM, which exec resets: Linux keeps ru_maxrss across exec, so it
would report the parent's peak (a pytest process that ran the whole suite in one process: 266 MB).
"""

import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path

from batchyard.backends import get_backend
from batchyard.backends.local.worker import WorkerOptions
from batchyard.core.config import load_config
from batchyard.core.job import job_from_dict


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    config_path, n, runs, workers, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), \
        float(sys.argv[5])
    base = Path(config_path).parent
    (base / "scale.csv").write_text("KEY\n" + "".join(f"k{i:06d}\n" for i in range(n)), encoding="utf-8")
    job = job_from_dict({"id": f"scale{n}", "command": f"/bin/sh -c 'echo {{KEY}} >> {runs}'",
                         "tasks": "scale.csv"}, source="scale", base_dir=base)
    rss_start = rss_mb()
    with get_backend("local", load_config(config_path)) as be:
        be.preflight()
        t0 = time.monotonic()
        submitted = be.submit(job)
        submit_s = time.monotonic() - t0
        rss_submit = rss_mb()
        be.start_execution(job, workers=workers, options=WorkerOptions(lease_s=10))
        anomalies: list[str] = []
        last_done = -1
        t1 = time.monotonic()
        try:
            while True:
                counts = be.task_counts(job.id)
                if counts.total != n:
                    anomalies.append(f"total {counts.total} != {n}")
                if counts.done < last_done:
                    anomalies.append(f"done went back from {last_done} to {counts.done}")
                last_done = counts.done
                if counts.finished or time.monotonic() - t1 > timeout:
                    break
                be._check_alive()
                time.sleep(1.0 if n > 2000 else 0.5)  # each poll reads every row: keep it light
        finally:
            be.stop_execution()
        run_s = time.monotonic() - t1
        results = list(be.list_task_results(job.id))
        attempts = [r.attempts for r in results]
        failures = Counter(f"{r.failure_category}: {r.failure_message}" for r in results if r.state == "failed")
    print(json.dumps({"rss_start_mb": rss_start, "rss_after_submit_mb": rss_submit, "rss_peak_mb": rss_mb(),
                      "submit_s": submit_s, "run_s": run_s, "enqueued": submitted.enqueued,
                      "counts": counts.to_dict(), "anomalies": anomalies,
                      "attempts_other_than_1": sum(1 for a in attempts if a != 1), "results": len(attempts),
                      "failures": dict(failures.most_common(3))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
