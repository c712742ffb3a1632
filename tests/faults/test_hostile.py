"""Promises 12 and 13: hostile paths are refused or not followed; hostile names arrive unchanged, never run.

Unit-level checks on the runner and the job model, property-based tests (hypothesis) over many names,
and a few end-to-end runs through the runner with real processes and real blobs.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batchyard.core.errors import JobValidationError, UnsafePathError
from batchyard.core.job import job_from_dict, tasks_from_blob_names
from batchyard.node.runner import (
    NodeContext,
    OutputFile,
    ResourceFile,
    TaskSpec,
    match_outputs,
    run_attempt,
    run_task,
    safe_relative_path,
)
from batchyard.storage.transfer import BlobTransfer

from .support import run_job, table_job, tool_command

HOSTILE_PATHS = ["../x", "/abs", "/etc/passwd", "..\\x", "a\\..\\..\\x", "a\x00b", "a/../../x", "..", "", "a/.."]


# --------------------------------------------------------------------------- 12. hostile paths
@pytest.mark.parametrize("name", HOSTILE_PATHS)
def test_safe_relative_path_refuses(name: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(name, what="test")


@pytest.mark.parametrize("name", ["a", "a/b.txt", "sub dir/x y.txt", "./a", ".hidden", "a..b"])
def test_safe_relative_path_accepts_plain_names(name: str) -> None:
    assert ".." not in safe_relative_path(name, what="test").parts


@pytest.mark.parametrize("name", [p for p in HOSTILE_PATHS if p])
def test_job_model_refuses_hostile_paths(name: str, tmp_path: Path) -> None:
    base = {"id": "j", "command": "true", "tasks": "t.csv"}
    (tmp_path / "t.csv").write_text("A\n1\n")
    for extra in ({"resource_files": [{"source": "tool.py", "file_path": name}]},
                  {"outputs": [{"pattern": name, "container": "outs"}]}):
        with pytest.raises(JobValidationError):
            job_from_dict({**base, **extra}, base_dir=tmp_path)


@pytest.mark.parametrize("blob", ["..\\evil.txt", "a/../../evil.txt", "sub/..\\..\\evil.txt", "nul\x00.txt"])
def test_blob_name_landing_outside_is_refused(blob: str, tmp_path: Path) -> None:
    job = job_from_dict({"id": "j", "command": "cat {input}", "inputs": {"container": "ins"}}, base_dir=tmp_path)
    with pytest.raises(JobValidationError) as caught:
        list(tasks_from_blob_names(job, ["fine.txt", blob]))
    assert repr(blob) in str(caught.value) and "outside the working dir" in str(caught.value)


@pytest.mark.parametrize("file_path", ["../x", "/tmp/abs-x", "..\\x", "a\x00b", "sub/../../x"])
def test_runner_refuses_resource_files_outside_the_working_dir(file_path: str, tmp_path: Path) -> None:
    spec = TaskSpec(job_id="j", task_id="t", argv=("true",),
                    resource_files=(ResourceFile(file_path=file_path, container="c", blob="b", is_input=True),))
    record, uploaded = run_attempt(spec, node=NodeContext(root=tmp_path / "node"), transfer=BlobTransfer(None))
    assert record.failure_category == "unsafe_path", record
    assert uploaded == [] and not (tmp_path / "node" / "workitems" / "j" / "job-1" / "x").exists()


def test_runner_refuses_a_task_dir_it_cannot_empty(tmp_path: Path) -> None:
    """A task dir left as a symlink (a command can plant one for a later attempt or task) is never
    staged into: the attempt fails as unsafe_path and the place it points to stays untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    node = NodeContext(root=tmp_path / "node")
    task_dir = node.task_dir("j", "t")
    task_dir.parent.mkdir(parents=True)
    task_dir.symlink_to(outside, target_is_directory=True)
    spec = TaskSpec(job_id="j", task_id="t", argv=("true",),
                    resource_files=(ResourceFile(file_path="in.txt", container="c", blob="b", is_input=True),))
    record, uploaded = run_attempt(spec, node=node, transfer=BlobTransfer(None))
    assert (record.failure_category, uploaded) == ("unsafe_path", [])
    assert "could not be emptied" in (record.failure_message or "")
    assert list(outside.iterdir()) == [], "something was written through the symlink"


@pytest.mark.parametrize("pattern", ["../../x", "../../../etc/*", "/etc/passwd", "..\\x"])
def test_runner_output_pattern_leaving_the_task_dir_is_a_task_failure(pattern: str, tmp_path: Path) -> None:
    """An OutputFile pattern (Batch API callers build them freely) that leaves the task dir fails the task as
    unsafe_path; it never raises out of the runner."""
    spec = TaskSpec(job_id="j", task_id="t", argv=("true",), output_files=(OutputFile(pattern=pattern,
                                                                                    container="c"),))
    record, uploaded = run_attempt(spec, node=NodeContext(root=tmp_path), transfer=BlobTransfer(None))
    assert (record.failure_category, uploaded) == ("unsafe_path", [])


def test_match_outputs_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    wd = tmp_path / "task" / "wd"
    (wd / "real").mkdir(parents=True)
    (wd / "real" / "ok.txt").write_text("ok")
    (wd / "leak.txt").symlink_to(outside / "secret.txt")
    (wd / "linkdir").symlink_to(outside)
    (wd / "real" / "deep.txt").symlink_to(outside / "secret.txt")
    for pattern in ("*.txt", "linkdir/*", "linkdir/secret.txt", "**/*", "*/*", "leak.txt", "real/*"):
        for path, rel in match_outputs(wd, pattern):
            assert path.resolve().is_relative_to(wd.resolve()), (pattern, path)
            assert "secret" not in path.read_text(), (pattern, rel)
    assert [rel for _, rel in match_outputs(wd, "real/*")] == ["ok.txt"]


def test_symlinks_out_of_the_working_dir_are_not_uploaded_end_to_end(project: Any, tmp_path: Path) -> None:
    """12, end to end: a command that plants symlinks to a secret outside: only its real output is uploaded."""
    outs = project.container("outputs")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET")
    job = table_job(project, "links", tool_command("links", str(outside)), ["l"],
                    outputs=[{"pattern": "*.out", "container": outs},
                             {"pattern": "linkdir/*", "container": outs, "path": "{job_id}/via-dir/",
                              "optional": True}])
    results, _ = run_job(project, job)
    assert results["KEY=l"].state == "succeeded", results
    names = sorted(project.storage.list_blob_names(outs))
    assert names == ["links/real.out"], names
    for name in names:
        assert b"TOP SECRET" not in project.storage.download_bytes(outs, name)


# --------------------------------------------------------------------------- 13. hostile names
FRAGMENTS = ["$(touch pwned)", "`touch pwned`", "'", '"', "\\", " ", "  ", "\n", "\t", ";", "|", "&&", "*", "?",
             "{input}", "{{", "}}", "{", "}", "-rf", "--", "\U0001f680", "\u00fcml\u00e4ut", "\u65e5\u672c", "$HOME",
             "%s", "~", "#", "!", ".", "-", "=", "a", "Z9"]
name_chars = st.characters(exclude_characters="/\\\x00", exclude_categories=("Cs",))
hostile_names = st.lists(st.sampled_from(FRAGMENTS) | st.text(name_chars, min_size=1, max_size=6),
                         min_size=1, max_size=8).map("".join).filter(
    lambda n: n not in (".", "..") and "/" not in n and "\\" not in n and "\x00" not in n)


def _hostile_job(tmp_path: Path, command: str) -> Any:
    return job_from_dict({"id": "hostile", "command": command, "inputs": {"container": "ins"}}, base_dir=tmp_path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=hostile_names)
@example(name="it's $(touch pwned).txt")
@example(name="back`touch pwned`tick.txt")
@example(name='dq "quoted" ; rm -rf x.txt')
@example(name="line\nbreak {input} \U0001f680.txt")
def test_placeholders_substitute_each_name_as_exactly_one_argument(name: str, tmp_path: Path) -> None:
    job = _hostile_job(tmp_path, "prog --in {input} {input_name} pre-{input_stem}-post '{input_blob}'")
    (task,) = tasks_from_blob_names(job, [f"in/{name}"])
    stem = task.argv[4].removeprefix("pre-").removesuffix("-post")
    assert task.argv == ("prog", "--in", f"in/{name}", name, f"pre-{stem}-post", f"in/{name}")
    assert name.startswith(stem) and len(task.argv) == 6
    assert task.input_path == f"in/{name}" and PurePosixPath(task.input_path).name == name


# Blob names: no leading/trailing whitespace or trailing dot (storage services normalise those away).
e2e_names = hostile_names.filter(lambda n: n.strip() == n and not n.endswith(".") and len(n.encode()) < 200)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=e2e_names)
@example(name="it's $(touch pwned) `touch pwned2`.txt")
@example(name="new\nline \"dq\" \U0001f680 {input}.dat")
def test_hostile_names_end_to_end_through_the_runner(name: str, project: Any, tmp_path: Path) -> None:
    """13, end to end: the blob is staged under its exact name, the command gets it as one argument, no shell."""
    ins = project.container("inputs")
    run_dir = tmp_path / uuid.uuid4().hex
    run_dir.mkdir()
    out = run_dir / "argv.json"
    blob = f"e2e/{name}"
    project.storage.upload_bytes(ins, blob, name.encode())
    job = _hostile_job(project.dir, tool_command("argv", str(out), "{input_name}", "{input}", "{input_stem}"))
    (task,) = tasks_from_blob_names(job, [blob])
    spec = TaskSpec(job_id=job.id, task_id=task.task_id, argv=task.argv, keep_task_dir=True,
                    resource_files=(ResourceFile(file_path=task.input_path, container=ins, blob=blob,
                                                 is_input=True),))
    node = NodeContext(root=run_dir / "node")
    outcome = run_task(spec, node=node, transfer=BlobTransfer(project.storage))
    assert outcome.succeeded, outcome
    seen = json.loads(out.read_text(encoding="utf-8"))
    assert seen["argv"][:2] == [name, blob] and name.startswith(seen["argv"][2])
    staged = Path(seen["cwd"]) / "e2e" / name
    assert staged.read_bytes() == name.encode()
    assert not list(run_dir.rglob("pwned*")) and not list(project.dir.rglob("pwned*")), "a name ran in a shell"
