"""Promise 10: a big job of tiny commands runs every task exactly once, with correct counts, and the
submitting process's memory stays bounded. 1,000 tasks in the default suite; 10,000 behind ``-m soak``."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .support import PY, runs_of

SCRIPT = Path(__file__).with_name("scale_job.py")
RSS_LIMIT_MB = 250  # the submitter holds task ids, not results: far below this at 10,000 tasks


def _run_scale(project: Any, tmp_path: Path, n: int, *, workers: int, timeout: float) -> dict[str, Any]:
    runs = tmp_path / "runs.txt"
    proc = subprocess.run([PY, str(SCRIPT), str(project.dir / "batchyard.toml"), str(n), str(runs), str(workers),
                           str(timeout)], env=project.env, cwd=project.dir, capture_output=True, text=True,
                          timeout=timeout + 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nscale {n}: {json.dumps(report)}")
    assert report["counts"] == {"pending": 0, "running": 0, "succeeded": n, "failed": 0, "cancelled": 0,
                                "total": n}, report
    assert report["anomalies"] == [], report["anomalies"]
    assert report["results"] == n and report["attempts_other_than_1"] == 0
    ran = Counter(runs_of(runs))
    assert len(ran) == n, f"{n - len(ran)} task(s) never ran"
    assert set(ran.values()) == {1}, f"ran more than once: {[k for k, c in ran.items() if c > 1][:10]}"
    assert report["rss_peak_mb"] < RSS_LIMIT_MB, report
    return report


@pytest.mark.timeout(900)  # a hang guard: the job's own deadline (a generous one) comes first
def test_1000_tasks_each_run_exactly_once(project: Any, tmp_path: Path) -> None:
    _run_scale(project, tmp_path, 1_000, workers=4, timeout=600)


@pytest.mark.soak
@pytest.mark.timeout(1500)
def test_10000_tasks_each_run_exactly_once(project: Any, tmp_path: Path) -> None:
    _run_scale(project, tmp_path, 10_000, workers=4, timeout=1200)
