"""``plan`` and submit stream a CSV task table (issue #23, point 6): rows are read as tasks are consumed,
the plan keeps no list of tasks, and the sizes it checks are exactly what submit would send."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from azure.batch._utils.model_base import SdkJSONEncoder

from batchyard.backends import get_backend_class
from batchyard.backends.azure.tasks import build_task
from batchyard.core.errors import JobValidationError
from batchyard.core.job import job_from_dict, tasks_from_blob_names, tasks_from_table
from batchyard.core.task_table import SeenIds, repeated_row_problem

REPO = Path(__file__).resolve().parent.parent


def table_job(folder: Path, csv_text: str, **extra: object) -> object:
    (folder / "rows.csv").write_text(csv_text, encoding="utf-8")
    return job_from_dict({"id": "sweep", "command": "run {a} {b}", "tasks": "rows.csv", **extra}, base_dir=folder)


def test_rows_are_read_as_tasks_are_consumed(tmp_path: Path) -> None:
    tasks = tasks_from_table(table_job(tmp_path, "a,b\n1,x\n2,y\n3,z\nbroken\n"))
    first = next(tasks)  # the broken line 5 has not been read yet
    assert first.argv == ("run", "1", "x")
    with pytest.raises(JobValidationError, match=r"rows\.csv line 5 has 1 values"):
        list(tasks)


def test_a_repeated_row_stops_the_stream_before_its_last_task(tmp_path: Path) -> None:
    handed_out = []
    with pytest.raises(JobValidationError, match=r"rows\.csv line 4 repeats line 2"):
        for task in tasks_from_table(table_job(tmp_path, "a,b\n1,x\n2,y\n1,x\n")):
            handed_out.append(task)
    assert [t.argv[1] for t in handed_out] == ["1", "2"]


def test_rows_giving_one_task_id_are_told_apart_from_repeats(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("a\n1\n2\n3\n", encoding="utf-8")
    def same_id(row: dict[str, str]) -> str:
        return "one-id" if row["a"] in ("1", "3") else row["a"]

    def seen(ids: list[str]) -> SeenIds:
        found = SeenIds()
        for task_id in ids:
            found.add(task_id)
        return found

    assert repeated_row_problem(tmp_path / "rows.csv", seen(["one-id", "2", "one-id"]), same_id) == (
        "rows.csv lines 2 and 4 give the same task id 'one-id'; change one of them")
    assert repeated_row_problem(tmp_path / "rows.csv", seen(["1", "2", "3"]), lambda row: row["a"]) is None


PEAK_RSS = """
import resource, sys
from batchyard.analysis.plan import make_plan
from batchyard.core.config import load_config
config = load_config(sys.argv[2], env={"BATCHYARD_HOME": sys.argv[3]})
plan = make_plan(sys.argv[1], config, active_jobs=0, durations=[])
assert plan.tasks == int(sys.argv[4]) and not plan.has_errors, plan.findings
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def plan_peak_kib(folder: Path, rows: int) -> int:
    folder.mkdir()
    with (folder / "rows.csv").open("w", encoding="utf-8") as fh:
        fh.write("name,dest,n\n")
        fh.writelines(f"item{i},d{i % 10},{i}\n" for i in range(rows))
    (folder / "job.toml").write_text(
        'id = "big"\ncommand = "echo {name} {dest} {n}"\ntasks = "rows.csv"\n[[outputs]]\npattern = "*.txt"\n'
        'container = "out-data"\npath = "{job_id}/{dest}/{name}.txt"\n', encoding="utf-8")
    (folder / "batchyard.toml").write_text("", encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(folder / "job.toml"), str(folder / "batchyard.toml"),
                           str(folder / "home"), str(rows)], capture_output=True, text=True, timeout=600,
                          cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def test_plan_memory_does_not_grow_with_the_table(tmp_path: Path) -> None:
    """Ten times the rows, about the same peak: the plan holds 8 bytes per row (before: ~1 KiB)."""
    small = plan_peak_kib(tmp_path / "small", 10_000)
    large = plan_peak_kib(tmp_path / "large", 100_000)
    assert large - small < 20 * 1024, f"peak RSS {small} KiB for 10,000 rows, {large} KiB for 100,000"


def preview_for(job: object) -> object:
    return get_backend_class("azure").preview_submit(  # type: ignore[attr-defined]
        job, sas_margin=timedelta(hours=1), account_url="https://" + "a" * 24 + ".blob.core.windows.net",
        system_container="batchyard", log_container="batchyard-logs")


def sdk_size(job: object, task: object, preview: object) -> int:
    input_url = (preview.blob_url(task.input_container, task.input_blob)  # type: ignore[attr-defined]
                 if task.input_blob is not None else None)  # type: ignore[attr-defined]
    options = build_task(job, task, urls=preview.urls, input_url=input_url,  # type: ignore[arg-type,attr-defined]
                         required=preview.required)  # type: ignore[attr-defined]
    return len(json.dumps(options, cls=SdkJSONEncoder, exclude_readonly=True).encode())


def test_request_sizes_are_exactly_what_the_sdk_sends(tmp_path: Path) -> None:
    rows = ("a,b\n"
            "1,plain\n"
            ',"empty first value, quotes "" and \\\\ backslash"\n'
            "3,ünïcödé 日本 🚀\n"
            "4,\x01\x1f control\n"
            f"5,{'long' * 5000}\n")
    outputs = [{"pattern": "*.out", "container": "out-data", "path": "{job_id}/{a}/"},
               {"pattern": "summary.json", "container": "out-data", "path": "{job_id}/"},
               {"pattern": "*.log", "container": "logs-data", "path": "", "optional": True}]
    job = table_job(tmp_path, rows, outputs=outputs, environment={"FIXED": "x"})
    preview = preview_for(job)
    tasks = list(tasks_from_table(job))
    assert len(tasks) == 5 and preview.required  # type: ignore[attr-defined]
    assert [preview.request_size(t) for t in tasks] == [sdk_size(job, t, preview) for t in tasks]  # type: ignore[attr-defined]

    blobs = job_from_dict({"id": "blobs", "command": "cat {input}", "inputs": {"container": "in-data"},
                           "resource_files": [{"source": "tool.py"}],
                           "outputs": [{"pattern": "{input_stem}.out", "container": "out-data"}]}, base_dir=tmp_path)
    preview = preview_for(blobs)
    tasks = list(tasks_from_blob_names(blobs, ["a.txt", "dir/ünï code.txt", "q?=&%.txt", "x" * 300 + ".txt"]))
    assert [preview.request_size(t) for t in tasks] == [sdk_size(blobs, t, preview) for t in tasks]  # type: ignore[attr-defined]


def test_a_table_with_a_header_and_no_rows_is_refused_naming_it(tmp_path: Path) -> None:
    """As an [inputs] listing that matches nothing is: a job of no task is the user's mistake."""
    with pytest.raises(JobValidationError, match=r"rows\.csv has a header and no rows"):
        list(tasks_from_table(table_job(tmp_path, "a,b\n")))
