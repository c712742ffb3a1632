"""Two tasks writing the same output blob (issue found by trying batchyard as a user: `cat {input} >
result.txt` with `pattern = "result.txt"` ran, and `download` gave one file for three tasks): plan
reports it, every submit refuses it before anything is queued, naming the output and two tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchyard.core.errors import JobValidationError
from batchyard.core.job import job_from_dict, tasks_from_table
from batchyard.core.output_names import OutputCollisions


def _table_job(folder: Path, path: str, pattern: str = "result.txt") -> Any:
    (folder / "rows.csv").write_text("name\nalpha\nbeta\ngamma\n", encoding="utf-8")
    return job_from_dict({"id": "clash", "command": "sh -c 'echo {name} > result.txt'", "tasks": "rows.csv",
                          "outputs": [{"pattern": pattern, "container": "clash-out", "path": path}]},
                         base_dir=folder)


@pytest.mark.parametrize(("path", "pattern", "clashes"), [
    ("{job_id}/", "result.txt", 2),            # the default path: every task's result.txt is one blob
    ("{job_id}/result.txt", "result.txt", 2),  # a blob name without a placeholder: the same
    ("{job_id}/{name}/", "result.txt", 0),     # a folder per task
    ("{job_id}/", "*.txt", 0),                 # a wildcard: names are the command's, unknown before it runs
])
def test_outputs_that_name_one_blob_for_several_tasks(tmp_path: Path, path: str, pattern: str, clashes: int) -> None:
    job = _table_job(tmp_path, path, pattern)
    collisions = OutputCollisions(job)
    for task in tasks_from_table(job):
        collisions.add(task)
    assert collisions.count == clashes
    if clashes:
        where, problem = collisions.problem() or ("", "")
        assert where == "outputs.0" and "both write clash-out/clash/result.txt" in problem
        with pytest.raises(JobValidationError, match="one would overwrite the other"):
            list(OutputCollisions(job).checked(tasks_from_table(job)))
    else:
        assert collisions.problem() is None


def test_plan_reports_it_and_run_refuses_it_before_anything_is_queued(project: Any) -> None:
    (project.dir / "rows.csv").write_text("name\nalpha\nbeta\n", encoding="utf-8")
    container = project.container("clash-out")
    (project.dir / "job.toml").write_text(
        'id = "clashjob"\ncommand = "sh -c \'echo {name} > result.txt\'"\ntasks = "rows.csv"\n'
        f'[[outputs]]\npattern = "result.txt"\ncontainer = "{container}"\n', encoding="utf-8")
    plan = project.cli("plan", "job.toml", "--json")
    assert plan.returncode == 1, plan.stderr
    codes = [f["code"] for f in json.loads(plan.stdout)["findings"] if f["severity"] == "error"]
    assert codes == ["output-collision"], codes
    run = project.cli("run", "job.toml")
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "outputs.0: tasks" in run.stderr and "one would overwrite the other" in run.stderr, run.stderr
    assert project.cli("status", "clashjob").returncode == 3  # no job was made
