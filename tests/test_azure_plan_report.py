"""Issue 18, points 6 and 8 on the azure backend against the Batch emulator: `plan` lists each rule once
and exits non-zero on an error; the report of a re-run shows the pool's shape, that run's wall time
alone, and log commands that carry `--backend azure` when the configuration says local."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conformance.test_azure_emulator import azure_env
from test_azure_day_one import configure, job_file

pytestmark = pytest.mark.timeout(180)


def test_plan_names_each_pool_rule_once_and_exits_non_zero(project: Any, batch_emulator: Any) -> None:
    configure(project, batch_emulator, pool="task_slots_per_node = 16\n")
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    planned = project.cli("plan", job_file(project, f"dup-{uuid.uuid4().hex[:6]}", ins), "--backend", "azure",
                          "--json", env=azure_env(project, batch_emulator))
    assert planned.returncode == 1, planned.stderr
    codes = [f["code"] for f in json.loads(planned.stdout)["findings"]]
    # plan's own rule and the backend's preflight both check these: one finding each
    assert codes.count("pool-slots-over-limit") == 1 and codes.count("job-quota") == 1, codes
    shown = project.cli("plan", "job.toml", "--backend", "azure", env=azure_env(project, batch_emulator))
    assert shown.returncode == 1 and shown.stdout.count("pool-slots-over-limit") == 1, shown.stdout
    assert "node allocation" in shown.stdout and "per-task overhead" in shown.stdout


def _parse(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_a_reruns_report_shows_the_pool_shape_and_that_runs_wall_time(project: Any, batch_emulator: Any,
                                                                         tmp_path: Path) -> None:
    configure(project, batch_emulator)  # the configuration's backend stays local
    env = azure_env(project, batch_emulator)
    ins = project.container("inputs")
    project.put_inputs(ins, {"good.txt": b"good", "bad.txt": b"bad"})
    fixed = tmp_path / "fixed"
    job_id = f"rerun-{uuid.uuid4().hex[:6]}"
    command = (f"sh -c 'if grep -q bad \"$0\" && [ ! -e {fixed} ]; then echo not yet >&2; exit 3; fi; cat \"$0\"' "
               "{input}")
    first = project.cli("run", job_file(project, job_id, ins, command), "--backend", "azure", env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    before = json.loads(project.cli("report", job_id, "--json", env=env).stdout)
    (failed,) = before["failed_tasks"]
    assert failed["logs_command"].endswith("--stderr --backend azure"), failed["logs_command"]
    assert before["shape"] == f"Azure Batch pool by-{job_id}: standard_d2s_v3 x 1 node(s) x 1 slot(s) (deleted)"

    first_end = _parse(before["end"])
    # The forecast is of what a re-run on Batch adds (the failed task), not of the whole job; the local
    # backend's records say nothing of Batch, so there it is the whole job.
    on_batch = json.loads(project.cli("plan", "job.toml", "--backend", "azure", "--json", env=env).stdout)
    assert on_batch["rerun"]["rerun"] == 1 and on_batch["tasks"] == 2
    assert (on_batch["forecast"]["tasks"], on_batch["forecast"]["total_tasks"]) == (1, 2), on_batch["forecast"]
    assert on_batch["forecast"]["assumptions"][0].startswith("1 of the job's 2 tasks run")
    locally = json.loads(project.cli("plan", "job.toml", "--backend", "local", "--json", env=env).stdout)
    assert (locally["forecast"]["tasks"], locally["forecast"]["total_tasks"]) == (2, 2), locally["forecast"]
    fixed.write_text("")
    second = project.cli("run", "job.toml", "--backend", "azure", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    after = json.loads(project.cli("report", job_id, "--json", env=env).stdout)
    assert after["totals"]["succeeded"] == 2 and after["totals"]["attempts_drawn"] >= 2
    assert after["run_started"] is not None and _parse(after["run_started"]) > first_end
    assert _parse(after["start"]) > first_end, "the wall time starts with the second run"
    assert after["wall_seconds"] == pytest.approx(_parse(after["end"]) - _parse(after["start"]), abs=0.01)
    assert after["wall_seconds"] < _parse(after["end"]) - _parse(before["start"]), "not spanning both runs"
    assert after["shape"].startswith(f"Azure Batch pool by-{job_id}: standard_d2s_v3 x 1 node(s) x 1 slot(s)")
    kept = project.cli("plan", "job.toml", "--backend", "azure", env=env)
    assert "nothing would run: every task is kept" in kept.stdout, kept.stdout
    idle = project.cli("run", "job.toml", "--backend", "azure", env=env)  # nothing to run: no pool of its own
    assert idle.returncode == 0 and "0 queued: 2 kept" in " ".join(idle.stderr.split()), idle.stderr
    assert f"pool by-{job_id}" not in idle.stdout + idle.stderr, idle.stdout

