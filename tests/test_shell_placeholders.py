"""Placeholders are data, also inside a shell string (issue #17, point 3).

A placeholder inside a ``sh -c`` script is substituted shell-quoted for where it stands, so any
file name reaches the command as one word and nothing in it runs; each placeholder is also an
environment variable of the task. Checked with real shells, then on the local backend and on the
azure backend against the Batch emulator with the issue's own file names.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.core.errors import JobValidationError
from batchyard.core.job import job_from_dict, tasks_from_blob_names, tasks_from_table
from batchyard.core.placeholders import split_command, substitute_command
from batchyard.core.shell_scripts import script_positions

sys.path.insert(0, str(Path(__file__).parent))
from two_backends import KINDS, on_backend

# The issue's file names: each embeds a command that appends to $MARK if it ever runs.
ISSUE_NAMES = ("a $(echo 1 >>$MARK).txt", "b;echo 2 >>$MARK;.txt", "e`echo 3 >>$MARK`.txt")
HOSTILE = (*ISSUE_NAMES, "it's \"q\" \\ x.txt", "n\nl;echo 4 >>$MARK", "'$(echo 5 >>$MARK)'", "\\", "'", '"',
           "$MARK", "*", "-n", "", " sp ", "x\nEOF\necho 6 >>$MARK\n", ")", "$(", "`")
# Scripts with the placeholder in every kind of place, and what printf must print for a value.
SCRIPTS = {
    "plain": ("printf %s {v}", lambda v: v),
    "double quotes": ('printf %s "pre {v} post"', lambda v: f"pre {v} post"),
    "single quotes": ("printf %s 'pre {v} post'", lambda v: f"pre {v} post"),
    "inside a word": ("printf %s x{v}y", lambda v: f"x{v}y"),
    "command substitution": ('printf %s "$(printf %s "a ( b" {v})"', lambda v: "a ( b" + v.rstrip("\n")),
    "backquotes": ('x=`printf %s {v}`; printf %s "$x"', lambda v: v.rstrip("\n")),
    "here-document": ("cat <<EOF\n{v}\nEOF", lambda v: v + "\n"),
    "parameter with quotes": ('printf %s "${{HOME:+""}}{v}"', lambda v: v),
    "after a comment": ("printf %s {v} # {v}\n", lambda v: v),
}
SHELLS = [name for name in ("sh", "dash", "bash", "zsh", "ksh", "mksh") if shutil.which(name)]


def argv_of(command: str, value: str) -> tuple[str, ...]:
    return substitute_command(command, {"input": value})


# ------------------------------------------------------------------------------------------ real shells
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("where", sorted(SCRIPTS))
def test_a_value_arrives_whole_and_never_runs(shell: str, where: str, tmp_path: Path) -> None:
    script, expected = SCRIPTS[where]
    mark = tmp_path / "mark"
    for value in HOSTILE:
        argv = argv_of(f"{shell} -c {shlex.quote(script.replace('{v}', '{input}'))}", value)
        # INPUT as a task has it: a script with nested quoting reads the value from there.
        done = subprocess.run(argv, capture_output=True, text=True,
                              env={**os.environ, "MARK": str(mark), "INPUT": value}, timeout=30)
        assert not mark.exists(), f"{shell}, {where}: {value!r} ran code: argv {argv}"
        assert done.stdout == expected(value), f"{shell}, {where}: {value!r} -> {done.stdout!r} ({done.stderr})"


def test_quoting_follows_the_place_and_plain_arguments_stay_verbatim() -> None:
    name = ISSUE_NAMES[0]
    assert argv_of("sh -c 'wc -l < {input}'", name) == ("sh", "-c", "wc -l < 'a $(echo 1 >>$MARK).txt'")
    assert argv_of("sh -c 'cat \"{input}\"'", name) == ("sh", "-c", 'cat "a \\$(echo 1 >>\\$MARK).txt"')
    assert argv_of("sh -c \"cat '{input}'\"", "it's") == ("sh", "-c", "cat 'it'\\''s'")
    # A script with nested quoting gets the variable instead of the value.
    assert argv_of("sh -c 'x=$(cat {input})'", name) == ("sh", "-c", 'x=$(cat "${INPUT}")')
    # Outside a script (and as the script's positional parameter) a value is one argument, verbatim.
    assert argv_of("wc -l {input}", name) == ("wc", "-l", name)
    assert argv_of("sh -c 'wc -l < \"$1\"' sh {input}", name) == ("sh", "-c", 'wc -l < "$1"', "sh", name)
    assert argv_of("sh script.sh {input}", name) == ("sh", "script.sh", name)


@pytest.mark.parametrize(("command", "scripts"), [
    ("sh -c 'x'", {2}), ("/bin/sh -c 'x'", {2}), ("/usr/bin/env bash -c 'x'", {3}),
    ("env A=1 B=2 dash -c 'x'", {5}), ("bash -euo pipefail -c 'x'", {4}), ("bash -ec 'x' name {input}", {2}),
    ("zsh -o errexit -c 'x'", {4}), ("busybox sh -c 'x'", {3}), ("bash --norc -c 'x'", {3}),
    ("bash --rcfile f -c 'x'", {4}), ("sh -c -- 'x'", {3}), ("nice -n 5 /usr/local/bin/bash -c 'x'", {5}),
    ("sh -c 'exec \"$@\"' sh bash -c 'x'", {2, 6}), ("sh script.sh", set()), ("bash -e", set()),
    ("python3 -c 'x'", set()), ("cat sh", set()), ("fish -c 'x'", set()),
])
def test_which_argument_is_a_shell_script(command: str, scripts: set[int]) -> None:
    assert set(script_positions(split_command(command))) == scripts


@pytest.mark.parametrize(("command", "words"), [
    ("sh -c 'echo ${input}'", "after '$' would be read as a shell variable"),
    ("sh -c 'echo \\{input}'", "follows a backslash"),
    ("sh -c \"echo '{input}\"", "quotes do not close"),
    ("sh -c 'cat <<\"EOF\"\n{input}\nEOF'", "here-document whose delimiter is quoted"),
    ("sh -c 'cat <<{input}\nx'", "here-document's delimiter"),
    ("sh -c 'echo {nope}'", "unknown placeholder {nope}"),
])
def test_a_placeholder_that_cannot_be_placed_safely_is_refused(command: str, words: str) -> None:
    with pytest.raises(JobValidationError) as info:
        job_from_dict({"id": "j", "command": command, "inputs": {"container": "abc"}}, source="job.toml")
    ((field, problem),) = info.value.problems
    assert "command" in f"{field} {problem}" and words in problem, problem


# ------------------------------------------------------------------------------------------ variables
def test_each_placeholder_is_also_a_variable(tmp_path: Path) -> None:
    job = job_from_dict({"id": "vars", "command": "true", "inputs": {"container": "abc", "prefix": "in/"}})
    (task,) = tasks_from_blob_names(job, ["in/sub/b;c.tar.gz"])
    assert dict(task.environment(job)) == {
        "INPUT": "sub/b;c.tar.gz", "INPUT_NAME": "b;c.tar.gz", "INPUT_STEM": "b;c.tar",
        "INPUT_BLOB": "in/sub/b;c.tar.gz", "JOB_ID": "vars", "TASK_ID": task.task_id}
    (tmp_path / "rows.csv").write_text("sample,n\nx y,1\n", encoding="utf-8")
    sweep = job_from_dict({"id": "sweep", "command": "sh -c 'echo {sample}'", "tasks": "rows.csv"}, base_dir=tmp_path)
    (row,) = tasks_from_table(sweep)
    assert dict(row.environment(sweep)) == {"JOB_ID": "sweep", "TASK_ID": row.task_id, "sample": "x y", "n": "1"}
    assert row.argv == ("sh", "-c", "echo 'x y'")


def test_the_placeholder_variables_are_reserved(tmp_path: Path) -> None:
    with pytest.raises(JobValidationError, match=r"environment: 'INPUT' is reserved: batchyard sets it to the "
                                                 r"value of \{input\}"):
        job_from_dict({"id": "j", "command": "true", "inputs": {"container": "abc"}, "environment": {"INPUT": "x"}})
    (tmp_path / "rows.csv").write_text("TASK_ID,n\n1,2\n", encoding="utf-8")
    with pytest.raises(JobValidationError, match=r"tasks: column 'TASK_ID' is reserved"):
        job_from_dict({"id": "j", "command": "true", "tasks": "rows.csv"}, base_dir=tmp_path)


# ------------------------------------------------------------------------------------------ whole jobs
JOB_TOML = """\
id = "{job_id}"
command = "sh -c 'wc -l < {{input}} > {{input_stem}}.n; wc -c < \\"$INPUT\\" > \\"$INPUT_STEM\\".c'"

[inputs]
container = "{ins}"

[[outputs]]
pattern = "*.[nc]"
container = "{outs}"
path = "{{job_id}}/"

[environment]
MARK = "{mark}"
"""


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.timeout(180)
def test_the_issue_file_names_run_nothing(kind: str, project: Any, request: pytest.FixtureRequest,
                                          tmp_path: Path) -> None:
    """The issue's job, as a user writes it, with its three hostile names: `plan` shows the quoted
    argv, `run` succeeds, every output holds the right count and $MARK is never written."""
    config, env = on_backend(kind, project, request)
    ins, outs = project.container("inputs"), project.container("outputs")
    contents = {name: ("line\n" * (i + 1)).encode() for i, name in enumerate(ISSUE_NAMES)}
    project.put_inputs(ins, contents)
    mark = tmp_path / "mark"
    job_id = f"shell-{uuid.uuid4().hex[:6]}"
    job_file = project.dir / "job.toml"
    job_file.write_text(JOB_TOML.format(job_id=job_id, ins=ins, outs=outs, mark=mark), encoding="utf-8")

    planned = project.cli("plan", str(job_file), "--json", "--show", "10", env=env)
    assert planned.returncode == 0, planned.stderr
    scripts = {row["label"]: row["argv"][2] for row in json.loads(planned.stdout)["sample"]}
    assert scripts[ISSUE_NAMES[1]].startswith("wc -l < 'b;echo 2 >>$MARK;.txt' > 'b;echo 2 >>$MARK;'.n; ")

    ran = project.cli("run", str(job_file), env=env, timeout=150)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert not mark.exists(), f"an embedded command ran: {mark.read_text()!r}"
    with get_backend(None, config) as be:
        assert {r.label: str(r.state) for r in be.list_task_results(job_id)} == dict.fromkeys(ISSUE_NAMES, "succeeded")
    for name, data in contents.items():
        stem = name.rsplit(".", 1)[0]
        assert project.storage.download_bytes(outs, f"{job_id}/{stem}.n").strip() == str(data.count(b"\n")).encode()
        assert project.storage.download_bytes(outs, f"{job_id}/{stem}.c").strip() == str(len(data)).encode()
