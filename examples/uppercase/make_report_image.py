"""Run the uppercase example on the local backend and draw its timeline for the README.

    python examples/uppercase/make_report_image.py [--workers 3] [--out docs/images/report-timeline.png]

Uses the configuration batchyard would use here (nearest batchyard.toml, the environment,
else the local Azurite, started if needed). The job runs under its own id,
``uppercase-report``, deleted first, so the picture is always one fresh run: 20 tasks on
a few worker slots, the deliberately failing input retried once and then failed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tomllib
from pathlib import Path

from batchyard.analysis.report import report_from_backend
from batchyard.analysis.report_figures import render_timeline
from batchyard.backends import get_backend
from batchyard.core.config import load_config
from batchyard.core.errors import BatchyardError
from batchyard.core.job import job_from_dict

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent.parent / "docs" / "images" / "report-timeline.png"
JOB_ID = "uppercase-report"
MAX_BYTES = 150_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    data = tomllib.loads((HERE / "job.toml").read_text(encoding="utf-8"))
    job = job_from_dict({**data, "id": JOB_ID}, source=str(HERE / "job.toml"), base_dir=HERE)
    try:
        with get_backend("local", load_config()) as backend:
            backend.preflight()
            with contextlib.suppress(BatchyardError):  # no such job yet (or no job table, on fresh storage)
                backend.delete(JOB_ID)
            backend.submit(job)
            backend.start_execution(job, workers=args.workers)
            try:
                counts = backend.wait(JOB_ID, poll_interval=0.3, timeout=300)
            finally:
                backend.stop_execution()
            report = report_from_backend(backend, JOB_ID)
    except BatchyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    png, layout = render_timeline(report, width_in=8.0, dpi=90,
                                  title=f"uppercase example: {counts.total} tasks on {args.workers} worker slots")
    if len(png) > MAX_BYTES:
        print(f"error: the image is {len(png)} bytes (limit {MAX_BYTES})", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"{args.out}: {layout.width}x{layout.height} px, {len(png)} bytes, {len(report.attempts)} attempts "
          f"({counts.succeeded} succeeded, {counts.failed} failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
