"""The job model: validation messages name the field, fan-out and task ids behave."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchyard import Job
from batchyard.core.errors import JobValidationError
from batchyard.core.job import (
    job_from_dict,
    load_job,
    make_task_id,
    parse_duration,
    substitute,
    tasks_from_blob_names,
    tasks_from_table,
)

BASE = {"id": "j1", "command": "python3 up.py {input} {input_stem}.out", "inputs": {"container": "input-data"}}


def problems_of(data: dict, tmp_path: Path | None = None) -> dict[str, str]:
    with pytest.raises(JobValidationError) as info:
        job_from_dict(data, source="job.toml", base_dir=tmp_path)
    assert str(info.value).startswith("job.toml:")
    return dict(info.value.problems)


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"id": "has space"}, "id", "valid job id"),
        ({"id": "x" * 65}, "id", "1-64"),
        ({"comand": "x"}, "comand", "unknown field: did you mean 'command'?"),
        ({"inputs": {"container": "input-data", "prefx": "a/"}}, "inputs.prefx", "did you mean 'prefix'?"),
        ({"outputs": {"pattern": "*.x", "container": "out-data"}}, "outputs", "write [[outputs]]"),
        ({"inputs": [{"container": "input-data"}]}, "inputs", "write [inputs] (one table), not [[inputs]]"),
        ({"elevated": "yes"}, "elevated", "valid boolean"),
        ({"outputs": [{"pattern": "*.x", "container": "out-data", "optional": 1}]}, "outputs.0.optional",
         "valid boolean"),
        ({"inputs": {"container": "Bad_Name"}}, "inputs.container", "container name"),
        ({"inputs": {"container": "input-data", "prefix": "../up"}}, "inputs.prefix", "'..'"),
        ({"outputs": [{"pattern": "../x", "container": "out-data"}]}, "outputs.0.pattern", "'..'"),
        ({"outputs": [{"pattern": "/abs/*", "container": "out-data"}]}, "outputs.0.pattern", "relative"),
        ({"outputs": [{"pattern": "a\\b", "container": "out-data"}]}, "outputs.0.pattern", "backslash"),
        ({"outputs": [{"pattern": "*.x", "container": "out-data", "upload_on": "always"}]},
         "outputs.0.upload_on", "success"),
        ({"constraints": {"max_wall_clock_time": "ten minutes"}}, "constraints.max_wall_clock_time", "duration"),
        ({"constraints": {"max_task_retry_count": -2}}, "constraints.max_task_retry_count", "-1"),
        ({"environment": {"AZ_BATCH_X": "1"}}, "environment", "AZ_BATCH_"),
        ({"environment": {"1BAD": "1"}}, "environment", "environment variable name"),
        ({"command": "python3 up.py {inptu}"}, "", "unknown placeholder {inptu}"),
        ({"command": "python3 'unterminated"}, "command", "cannot be split"),
        ({"command": "   "}, "command", "must not be empty"),
        ({"tasks": "params.csv"}, "", "exactly one of [inputs]"),
        ({"resource_files": [{"source": "x.py", "file_path": "../x.py"}]}, "resource_files.0", "'..'"),
    ],
)
def test_validation_errors_name_the_field(patch: dict, field: str, words: str) -> None:
    problems = problems_of({**BASE, **patch})
    assert field in problems, problems
    assert words in problems[field], problems[field]


def test_load_job_reports_file_and_toml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "job.toml"
    bad.write_text('id = "x"\ncommand = \n', encoding="utf-8")
    with pytest.raises(JobValidationError, match="not valid TOML"):
        load_job(bad)
    with pytest.raises(JobValidationError, match="file not found"):
        load_job(tmp_path / "missing.toml")
    bad.write_text('id = "ok"\ncommand = "true"\n[inputs]\ncontainer = "in"\n', encoding="utf-8")
    with pytest.raises(JobValidationError) as info:
        load_job(bad)
    assert str(bad) in str(info.value) and "inputs.container" in str(info.value)


def test_python_api_builds_the_same_model(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('id = "j1"\ncommand = "python3 up.py {input} {input_stem}.out"\n'
                    '[inputs]\ncontainer = "input-data"\n', encoding="utf-8")
    from_file = load_job(path)
    from_api = Job(**BASE, base_dir=tmp_path)
    assert from_file.model_dump() == from_api.model_dump()


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800), (5, 5.0)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_substitution_is_verbatim_and_one_argument() -> None:
    hostile = "it's $(touch pwned) `x` \"q\" \n {input}"
    assert substitute("{input}", {"input": hostile}, field_name="command") == hostile
    assert substitute("{{literal}}-{a}", {"a": "1"}, field_name="command") == "{literal}-1"
    with pytest.raises(ValueError, match="unknown placeholder"):
        substitute("{input.__class__}", {"input": "x"}, field_name="command")


def test_fan_out_argv_and_ids() -> None:
    job = job_from_dict({**BASE, "inputs": {"container": "input-data", "prefix": "p/", "glob": "*.txt"}})
    names = ["p/a b.txt", "p/A B.txt", "p/sub/c.txt", "p/skip.csv", "other/a.txt", "p/it's $(x).txt"]
    tasks = {t.input_blob: t for t in tasks_from_blob_names(job, names)}
    assert sorted(tasks) == ["p/A B.txt", "p/a b.txt", "p/it's $(x).txt", "p/sub/c.txt"]
    assert tasks["p/a b.txt"].argv == ("python3", "up.py", "a b.txt", "a b.out")
    assert tasks["p/it's $(x).txt"].argv[2] == "it's $(x).txt"
    assert tasks["p/sub/c.txt"].input_path == "sub/c.txt"
    ids = [t.task_id for t in tasks.values()]
    assert len({i.lower() for i in ids}) == len(ids), "ids must be unique case-insensitively"
    assert all(len(i) <= 64 for i in ids)
    again = {t.input_blob: t.task_id for t in tasks_from_blob_names(job, reversed(names))}
    assert again == {k: v.task_id for k, v in tasks.items()}, "ids must be deterministic"


def test_task_id_length_and_charset() -> None:
    task_id = make_task_id("job", "x" * 500, "Ünïcode and spaces " * 10)
    assert len(task_id) <= 64
    assert all(c.isalnum() or c in "-_" for c in task_id)
    assert make_task_id("job", "日本", "日本").startswith("t-")


def test_blob_that_would_escape_is_refused() -> None:
    job = job_from_dict(BASE)
    with pytest.raises(JobValidationError, match="outside the working dir"):
        list(tasks_from_blob_names(job, ["../etc/passwd"]))


def test_csv_task_table(tmp_path: Path) -> None:
    (tmp_path / "params.csv").write_text("alpha,label\n0.1,first\n0.2,it's $(x)\n\n", encoding="utf-8")
    job = job_from_dict({"id": "sweep", "command": "run {alpha} {label} {task_id}", "tasks": "params.csv"},
                        base_dir=tmp_path)
    tasks = list(tasks_from_table(job))
    assert [t.argv[1:3] for t in tasks] == [("0.1", "first"), ("0.2", "it's $(x)")]
    assert tasks[0].argv[3] == tasks[0].task_id
    assert dict(tasks[1].params) == {"alpha": "0.2", "label": "it's $(x)"}


@pytest.mark.parametrize(
    ("csv_text", "words"),
    [
        ("input,b\n1,2\n", "shadow the built-in placeholder"),
        ("a,a\n1,2\n", "duplicate column"),
        ("a,b\n1\n", "line 2 has 1 values"),
        ("a b,c\n1,2\n", "not a valid environment variable name"),
        ("", "empty"),
    ],
)
def test_csv_errors(tmp_path: Path, csv_text: str, words: str) -> None:
    (tmp_path / "p.csv").write_text(csv_text, encoding="utf-8")
    data = {"id": "sweep", "command": "run", "tasks": "p.csv"}
    with pytest.raises(JobValidationError) as info:
        list(tasks_from_table(job_from_dict(data, base_dir=tmp_path)))
    assert words in str(info.value)


def test_duplicate_csv_rows_are_refused(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("a\n1\n1\n", encoding="utf-8")
    job = job_from_dict({"id": "sweep", "command": "run {a}", "tasks": "p.csv"}, base_dir=tmp_path)
    with pytest.raises(JobValidationError, match=r"p\.csv line 3 repeats line 2"):
        list(tasks_from_table(job))


def test_job_file_reference_matches_the_model() -> None:
    from batchyard.analysis.job_reference import BEGIN, END, job_file_reference

    doc = (Path(__file__).resolve().parent.parent / "docs" / "job-file.md").read_text(encoding="utf-8")
    committed = BEGIN + doc.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert committed == job_file_reference(), (
        "docs/job-file.md is stale: run python -m batchyard.analysis.job_reference")


def test_a_misspelt_field_is_named_once() -> None:
    """`comand` is unknown, and `command` is then missing: one problem, with the suggestion, not two."""
    problems = problems_of({k: v for k, v in {**BASE, "comand": "x"}.items() if k != "command"})
    assert list(problems) == ["comand"] and "did you mean 'command'?" in problems["comand"]
