"""Change-aware re-runs (issue #17, point 1): a job run again keeps what still holds and runs what changed.

The fingerprint and the decision are pure (:mod:`batchyard.core.rerun`) and checked first; then whole
jobs, as a user runs them with the ``batchyard`` command, on the local backend and on the azure backend
against the Batch emulator: an edited input re-runs its task alone and ``download`` gives the new
output; a changed command, resource file or outputs pattern re-runs the tasks it touches and the old
pattern's outputs are not downloaded; ``--rerun TASK_ID`` and ``--rerun all``; ``plan`` shows the split.
Each task appends its input's name to $MARK, so which tasks ran is read from there, not from timing.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from batchyard.core.batch_semantics import is_output_blob
from batchyard.core.errors import JobValidationError
from batchyard.core.job import job_from_dict, tasks_from_blob_names
from batchyard.core.paths import glob_matches
from batchyard.core.rerun import (
    PARTS,
    PriorTask,
    blob_identity,
    changed_parts,
    decide,
    with_fingerprints,
)

sys.path.insert(0, str(Path(__file__).parent))
from two_backends import KINDS, on_backend


# ------------------------------------------------------------------------------------------ fingerprints
def blob_job(tmp_path: Path, **changes: Any) -> Any:
    (tmp_path / "tool.sh").write_text("echo hi\n", encoding="utf-8")
    data = {"id": "fp", "command": "sh tool.sh {input}", "inputs": {"container": "in-data"},
            "resource_files": [{"source": "tool.sh"}],
            "outputs": [{"pattern": "*.out", "container": "out-data"}], "environment": {"MODE": "fast"}}
    return job_from_dict({**data, **changes}, source="job.toml", base_dir=tmp_path)


def fingerprints(job: Any, *, content: bytes = b"abc", resources: dict[str, str] | None = None) -> dict[str, str]:
    identity = blob_identity(md5=hashlib.md5(content).digest(), etag="0x1", size=len(content))
    tasks = list(tasks_from_blob_names(job, ["a.txt"]))
    fingerprinted = with_fingerprints(job, tasks, resources=resources or {"tool.sh": "11"},
                                      identities={"a.txt": identity})
    return {t.task_id: t.fingerprint for t in fingerprinted}


@pytest.mark.parametrize(("change", "part"), [
    ({"command": "sh tool.sh -v {input}"}, ("command",)),
    ({"environment": {"MODE": "slow"}}, ("environment",)),
    ({"container_image": "alpine:3"}, ("image",)),
    ({"outputs": [{"pattern": "*.res", "container": "out-data"}]}, ("outputs",)),
])
def test_each_part_of_the_job_that_decides_a_result_is_named_when_it_changes(
        tmp_path: Path, change: dict[str, Any], part: tuple[str, ...]) -> None:
    (before,) = fingerprints(blob_job(tmp_path)).values()
    (after,) = fingerprints(blob_job(tmp_path, **change)).values()
    assert changed_parts(before, after) == part


def test_the_input_and_the_resource_files_are_read_by_content(tmp_path: Path) -> None:
    job = blob_job(tmp_path)
    (same,) = fingerprints(job).values()
    assert changed_parts(same, next(iter(fingerprints(job).values()))) == ()
    assert changed_parts(same, next(iter(fingerprints(job, content=b"abd").values()))) == ("input",)
    assert changed_parts(same, next(iter(fingerprints(job, resources={"tool.sh": "12"}).values()))) == ("resources",)
    # Constraints decide whether a task may finish, not what it produces.
    (limited,) = fingerprints(blob_job(tmp_path, constraints={"max_task_retry_count": 3})).values()
    assert changed_parts(same, limited) == ()
    # Without an MD5 the ETag stands for the content.
    assert blob_identity(md5=None, etag='"0x8D"', size=3) == "etag:0x8D:3"
    assert changed_parts("0:old", same) == PARTS  # a fingerprint of another version: everything changed


def _reference_fingerprint(job: Any, task: Any, resources: dict[str, str], identity: str | None) -> str:
    """The fingerprint as docs/job-file.md defines it, every part hashed for every task: what a
    fan-out that hashes the shared parts once must give, so no stored fingerprint changes."""
    def digest(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    environment = {**job.environment, **dict(task.environment(job))}
    parts = {"i": digest([task.input_container, task.input_blob, identity]), "c": digest(list(task.argv)),
             "r": digest(sorted(resources.items())), "m": digest(job.container_image or ""),
             "e": digest(sorted(environment.items())),
             "o": digest([out.model_dump(mode="json") for out in job.outputs])}
    return "1:" + ",".join(f"{code}={value}" for code, value in parts.items())


def test_fingerprints_are_those_of_every_part_hashed_for_every_task(tmp_path: Path) -> None:
    resources = {"tool.sh": "11", "z\u00e9.txt": "22"}
    blobs = blob_job(tmp_path, container_image="alpine:3", environment={"MODE": "f\u00e2st", "N": "1"})
    names = ["a.txt", "b/\u00e9t\u00e9.txt", "c.txt"]
    identities = {"a.txt": "md5:00:1", "b/\u00e9t\u00e9.txt": "etag:0x1:2"}  # c.txt: listed, then gone
    (tmp_path / "rows.csv").write_text("KEY,V\nk1,\u00fcber\nk2,\"a,b\"\n", encoding="utf-8")
    table = job_from_dict({"id": "fp-table", "command": "echo {KEY} {V}", "tasks": "rows.csv",
                           "environment": {"MODE": "x"}}, source="job.toml", base_dir=tmp_path)
    from batchyard.core.job import tasks_from_table

    for job, tasks, ids in ((blobs, list(tasks_from_blob_names(blobs, names)), identities),
                            (table, list(tasks_from_table(table)), {})):
        fingerprinted = with_fingerprints(job, tasks, resources=resources, identities=ids)
        assert [t.task_id for t in fingerprinted] == [t.task_id for t in tasks]
        for task, done in zip(tasks, fingerprinted, strict=True):
            identity = ids.get(task.input_blob) if task.input_blob is not None else None
            assert done.fingerprint == _reference_fingerprint(job, task, resources, identity)
            assert done == replace(task, fingerprint=done.fingerprint)  # every other field kept


def tasks_of(job: Any, names: list[str], version: str = "1") -> list[Any]:
    identities = {name: f"md5:{version}:{len(name)}" for name in names}
    return with_fingerprints(job, tasks_from_blob_names(job, names), resources={"tool.sh": "11"},
                             identities=identities)


def test_the_decision_names_every_reason_and_counts_them(tmp_path: Path) -> None:
    job = blob_job(tmp_path)
    names = [f"f{i}.txt" for i in range(8)]
    old = tasks_of(job, names)
    new = tasks_of(job, names[:2], version="2") + tasks_of(job, names[2:])
    states = ["succeeded", "succeeded", "succeeded", "failed", "cancelled", "pending", "running", "succeeded"]
    prior = {t.task_id.lower(): PriorTask(state=s, fingerprint=t.fingerprint, live=s == "running")
             for t, s in zip(old, states, strict=True)}
    del prior[old[7].task_id.lower()]
    plan = decide(job.id, new, prior)
    assert plan.kept == 1 and plan.running == 1 and plan.total == 8
    assert plan.reruns(new[0].task_id) == ("input",) and plan.reruns(new[2].task_id) == ()
    assert [plan.reruns(t.task_id) for t in new[3:]] == [("failed",), ("cancelled",), ("unfinished",), (), ("new",)]
    assert plan.summary() == "1 kept, 2 changed: input 2; 1 failed, 1 cancelled, 1 unfinished, 1 new, " \
                             "1 running (left alone)"
    assert plan.any_rerun([new[2].task_id]) is False and plan.any_rerun([new[2].task_id, new[0].task_id])
    # A failed task whose input changed since says both, the changed part first; a record of a task the
    # job no longer has is dropped (ids without case).
    gone = tasks_of(job, ["gone.txt"])[0]
    moved = {**prior, gone.task_id.lower(): PriorTask(state="failed")}  # f3 failed with its first input
    again = decide(job.id, [tasks_of(job, [names[3]], version="2")[0], *new[4:]], moved)
    assert again.reruns(old[3].task_id) == ("input", "failed"), again.reasons
    assert again.dropped == tuple(sorted(t.task_id.lower() for t in (old[0], old[1], old[2], gone)))
    assert again.summary().endswith("; 4 dropped (no longer in the job)") and again.to_dict()["dropped"] == 4


def test_the_issue_line_and_the_rerun_option(tmp_path: Path) -> None:
    job = blob_job(tmp_path)
    names = [f"f{i:02}.txt" for i in range(30)]
    old = tasks_of(job, names)
    prior = {t.task_id.lower(): PriorTask(state="succeeded", fingerprint=t.fingerprint) for t in old}
    changed = blob_job(tmp_path, command="sh tool.sh -v {input}")
    new = tasks_of(job, names[:2], version="2") + tasks_of(changed, names[2:3]) + tasks_of(job, names[3:])
    assert decide(job.id, new, prior).summary() == "27 kept, 3 changed: input 2, command 1"
    assert decide(job.id, old, prior).summary() == "30 kept"
    assert decide(job.id, old, {}).summary() == "30 new"
    one = decide(job.id, old, prior, rerun=[old[4].task_id.upper()])  # ids without case, as Batch
    assert one.rerun_ids == [old[4].task_id] and one.summary() == "29 kept, 1 requested"
    assert decide(job.id, old, prior, rerun="all").summary() == "30 requested"
    with pytest.raises(JobValidationError) as info:
        decide(job.id, old, prior, rerun=[old[0].task_id, "no-such-task"])
    assert info.value.problems == [("--rerun", "'no-such-task' is not a task of job 'fp' (`batchyard status fp` "
                                               "lists its tasks)")]
    unverified = decide(job.id, old, {k: PriorTask(state="succeeded") for k in prior})
    assert unverified.kept == 30 and "30 kept without a recorded fingerprint" in unverified.summary()


@pytest.mark.parametrize(("pattern", "prefix", "name", "expected"), [
    ("*.n", "j/", "j/a.n", True), ("*.n", "j/", "j/a.m", False), ("*.n", "j/", "j/sub/a.n", False),
    ("**/*.n", "j/", "j/sub/a.n", True), ("**/*.n", "j/", "j/a.n", True), ("out/*.n", "j/x", "j/x/a.n", True),
    ("r.txt", "j/", "j/r.txt", True), ("r.txt", "j/", "j/other.txt", False), ("r.txt", "j/named", "j/named", True),
    ("*.n", "j/a", "j/ab/x.n", False), ("*", "", "x.n", True),
])
def test_an_output_blob_is_told_by_the_pattern_that_made_it(pattern: str, prefix: str, name: str,
                                                             expected: bool) -> None:
    assert is_output_blob(pattern, prefix, name) is expected


def test_glob_matches_reads_names_as_path_glob_does() -> None:
    assert glob_matches("a/b/c.txt", "**/*.txt") and glob_matches("c.txt", "**/*.txt")
    assert not glob_matches("a/c.txt", "*.txt") and glob_matches("a/c.txt", "a/*.txt")


# ------------------------------------------------------------------------------------------ whole jobs
SCRIPT_LINES = 'echo "$INPUT" >> "$MARK"\nwc -l < "$1" | tr -d " " > "$2"\n'
SCRIPT_BYTES = 'echo "$INPUT" >> "$MARK"\nwc -c < "$1" | tr -d " " > "$2"\n'
JOB_TOML = """\
id = "{job_id}"
command = "sh count.sh {{input}} {{input_stem}}.{ext}{extra}"

[inputs]
container = "{ins}"

[[resource_files]]
source = "count.sh"

[[outputs]]
pattern = "*.{ext}"
container = "{outs}"
path = "{{job_id}}/"

[environment]
MARK = "{mark}"
"""
INPUTS = {"a.txt": b"1\n", "b.txt": b"1\n2\n", "c.txt": b"1\n2\n3\n"}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Scene:
    """One test's job: its files, its backend's environment, and what each run did."""

    def __init__(self, kind: str, project: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.config, self.env = on_backend(kind, project, request)
        self.project = project
        self.ins, self.outs = project.container("inputs"), project.container("outputs")
        project.put_inputs(self.ins, INPUTS)
        self.mark = tmp_path / "mark"
        self.job_id = f"rerun-{uuid.uuid4().hex[:6]}"
        self.job_file = project.dir / "job.toml"
        self.write(ext="n", script=SCRIPT_LINES)

    def write(self, *, ext: str, script: str, extra: str = "") -> None:
        (self.project.dir / "count.sh").write_text(script, encoding="utf-8")
        self.job_file.write_text(JOB_TOML.format(job_id=self.job_id, ins=self.ins, outs=self.outs, mark=self.mark,
                                                 ext=ext, extra=extra), encoding="utf-8")

    def run(self, *args: str, expect: int = 0) -> tuple[str, list[str]]:
        """``batchyard run``: its announcement (one line) and the inputs whose task ran."""
        self.mark.unlink(missing_ok=True)
        done = self.project.cli("run", str(self.job_file), *args, env=self.env, timeout=240)
        assert done.returncode == expect, done.stdout + done.stderr
        text = " ".join(done.stderr.split())
        ran = sorted(self.mark.read_text().split()) if self.mark.exists() else []
        return text, ran

    def plan(self, *args: str) -> dict[str, Any]:
        done = self.project.cli("plan", str(self.job_file), "--json", *args, env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def download(self, dest: Path) -> dict[str, str]:
        done = self.project.cli("download", self.job_id, str(dest), env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        folder = dest / self.outs / self.job_id
        return {p.name: p.read_text().strip() for p in sorted(folder.iterdir())} if folder.exists() else {}

    def task_id(self, name: str) -> str:
        job = job_from_dict({"id": self.job_id, "command": "x", "inputs": {"container": self.ins}})
        (task,) = tasks_from_blob_names(job, [name])
        return task.task_id


@pytest.mark.timeout(480)
def test_an_edited_input_reruns_its_task_alone_and_plan_and_rerun_say_so(
        kind: str, project: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    scene = Scene(kind, project, request, tmp_path)
    text, ran = scene.run()
    assert "3 tasks, 3 queued: 3 new" in text and ran == sorted(INPUTS)

    assert scene.plan()["rerun"]["summary"] == "3 kept"
    text, ran = scene.run()
    assert "3 tasks, 0 queued: 3 kept" in text and ran == []

    project.put_inputs(scene.ins, {"b.txt": b"only one line now\n"})
    planned = scene.plan()["rerun"]
    assert planned["summary"] == "2 kept, 1 changed: input 1"
    assert planned["tasks"] == {scene.task_id("b.txt"): ["input"]}
    text, ran = scene.run()
    assert "3 tasks, 1 queued: 2 kept, 1 changed: input 1" in text and ran == ["b.txt"]
    assert scene.download(tmp_path / "got") == {"a.n": "1", "b.n": "1", "c.n": "3"}

    text, ran = scene.run("--rerun", scene.task_id("c.txt").upper())
    assert "1 queued: 2 kept, 1 requested" in text and ran == ["c.txt"]
    assert scene.plan("--rerun", "all")["rerun"]["summary"] == "3 requested"
    text, ran = scene.run("--rerun", "all")
    assert "3 queued: 3 requested" in text and ran == sorted(INPUTS)

    refused = project.cli("run", str(scene.job_file), "--rerun", "nope-123", env=scene.env)
    assert refused.returncode == 2
    assert "--rerun: 'nope-123' is not a task of job" in " ".join(refused.stderr.split())
    planned = project.cli("plan", str(scene.job_file), "--json", "--rerun", "nope-123", env=scene.env)
    assert planned.returncode == 1
    assert {f["code"] for f in json.loads(planned.stdout)["findings"]} >= {"rerun-unknown-task"}


@pytest.mark.timeout(480)
def test_a_changed_script_command_or_pattern_reruns_the_tasks_and_old_outputs_are_not_served(
        kind: str, project: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    scene = Scene(kind, project, request, tmp_path)
    scene.run()
    assert scene.download(tmp_path / "first") == {"a.n": "1", "b.n": "2", "c.n": "3"}

    scene.write(ext="n", script=SCRIPT_BYTES)  # the resource file's content changes
    text, ran = scene.run()
    assert "3 queued: 3 changed: resources 3" in text and ran == sorted(INPUTS)
    assert scene.download(tmp_path / "bytes") == {"a.n": "2", "b.n": "4", "c.n": "6"}  # replaced

    scene.write(ext="n", script=SCRIPT_BYTES, extra=" --verbose")  # the command alone (the script ignores it)
    text, ran = scene.run()
    assert "3 queued: 3 changed: command 3" in text and ran == sorted(INPUTS)

    scene.write(ext="m", script=SCRIPT_BYTES)  # another output name in the command and the pattern
    assert scene.plan()["rerun"]["summary"] == "3 changed: command 3, outputs 3"
    text, ran = scene.run()
    assert "3 queued: 3 changed: command 3, outputs 3" in text and ran == sorted(INPUTS)
    assert scene.download(tmp_path / "pattern") == {"a.m": "2", "b.m": "4", "c.m": "6"}  # no *.n any more
    # The old outputs are still in their container: download follows the records, not a listing.
    assert project.storage.download_bytes(scene.outs, f"{scene.job_id}/a.n").strip() == b"2"


@pytest.mark.timeout(300)
def test_the_python_api_keeps_what_holds_and_reruns_on_request(project: Any) -> None:
    from batchyard import map_lines

    ins, outs = project.container("inputs"), project.container("outputs")
    project.put_inputs(ins, {"a.txt": b"x\n", "b.txt": b"y\n"})

    def upper(**options: Any) -> Any:
        run = map_lines(str.upper, inputs=f"{ins}/*.txt", outputs=f"{outs}/{{job_id}}/", job_id="api-rerun",
                        config=project.config(), workers=2, timeout=240, **options)
        assert run.succeeded, run.results()
        return run.submitted.rerun.summary()

    assert upper() == "2 new"
    assert upper() == "2 kept"
    project.put_inputs(ins, {"b.txt": b"z\n"})
    assert upper() == "1 kept, 1 changed: input 1"
    assert project.storage.download_bytes(outs, "api-rerun/b.txt") == b"Z\n"
    assert upper(rerun="all") == "2 requested"
    with pytest.raises(JobValidationError, match="'nope' is not a task of job 'api-rerun'"):
        upper(rerun=["nope"])


SCRIPT_FAILS_ON_FAIL = 'echo "$INPUT" >> "$MARK"\n! grep -q FAIL "$1" || exit 4\nwc -l < "$1" | tr -d " " > "$2"\n'


@pytest.mark.timeout(480)
def test_a_download_says_when_a_shared_path_may_hold_a_failed_tasks_earlier_output(
        kind: str, project: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    scene = Scene(kind, project, request, tmp_path)
    scene.write(ext="n", script=SCRIPT_FAILS_ON_FAIL)
    assert scene.run()[1] == sorted(INPUTS)
    first = project.cli("download", scene.job_id, str(tmp_path / "first"), env=scene.env)
    assert first.returncode == 0 and "file(s) written" in first.stderr and "note:" not in first.stderr, first.stderr

    project.put_inputs(scene.ins, {"b.txt": b"FAIL\n"})  # its task now fails; b.n of its first run stays
    assert scene.run(expect=1)[1] == ["b.txt"]
    again = project.cli("download", scene.job_id, str(tmp_path / "again"), env=scene.env)
    assert again.returncode == 0, again.stdout + again.stderr
    text = " ".join(again.stderr.split())  # (what the command says goes to stderr; stdout is for data)
    assert "note: 1 task(s) failed, and output path(s) '{job_id}/' are shared by every task" in text, text
    assert "A per-task path" in text
