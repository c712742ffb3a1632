"""The CLI tells the truth (issue #17, point 5), on the local backend and on the Batch emulator.

Cancelled is its own state in counts, tables and JSON; a summary table is never empty; no message
or help text loses a bracketed word to markup; job ids compare without case, as in Batch;
`batchyard jobs [--json]` lists jobs with backend, state, counts and times.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.core.job import job_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from two_backends import KINDS, on_backend

REPO = Path(__file__).resolve().parent.parent
# ok.txt succeeds, bad.txt fails, wait.txt runs until the job is cancelled.
BY_NAME = "sh -c 'case \"$INPUT_NAME\" in ok*) exit 0;; bad*) exit 3;; *) sleep 120;; esac'"


def poll(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true (generous deadlines: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ------------------------------------------------------------------------------------------ cancelled
@pytest.mark.timeout(240)
def test_cancelled_is_its_own_state(kind: str, project: Any, request: pytest.FixtureRequest) -> None:
    config, env = on_backend(kind, project, request)
    ins = project.container("inputs")
    project.put_inputs(ins, {"ok.txt": b"1", "bad.txt": b"2", "wait.txt": b"3"})
    job_id = f"cancel-{uuid.uuid4().hex[:6]}"
    job = job_from_dict({"id": job_id, "command": BY_NAME, "inputs": {"container": ins}}, base_dir=project.dir)
    with get_backend(None, config) as be:
        be.submit(job)
        be.start_execution(job, workers=2)  # local: two workers here; azure: nothing (the pool runs them)
        poll(lambda: (c := be.task_counts(job_id)) and (c.succeeded, c.failed, c.running) == (1, 1, 1),
             timeout=150, what="ok and bad to end while wait runs")
        be.cancel(job_id)
        counts = poll(lambda: (c := be.task_counts(job_id)).finished and c, timeout=60, what="the cancel to land")
        be.stop_execution()
        assert (counts.succeeded, counts.failed, counts.cancelled, counts.total) == (1, 1, 1, 3), counts
        states = {r.label: (str(r.state), r.failure_category) for r in be.list_task_results(job_id)}
        bad_task = next(r.task_id for r in be.list_task_results(job_id) if r.label == "bad.txt")
        # What a summary reads (brief) shows what the whole results do, in every state.
        shown = ("task_id", "label", "state", "exit_code", "attempts", "failure_category", "failure_message")
        brief, whole = ([tuple(str(getattr(r, f)) for f in shown) for r in be.list_task_results(job_id, brief=b)]
                        for b in (True, False))
        assert sorted(brief) == sorted(whole) and len(whole) == 3
        if kind == "local":  # and reads less: no attempt records, no times
            assert all(r.attempt_records == () and r.ended_at is None for r in be.list_task_results(job_id, brief=True))
            assert any(r.attempt_records for r in be.list_task_results(job_id))
    assert states == {"ok.txt": ("succeeded", None), "bad.txt": ("failed", "exit_code"),
                      "wait.txt": ("cancelled", "cancelled")}

    status = project.cli("status", job_id, "--json", env=env)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["counts"] == {"pending": 0, "running": 0, "succeeded": 1, "failed": 1, "cancelled": 1, "total": 3}
    assert {t["label"]: t["state"] for t in data["tasks"]}["wait.txt"] == "cancelled"

    text = project.cli("status", job_id, env=env)
    assert text.returncode == 0, text.stderr
    assert f"{job_id}: 1 succeeded, 1 failed, 1 cancelled, 3 total" in text.stdout
    assert re.search(r"wait\.txt\s+│\s+cancelled", text.stdout), text.stdout
    assert f"stderr of a failed task: batchyard logs {job_id} {bad_task} --stderr" in text.stdout
    assert "failed cancelled" not in text.stdout.replace("  ", " ")

    listed = project.cli("jobs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    views = {v["job_id"]: v for v in json.loads(listed.stdout)["jobs"]}
    view = views[job_id]
    assert (view["backend"], view["state"]) == ("local" if kind == "local" else "azure", "cancelled")
    assert view["counts"] == data["counts"]
    assert view["created_at"] and view["updated_at"] and view["created_at"] <= view["updated_at"]
    table = project.cli("jobs", env=env)
    assert table.returncode == 0 and re.search(rf"{job_id}\s+│\s+\w+\s+│\s+cancelled", table.stdout), table.stdout


# ------------------------------------------------------------------------------------------ summary table
@pytest.mark.timeout(240)
def test_a_summary_table_is_never_empty(project: Any) -> None:
    ins = project.container("inputs")
    project.put_inputs(ins, {f"f{i:02d}.txt": b"x" for i in range(30)})
    job_file = project.dir / "job.toml"
    job_file.write_text(f'id = "thirty"\ncommand = "true"\n[inputs]\ncontainer = "{ins}"\n', encoding="utf-8")
    ran = project.cli("run", str(job_file), timeout=200)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    rows = [line for line in ran.stdout.splitlines() if re.search(r"│\s+succeeded\s+│", line)]
    assert len(rows) == 25, ran.stdout
    assert "thirty: 30 succeeded, 0 failed, 30 total" in ran.stdout
    assert "... and 5 more succeeded (batchyard status thirty --json lists every task)" in ran.stdout


# ------------------------------------------------------------------------------------------ job ids
@pytest.mark.timeout(240)
def test_job_ids_compare_without_case(kind: str, project: Any, request: pytest.FixtureRequest) -> None:
    _, env = on_backend(kind, project, request)
    ins = project.container("inputs")
    project.put_inputs(ins, {"one.txt": b"1"})
    uid = uuid.uuid4().hex[:6]
    spelled, other = f"CaseJob-{uid}", f"casejob-{uid.upper()}"
    for job_id in (spelled, other):
        (project.dir / f"{job_id}.toml").write_text(
            f'id = "{job_id}"\ncommand = "cat {{input}}"\n[inputs]\ncontainer = "{ins}"\n', encoding="utf-8")
    first = project.cli("run", str(project.dir / f"{spelled}.toml"), env=env, timeout=200)
    assert first.returncode == 0, first.stdout + first.stderr
    second = project.cli("run", str(project.dir / f"{other}.toml"), env=env)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"'{other}' and the existing job '{spelled}' differ only in case" in second.stderr

    status = project.cli("status", other, "--json", env=env)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["job_id"] == spelled and data["counts"]["succeeded"] == 1
    task_id = data["tasks"][0]["task_id"]
    logs = project.cli("logs", other.upper(), task_id, env=env)
    assert logs.returncode == 0 and logs.stdout == "1", logs.stderr
    listed = [v["job_id"] for v in json.loads(project.cli("jobs", "--json", env=env).stdout)["jobs"]]
    assert [j for j in listed if j.lower() == spelled.lower()] == [spelled]
    deleted = project.cli("delete", other, env=env)
    assert deleted.returncode == 0 and f"job {spelled} deleted" in deleted.stderr, deleted.stderr
    assert project.cli("status", spelled, env=env).returncode == 3


# ------------------------------------------------------------------------------------------ no markup
def _azure_messages() -> Iterator[tuple[str, str]]:
    """(where, text) of every string in batchyard's source that names an [azure...] setting."""
    for path in sorted((REPO / "batchyard").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "[azure" in node.value:
                yield f"{path.relative_to(REPO)}:{node.lineno}", node.value


def test_every_message_that_names_azure_renders_it(caplog: pytest.LogCaptureFixture) -> None:
    from batchyard.cli.common import console, print_error, setup_logging

    messages = list(_azure_messages())
    assert len(messages) > 10, "the scan found too few messages to mean anything"
    setup_logging(0)
    try:
        for where, text in messages:
            tokens = re.findall(r"\[azure[^\]]*\]", text)
            with console.capture() as captured:
                print_error(text)
                logging.getLogger("batchyard.test").warning("%s", text)
            shown = captured.get()
            for token in tokens:
                assert shown.count(token) >= 2, f"{where}: {token} lost in {shown!r}"
    finally:
        logging.getLogger().handlers[:] = []


# Run in a child process: click caches each command's help option the first time a context asks, so
# rendering help here would change what docs/cli.md's generator sees later in the same session.
HELP_PROBE = """
import json, re
import click
from click.testing import CliRunner
from batchyard.cli.main import main

def commands(group, path):
    for name, command in sorted(group.commands.items()):
        yield [*path, name], command
        if isinstance(command, click.Group):
            yield from commands(command, [*path, name])

found = []
for path, command in commands(main, []):
    texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
    tokens = sorted({t for text in texts for t in re.findall(r"\\[[^\\]\\s]+\\]", text)})
    shown = CliRunner().invoke(main, [*path, "--help"], terminal_width=400)
    found.append({"path": path, "tokens": tokens, "exit": shown.exit_code, "help": " ".join(shown.output.split())})
print(json.dumps(found))
"""


def test_help_texts_keep_their_brackets() -> None:
    probe = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    helps = json.loads(probe.stdout)
    assert len(helps) > 10 and sum(len(h["tokens"]) for h in helps) > 0, "no help text with brackets was checked"
    for h in helps:
        assert h["exit"] == 0, h
        for token in h["tokens"]:
            assert token in h["help"], f"batchyard {' '.join(h['path'])} --help lost {token}"


def test_a_refused_batch_key_names_the_setting(project: Any, batch_emulator: Any) -> None:
    """The issue's own example: the hint read 'BATCHYARD_BATCH_KEY or  batch_key'."""
    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"'),
                    encoding="utf-8")
    env = {**project.env, "BATCHYARD_BATCH_URL": batch_emulator.url,
           "BATCHYARD_BATCH_ACCOUNT": batch_emulator.account_name,
           "BATCHYARD_BATCH_KEY": "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="}
    refused = project.cli("status", "anyjob", env=env)
    assert refused.returncode == 3, refused.stderr
    assert "(BATCHYARD_BATCH_KEY or [azure] batch_key)" in " ".join(refused.stderr.split()), refused.stderr


def test_piped_tables_keep_every_id_name_and_time_whole(project: Any) -> None:
    """`status`, `run`'s summary and `jobs` written to a file or a pipe: no job id, input name, state or
    time is cut to fit a width, so two long names that differ at their end stay apart."""
    ins = project.container("inputs")
    stem = "a-long-input-name-" * 8
    project.put_inputs(ins, {f"{stem}A.txt": b"a", f"{stem}B.txt": b"b"})
    job_id = f"a-very-long-job-identifier-for-piped-tables-{project.uid}"
    job_text = f'id = "{job_id}"\ncommand = "cat {{input}}"\n[inputs]\ncontainer = "{ins}"\n'
    (project.dir / "job.toml").write_text(job_text, encoding="utf-8")
    ran = project.cli("run", "job.toml", env={"COLUMNS": ""})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for shown in (ran.stdout, project.cli("status", job_id).stdout):
        assert f"{stem}A.txt" in shown and f"{stem}B.txt" in shown, shown
        assert "…" not in shown, shown
    listed = project.cli("jobs").stdout
    row = next(line for line in listed.splitlines() if job_id in line)
    assert "completed" in row and "…" not in row and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row), listed


def test_cancel_of_a_job_that_has_ended_says_so_and_leaves_it_completed(project: Any) -> None:
    (project.dir / "rows.csv").write_text("KEY\nk1\nk2\n", encoding="utf-8")
    job_id = f"ended-{project.uid}"
    (project.dir / "job.toml").write_text(f'id = "{job_id}"\ncommand = "true {{KEY}}"\ntasks = "rows.csv"\n',
                                          encoding="utf-8")
    assert project.cli("run", "job.toml").returncode == 0
    cancelled = project.cli("cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {job_id} has ended (2 succeeded" in cancelled.stderr and "nothing to cancel" in cancelled.stderr
    (view,) = [j for j in json.loads(project.cli("jobs", "--json").stdout)["jobs"] if j["job_id"] == job_id]
    assert view["state"] == "completed" and view["counts"]["cancelled"] == 0, view
