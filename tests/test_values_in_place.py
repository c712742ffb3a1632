"""Values stay in their place (issue #23, point 3): a CSV value or an input name substituted into an
output path can never move that output out of the job's prefix, and a CSV column can never set a
variable the node or batchyard sets. Each refusal names the line and the column; nothing is created.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from batchyard.analysis.plan import make_plan
from batchyard.backends import get_backend
from batchyard.core.config import load_config
from batchyard.core.errors import JobNotFoundError, JobValidationError, StorageError, UnsafePathError
from batchyard.core.job import TaskDef, job_from_dict, output_prefix, tasks_from_blob_names, tasks_from_table
from batchyard.core.paths import blob_name_problem

ESCAPING = "name,dest\nalpha,results\nbeta,../victim-job\n"
PATH = "{job_id}/{dest}/{name}.txt"


def sweep(folder: Path, csv_text: str, *, job_id: str = "csv-out", path: str = PATH, container: str = "out-data",
          **extra: Any) -> Any:
    (folder / "rows.csv").write_text(csv_text, encoding="utf-8")
    data = {"id": job_id, "command": "echo {name}", "tasks": "rows.csv",
            "outputs": [{"pattern": "result.txt", "container": container, "path": path}], **extra}
    return job_from_dict(data, source="job.toml", base_dir=folder)


def refusal(job: Any) -> tuple[str, str]:
    with pytest.raises(JobValidationError) as info:
        list(tasks_from_table(job))
    ((where, problem),) = info.value.problems
    return where, problem


def test_a_csv_value_cannot_climb_out_of_the_output_prefix(tmp_path: Path) -> None:
    where, problem = refusal(sweep(tmp_path, ESCAPING))
    assert where == "outputs.0.path"
    assert "rows.csv line 3, column dest = '../victim-job'" in problem
    assert "'csv-out/../victim-job/beta.txt'" in problem and "'..' segment" in problem


@pytest.mark.parametrize(("value", "words"), [
    ("..", "'..' segment"), (".", "'.' segment"), ("a/../../b", "'..' segment"), ("x/./y", "'.' segment"),
    ("back\\slash", "backslash"), ("x" * 1100, "over the 1024"),
])
def test_every_way_out_is_refused_and_names_its_column(tmp_path: Path, value: str, words: str) -> None:
    where, problem = refusal(sweep(tmp_path, f'name,dest\nalpha,"{value}"\n'))
    assert where == "outputs.0.path" and "line 2, column dest = " in problem and words in problem


def test_an_absolute_value_at_the_start_of_a_path_is_refused(tmp_path: Path) -> None:
    _, problem = refusal(sweep(tmp_path, "name,dest\nalpha,/etc\n", path="{dest}/{name}"))
    assert "column dest = '/etc'" in problem and "starts with '/'" in problem


def test_when_two_values_make_the_segment_both_columns_are_named(tmp_path: Path) -> None:
    _, problem = refusal(sweep(tmp_path, "name,dest\n.,.\n", path="{job_id}/{dest}{name}/out"))
    assert "column dest = '.', name = '.'" in problem and "'..' segment" in problem


def test_values_that_stay_in_place_are_fine(tmp_path: Path) -> None:
    rows = "name,dest\nalpha,sub/dir\nbeta,a..b\ngamma,.hidden\n"
    job = sweep(tmp_path, rows)
    tasks = list(tasks_from_table(job))
    assert [output_prefix(job, job.outputs[0], t) for t in tasks] == [
        "csv-out/sub/dir/alpha.txt", "csv-out/a..b/beta.txt", "csv-out/.hidden/gamma.txt"]


def test_an_input_name_is_checked_too(tmp_path: Path) -> None:
    job = job_from_dict({"id": "blobs", "command": "cat {input}", "inputs": {"container": "in-data"},
                         "outputs": [{"pattern": "*.out", "container": "out-data", "path": "{job_id}/{input_blob}/"}]},
                        source="job.toml", base_dir=tmp_path)
    assert len(list(tasks_from_blob_names(job, ["fine.txt", "sub/also.txt"]))) == 2
    with pytest.raises(JobValidationError) as info:
        list(tasks_from_blob_names(job, ["fine.txt", "./odd.txt"]))
    ((where, problem),) = info.value.problems
    assert where == "outputs.0.path" and "blob './odd.txt'" in problem and "'.' segment" in problem


def test_a_task_built_elsewhere_cannot_move_its_output_either(tmp_path: Path) -> None:
    """output_prefix is what the workers and the azure backend call: it refuses on its own."""
    job = sweep(tmp_path, "name,dest\nalpha,results\n")
    forged = TaskDef(task_id="forged-1", argv=("echo",), params=(("name", "x"), ("dest", "../victim-job")))
    with pytest.raises(UnsafePathError, match=r"'\.\.' segment"):
        output_prefix(job, job.outputs[0], forged)


def test_the_path_template_itself_follows_the_same_rule(tmp_path: Path) -> None:
    for bad in ("{job_id}/./x", "/{job_id}", "a\\{job_id}"):
        with pytest.raises(JobValidationError) as info:
            sweep(tmp_path, "name,dest\nalpha,x\n", path=bad)
        assert "outputs.0.path" in dict(info.value.problems), bad
    assert blob_name_problem("a//b") is None, "an empty segment is kept by every URL rule"


@pytest.mark.parametrize("column", ["AZ_BATCH_TASK_WORKING_DIR", "AZ_BATCH_NODE_ROOT_DIR",
                                    "BATCHYARD_REQUIRED_OUTPUTS"])
def test_a_csv_column_cannot_set_a_reserved_variable(tmp_path: Path, column: str) -> None:
    (tmp_path / "rows.csv").write_text(f"name,{column}\nalpha,/tmp/elsewhere\n", encoding="utf-8")
    with pytest.raises(JobValidationError) as info:
        job_from_dict({"id": "env", "command": "echo {name}", "tasks": "rows.csv"}, source="job.toml",
                      base_dir=tmp_path)
    assert f"column '{column}' is reserved" in str(info.value)
    with pytest.raises(JobValidationError, match="is reserved"):  # [environment] refuses the same names
        job_from_dict({"id": "env", "command": "echo", "inputs": {"container": "in-data"},
                       "environment": {column: "x"}}, source="job.toml")


def test_plan_reports_the_row_and_column(tmp_path: Path) -> None:
    sweep(tmp_path, ESCAPING)
    (tmp_path / "job.toml").write_text('id = "csv-out"\ncommand = "echo {name}"\ntasks = "rows.csv"\n'
                                       '[[outputs]]\npattern = "result.txt"\ncontainer = "out-data"\n'
                                       f'path = "{PATH}"\n', encoding="utf-8")
    (tmp_path / "batchyard.toml").write_text("", encoding="utf-8")
    config = load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(tmp_path / "home")})
    plan = make_plan(tmp_path / "job.toml", config, active_jobs=0, durations=[])
    invalid = [f for f in plan.findings if f.code == "job-invalid"]
    assert plan.has_errors and len(invalid) == 1
    assert "rows.csv line 3, column dest = '../victim-job'" in invalid[0].message


def blobs_in(project: Any, container: str) -> list[str]:
    try:
        return list(project.storage.list_blob_names(container, ""))
    except StorageError:  # never created: nothing in it either
        return []


def submit_escaping_job(project: Any, config: Any) -> tuple[str, str]:
    out = f"out-{uuid.uuid4().hex[:8]}"
    job_id = f"esc-{uuid.uuid4().hex[:6]}"
    job = sweep(project.dir, ESCAPING, job_id=job_id, container=out)
    with get_backend(None, config) as be, pytest.raises(JobValidationError) as info:
        be.submit(job)
    assert "line 3, column dest = '../victim-job'" in str(info.value)
    return job_id, out


def test_local_submit_refuses_before_anything_is_queued(project: Any) -> None:
    config = project.config()
    job_id, out = submit_escaping_job(project, config)
    assert project.visible_messages() == [], "a message was queued for a refused job"
    with get_backend(None, config) as be, pytest.raises(JobNotFoundError):
        be.task_counts(job_id)
    assert blobs_in(project, out) == []


def test_azure_submit_refuses_before_anything_is_created(project: Any, batch_emulator: Any) -> None:
    from conformance.test_azure_emulator import raw_client
    from test_azure_backend import azure_config

    config = azure_config(project, batch_emulator)
    job_id, out = submit_escaping_job(project, config)
    assert job_id not in {j.id for j in raw_client(batch_emulator).list_jobs()}
    assert blobs_in(project, out) == []
