"""Every bad input a clear error, never a traceback (issue #23, point 6): a job file or config that is
not UTF-8 TOML, TOML nested too deep, CSV values no task can receive, a key that is not base64, text
that looks like Rich markup, endpoints that are not http(s), a command too long to split."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchyard.analysis.plan import make_plan
from batchyard.backends import get_backend
from batchyard.cli.plan import plan as plan_command
from batchyard.core.config import load_config
from batchyard.core.errors import ConfigError, JobValidationError
from batchyard.core.job import job_from_dict, load_job, tasks_from_table
from batchyard.storage.account import StorageAccount

GOOD_JOB = 'id = "fine"\ncommand = "echo {input}"\n[inputs]\ncontainer = "in-data"\n'
NOT_BASE64_KEY = "not*a*base64*key!!-7d1e0c"


def job_problem(path: Path) -> str:
    with pytest.raises(JobValidationError) as info:
        load_job(path)
    ((where, problem),) = info.value.problems
    assert str(info.value).startswith(str(path))
    return f"{where}: {problem}"


@pytest.mark.parametrize(("data", "words"), [
    (GOOD_JOB.encode("utf-16"), "UTF-16"),  # with a byte-order mark, as Windows tools write it
    (GOOD_JOB.encode("utf-16-le"), "NUL bytes (first on line 1)"),  # without one
    (bytes(range(128, 256)) * 4, "not UTF-8 text (byte 0x80 on line 1)"),
    (b"a = " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested too deeply"),
])
def test_job_files_that_are_not_utf8_toml(tmp_path: Path, data: bytes, words: str) -> None:
    (tmp_path / "job.toml").write_bytes(data)
    assert words in job_problem(tmp_path / "job.toml")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_bytes(GOOD_JOB.encode("utf-8-sig"))
    assert load_job(tmp_path / "job.toml").id == "fine"


def test_config_files_get_the_same_reading(tmp_path: Path) -> None:
    (tmp_path / "batchyard.toml").write_bytes('backend = "local"\n'.encode("utf-16"))
    with pytest.raises(ConfigError, match="UTF-16"):
        load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(tmp_path / "home")})
    (tmp_path / "batchyard.toml").write_bytes(b"x = " + b"{a = " * 30_000 + b"1" + b"}" * 30_000 + b"\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(tmp_path / "home")})


def test_the_cli_says_it_in_one_line(project: Any) -> None:
    (project.dir / "job.toml").write_bytes(GOOD_JOB.encode("utf-16"))
    result = project.cli("run", "job.toml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the file is UTF-16 text; TOML files are UTF-8" in " ".join(result.stderr.split())


def table_job(folder: Path, csv_text: str) -> Any:
    (folder / "rows.csv").write_text(csv_text, encoding="utf-8")
    (folder / "job.toml").write_text('id = "rows"\ncommand = "echo {a} {b}"\ntasks = "rows.csv"\n', encoding="utf-8")
    return load_job(folder / "job.toml")


@pytest.mark.parametrize(("cell", "words"), [
    ("x" * 140_000, "rows.csv line 3: a value is over 128 KiB"),  # past the csv module's own limit
    ("nul\x00inside", "rows.csv line 3, column b: the value contains a NUL character"),
])
def test_csv_values_no_task_can_receive(tmp_path: Path, cell: str, words: str) -> None:
    job = table_job(tmp_path, f"a,b\n1,fine\n2,{cell}\n")
    with pytest.raises(JobValidationError) as info:
        list(tasks_from_table(job))
    assert words in str(info.value)
    (tmp_path / "batchyard.toml").write_text("", encoding="utf-8")
    config = load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(tmp_path / "home")})
    plan = make_plan(tmp_path / "job.toml", config, active_jobs=0, durations=[])
    assert plan.has_errors and any(words in f.message for f in plan.findings if f.code == "job-invalid")


def test_the_value_limit_holds_when_the_csv_module_allows_more(tmp_path: Path) -> None:
    """A program embedding batchyard may raise csv's (process-wide) field limit: values stay bounded."""
    job = table_job(tmp_path, f"a,b\n1,fine\n2,{'x' * 140_000}\n")
    previous = csv.field_size_limit(1 << 20)
    try:
        with pytest.raises(JobValidationError, match=r"rows\.csv line 3, column b: the value is over 128 KiB"):
            list(tasks_from_table(job))
    finally:
        csv.field_size_limit(previous)


def test_a_value_of_128_kib_is_still_read(tmp_path: Path) -> None:
    job = table_job(tmp_path, f"a,b\n1,{'x' * 131_072}\n")
    (task,) = tasks_from_table(job)
    assert len(dict(task.params)["b"]) == 131_072


def test_csv_in_utf16_or_binary(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_bytes("a,b\n1,2\n".encode("utf-16"))
    with pytest.raises(JobValidationError, match="UTF-16"):
        job_from_dict({"id": "rows", "command": "echo {a}", "tasks": "rows.csv"}, base_dir=tmp_path)
    rows = b"".join(b"%d,2\n" % i for i in range(20_000))  # the bad bytes come long after the header
    (tmp_path / "rows.csv").write_bytes(b"a,b\n" + rows + bytes(range(128, 256)))
    job = job_from_dict({"id": "rows", "command": "echo {a}", "tasks": "rows.csv"}, base_dir=tmp_path)
    with pytest.raises(JobValidationError, match=r"tasks: rows.csv is not UTF-8 text \(byte 0x80 near line \d+\)"):
        list(tasks_from_table(job))


def test_submit_refuses_a_nul_before_queueing_anything(project: Any) -> None:
    job = table_job(project.dir, "a,b\n1,fine\n2,nul\x00inside\n")
    with get_backend(None, project.config()) as be, pytest.raises(JobValidationError, match="NUL"):
        be.submit(job)
    assert project.visible_messages() == []


def test_a_command_too_long_is_refused_before_it_is_split() -> None:
    with pytest.raises(JobValidationError) as info:
        job_from_dict({"id": "long", "command": "echo " + "a" * 1_000_000, "inputs": {"container": "in-data"}})
    assert "is 1,000,005 characters long; at most 32,767" in dict(info.value.problems)["command"]
    assert job_from_dict({"id": "ok", "command": "echo " + "a" * 32_000, "inputs": {"container": "in-data"}})


def test_an_account_key_that_is_not_base64(project: Any) -> None:
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={NOT_BASE64_KEY};"
            "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;")
    with pytest.raises(ConfigError) as info:
        StorageAccount.from_connection_string(conn)
    assert "AccountKey is not base64" in str(info.value) and NOT_BASE64_KEY not in str(info.value)
    result = project.cli("status", "anyjob", env={"AZURE_STORAGE_CONNECTION_STRING": conn})
    assert result.returncode == 2 and "AccountKey is not base64" in result.stderr
    assert "Traceback" not in result.stderr and NOT_BASE64_KEY not in result.stderr + result.stdout


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;AccountKey=a2V5;BlobEndpoint=ftp://127.0.0.1:21/a",
     "(BlobEndpoint): ftp://127.0.0.1 is not an http:// or https:// endpoint"),
    ("AZURE_STORAGE_CONNECTION_STRING", "DefaultEndpointsProtocol=ftp;AccountName=a;AccountKey=a2V5",
     "DefaultEndpointsProtocol='ftp'; only http and https"),
    ("BATCHYARD_BATCH_URL", "ftp://127.0.0.1:21", "Batch account URL"),
    ("BATCHYARD_BATCH_URL", "file:///etc/passwd", "file:// is not an http:// or https:// endpoint"),
])
def test_only_http_endpoints(tmp_path: Path, variable: str, value: str, words: str) -> None:
    (tmp_path / "batchyard.toml").write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(tmp_path / "home"), variable: value})
    assert words in str(info.value)


MARKUP = "[/red][bold]x"


def test_markup_in_a_path_prints_as_written(project: Any) -> None:
    folder = project.dir / MARKUP
    result = project.cli("run", str(folder / "job.toml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{folder / 'job.toml'}: 1 problem(s)" in result.stderr and "file not found" in result.stderr


def test_markup_in_values_prints_as_written(project: Any) -> None:
    (project.dir / "rows.csv").write_text(f'label\n"{MARKUP}"\n[red]\n', encoding="utf-8")
    (project.dir / "job.toml").write_text(f'id = "markup-{project.uid}"\ncommand = "{sys.executable} -c '
                                          '\\"import sys; sys.exit(sys.argv[1] == \'[red]\')\\" {label}"\n'
                                          'tasks = "rows.csv"\n', encoding="utf-8")
    result = project.cli("run", "job.toml")
    assert result.returncode == 1, result.stderr  # one task fails on purpose: its row shows in red, as written
    assert "Traceback" not in result.stderr + result.stdout
    assert f"label={MARKUP}" in result.stdout and "label=[red]" in result.stdout


def test_plan_text_prints_markup_as_written(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text(f'label\n"{MARKUP}"\n', encoding="utf-8")
    (tmp_path / "job.toml").write_text('id = "markup"\ncommand = "echo {label}"\ntasks = "rows.csv"\n',
                                       encoding="utf-8")
    (tmp_path / "batchyard.toml").write_text("", encoding="utf-8")
    env = {"BATCHYARD_HOME": str(tmp_path / "home"), "AZURE_STORAGE_CONNECTION_STRING": "", "BATCHYARD_BACKEND": ""}
    result = CliRunner().invoke(plan_command, [str(tmp_path / "job.toml"), "--config",
                                               str(tmp_path / "batchyard.toml")], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert f"argv {json.dumps(['echo', MARKUP])}" in result.output


@pytest.mark.parametrize(("setting", "words"), [
    ('[azure]\nsas_margin = "soon"', "azure.sas_margin: 'soon' is not a duration"),
    ('[azure]\nsteady_timeout = "0s"', "azure.steady_timeout: a duration must be positive"),
    ('[azure.pool]\nresize_timeout = "1 fortnight"', "azure.pool.resize_timeout: '1 fortnight' is not a duration"),
])
def test_durations_in_the_config_are_checked_when_it_loads(tmp_path: Path, setting: str, words: str) -> None:
    (tmp_path / "batchyard.toml").write_text(setting + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(tmp_path / "home")})
    assert words in str(info.value)
