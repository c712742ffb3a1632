"""One scenario suite, subclassed per backend (Libcloud's pattern): parity is tested, not hoped for.

A subclass provides a ``harness`` fixture that knows how to run a job to the end on its
backend; every scenario below then runs unchanged against it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from batchyard.backends.base import Backend, SubmitResult, TaskResult
from batchyard.core.job import Job, job_from_dict

TOOL = Path(__file__).with_name("tool.py")


class Harness:
    """Runs jobs on one backend for the scenarios. Subclasses override ``backend`` and ``execute``."""

    name = "?"

    def __init__(self, project: Any) -> None:
        self.project = project
        self.last_submit: SubmitResult | None = None

    def backend(self) -> Backend:
        raise NotImplementedError

    def execute(self, be: Backend, job: Job, before_start: Callable[[], None] | None, timeout: float) -> None:
        raise NotImplementedError

    def run(self, job: Job, *, before_start: Callable[[], None] | None = None,
            timeout: float = 240) -> dict[str, TaskResult]:
        with self.backend() as be:
            be.preflight()
            self.execute(be, job, before_start, timeout)
            counts = be.task_counts(job.id)
            assert counts.finished, f"job did not finish in {timeout}s: {counts}"
            return {r.label: r for r in be.list_task_results(job.id)}

    def log(self, job_id: str, task_id: str, stream: str = "stdout") -> bytes:
        with self.backend() as be:
            return be.read_task_log(job_id, task_id, stream=stream)


def make_job(project: Any, job_id: str, command: str, *, inputs: dict[str, Any] | None = None,
             **extra: Any) -> Job:
    (project.dir / "tool.py").write_bytes(TOOL.read_bytes())
    data: dict[str, Any] = {"id": job_id, "command": command, "resource_files": [{"source": "tool.py"}], **extra}
    if inputs is not None:
        data["inputs"] = inputs
    return job_from_dict(data, source="test", base_dir=project.dir)


class BackendScenarios:
    """The scenarios every backend must pass."""

    @pytest.fixture
    def ins(self, project: Any) -> str:
        return project.container("inputs")

    @pytest.fixture
    def outs(self, project: Any) -> str:
        return project.container("outputs")

    def test_outputs_byte_identical(self, harness: Harness, project: Any, ins: str, outs: str) -> None:
        files = {"a.txt": b"hello\r\nworld\n", "b b.txt": "caf\u00e9 \u65e5\u672c\n".encode(), "c.txt": b"\x00bin\xff"}
        project.put_inputs(ins, files, prefix="in/")
        job = make_job(project, "bytes", "python3 tool.py upper {input} {input_stem}.out",
                       inputs={"container": ins, "prefix": "in/", "glob": "*.txt"},
                       outputs=[{"pattern": "*.out", "container": outs, "path": "{job_id}/"}])
        results = harness.run(job)
        assert {r.state for r in results.values()} == {"succeeded"}, results
        for name, data in files.items():
            blob = f"bytes/{name.rsplit('.', 1)[0]}.out"
            assert project.storage.download_bytes(outs, blob) == data.upper()
        first = results["in/a.txt"]
        assert first.exit_code == 0 and first.attempts == 1
        assert b"uppercased 13 bytes" in harness.log("bytes", first.task_id)

    def test_exit_code_recorded_after_retries(self, harness: Harness, project: Any, ins: str) -> None:
        project.put_inputs(ins, {"x.txt": b"x"})
        job = make_job(project, "fails", "python3 tool.py fail 3", inputs={"container": ins},
                       constraints={"max_task_retry_count": 2})
        (result,) = harness.run(job).values()
        assert result.state == "failed"
        assert (result.exit_code, result.failure_category, result.attempts) == (3, "exit_code", 3)
        assert "failing on purpose with code 3" in result.stderr_tail
        assert b"failing on purpose" in harness.log("fails", result.task_id, "stderr")

    def test_retry_then_success(self, harness: Harness, project: Any, ins: str, outs: str, tmp_path: Path) -> None:
        project.put_inputs(ins, {"k.txt": b"k"})
        marks = tmp_path / "marks"
        marks.mkdir()
        job = make_job(project, "flaky", f"python3 tool.py flaky {marks} {{input_stem}} ok.txt",
                       inputs={"container": ins}, constraints={"max_task_retry_count": 1},
                       outputs=[{"pattern": "ok.txt", "container": outs, "path": "{job_id}/{input_stem}.txt"}])
        (result,) = harness.run(job).values()
        assert (result.state, result.attempts, result.exit_code) == ("succeeded", 2, 0)
        assert project.storage.download_bytes(outs, "flaky/k.txt") == b"ok on retry\n"

    def test_timeout_kills_the_whole_tree(self, harness: Harness, project: Any, ins: str, tmp_path: Path) -> None:
        project.put_inputs(ins, {"h.txt": b"h"})
        pidfile = tmp_path / "hang.pid"
        job = make_job(project, "hangs", f"python3 tool.py hang {pidfile}", inputs={"container": ins},
                       constraints={"max_wall_clock_time": "3s", "max_task_retry_count": 2})
        (result,) = harness.run(job).values()  # the command hangs for 300 s: "timeout" means it was killed
        assert (result.state, result.failure_category, result.attempts) == ("failed", "timeout", 1)
        assert result.exit_code == 137, "killed at the wall clock: SIGKILL as Batch reports it, on every backend"
        pids = [int(pidfile.read_text()), int(Path(f"{pidfile}.grandchild").read_text())]
        deadline = time.monotonic() + 60  # generous: only a survivor makes this wait to the end
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "a child of the timed-out command survived"

    def test_missing_input_is_permanent(self, harness: Harness, project: Any, ins: str) -> None:
        project.put_inputs(ins, {"keep.txt": b"1", "gone.txt": b"2"})
        job = make_job(project, "missing", "python3 tool.py nothing", inputs={"container": ins},
                       constraints={"max_task_retry_count": 3})
        results = harness.run(job, before_start=lambda: project.storage.container(ins).delete_blob("gone.txt"))
        gone = results["gone.txt"]
        assert (gone.state, gone.failure_category, gone.attempts) == ("failed", "input_missing", 1)
        assert "gone.txt" in (gone.failure_message or "")
        assert results["keep.txt"].state == "succeeded"

    def test_output_that_matches_nothing(self, harness: Harness, project: Any, ins: str, outs: str) -> None:
        project.put_inputs(ins, {"n.txt": b"n"})
        required = make_job(project, "noout", "python3 tool.py nothing", inputs={"container": ins},
                            outputs=[{"pattern": "*.result", "container": outs}])
        (result,) = harness.run(required).values()
        assert (result.state, result.failure_category) == ("failed", "output_missing")
        assert "*.result" in (result.failure_message or "")
        optional = make_job(project, "nooutopt", "python3 tool.py nothing", inputs={"container": ins},
                            outputs=[{"pattern": "*.result", "container": outs, "optional": True}])
        (result,) = harness.run(optional).values()
        assert result.state == "succeeded"

    def test_hostile_names_arrive_unchanged(self, harness: Harness, project: Any, ins: str, outs: str) -> None:
        names = ["it's $(touch pwned).txt", "back`touch pwned2`tick.txt", 'dq "quoted" ; rm -rf x.txt',
                 "spaces  and\ttab.txt", "emoji \U0001f680 \u00fcml\u00e4ut.txt", "-dash.txt"]
        project.put_inputs(ins, {n: n.encode() for n in names})
        job = make_job(project, "hostile", "python3 tool.py argv {task_id}.json {input} {input_name} {input_stem}",
                       inputs={"container": ins}, outputs=[{"pattern": "*.json", "container": outs}])
        results = harness.run(job)
        assert len(results) == len(names)
        for name in names:
            result = results[name]
            assert result.state == "succeeded", result
            seen = json.loads(project.storage.download_bytes(outs, f"hostile/{result.task_id}.json"))
            assert seen["argv"] == [name, name, name.rsplit(".", 1)[0]]
        assert not list(project.dir.rglob("pwned*")), "a name was executed by a shell"

    def test_environment_and_layout(self, harness: Harness, project: Any, ins: str, outs: str) -> None:
        project.put_inputs(ins, {"e.txt": b"e"})
        job = make_job(project, "envjob", "python3 tool.py argv env.json {job_id} {task_id}",
                       inputs={"container": ins}, environment={"BY_GREETING": "hi there"},
                       outputs=[{"pattern": "env.json", "container": outs, "path": "{job_id}/{task_id}.json"}])
        (result,) = harness.run(job).values()
        seen = json.loads(project.storage.download_bytes(outs, f"envjob/{result.task_id}.json"))
        env = seen["env"]
        assert seen["argv"] == ["envjob", result.task_id]
        assert env["AZ_BATCH_JOB_ID"] == "envjob" and env["AZ_BATCH_TASK_ID"] == result.task_id
        assert Path(seen["cwd"]).resolve() == Path(env["AZ_BATCH_TASK_WORKING_DIR"]).resolve()
        assert Path(env["AZ_BATCH_TASK_WORKING_DIR"]).parent == Path(env["AZ_BATCH_TASK_DIR"])
        for var in ("AZ_BATCH_NODE_ROOT_DIR", "AZ_BATCH_NODE_SHARED_DIR", "AZ_BATCH_NODE_ID", "AZ_BATCH_POOL_ID"):
            assert env.get(var), var
        assert env["BY_GREETING"] == "hi there"
        assert seen["secrets_seen"] == [], "the task inherited batchyard's credentials"

    def test_csv_task_table(self, harness: Harness, project: Any, outs: str) -> None:
        (project.dir / "sweep.csv").write_text("BY_ALPHA,BY_NAME\n0.1,first run\n0.2,it's $(x)\n", encoding="utf-8")
        job = make_job(project, "sweep", "python3 tool.py argv {task_id}.json {BY_ALPHA} {BY_NAME}",
                       tasks="sweep.csv", outputs=[{"pattern": "*.json", "container": outs}])
        results = harness.run(job)
        assert len(results) == 2
        for result in results.values():
            seen = json.loads(project.storage.download_bytes(outs, f"sweep/{result.task_id}.json"))
            row = dict(pair.split("=", 1) for pair in result.label.split(", "))
            assert seen["argv"] == [row["BY_ALPHA"], row["BY_NAME"]]
            assert seen["env"]["BY_NAME"] == row["BY_NAME"]

    def test_prefix_and_glob_select_inputs(self, harness: Harness, project: Any, ins: str) -> None:
        project.put_inputs(ins, {"data/a.txt": b"1", "data/sub/b.txt": b"2", "data/c.csv": b"3", "other/d.txt": b"4"})
        job = make_job(project, "select", "python3 tool.py nothing", inputs={"container": ins, "prefix": "data/",
                                                                             "glob": "*.txt"})
        results = harness.run(job)
        assert sorted(results) == ["data/a.txt", "data/sub/b.txt"]

    def test_resubmit_runs_only_failed(self, harness: Harness, project: Any, ins: str, tmp_path: Path) -> None:
        project.put_inputs(ins, {"ok1.txt": b"", "ok2.txt": b"", "bad.txt": b""})
        marks = tmp_path / "marks"
        marks.mkdir()
        for key in ("ok1", "ok2"):  # 'flaky' succeeds at once for these and fails once for 'bad'
            (marks / f"{key}.seen").write_text("1")
        job = make_job(project, "rerun", f"python3 tool.py flaky {marks} {{input_stem}} out.txt",
                       inputs={"container": ins})
        first = harness.run(job)
        assert {k: r.state for k, r in first.items()} == {"ok1.txt": "succeeded", "ok2.txt": "succeeded",
                                                           "bad.txt": "failed"}
        second = harness.run(job)
        submitted = harness.last_submit
        assert submitted is not None
        assert (submitted.enqueued, submitted.already_succeeded, submitted.rerun_failed) == (1, 2, 1)
        for label in ("ok1.txt", "ok2.txt"):
            assert second[label].ended_at == first[label].ended_at, "a succeeded task ran again"
        assert second["bad.txt"].state == "succeeded"

    def test_a_task_dropped_from_the_job_is_no_longer_its_own(self, harness: Harness, project: Any, outs: str,
                                                              tmp_path: Path) -> None:
        """A row of the task table edited away after it failed: the next run neither counts, lists nor
        downloads that task, so its failure no longer fails the run and its old output is not served."""
        marks = tmp_path / "marks"
        marks.mkdir()
        for key in ("ok1", "good"):  # 'flaky' succeeds at once for these, fails the first time for 'bad'
            (marks / f"{key}.seen").write_text("1")
        table = project.dir / "rows.csv"
        table.write_text("BY_NAME\nok1\nbad\n", encoding="utf-8")
        job = make_job(project, "dropped", f"python3 tool.py flaky {marks} {{BY_NAME}} {{BY_NAME}}.out",
                       tasks="rows.csv", outputs=[{"pattern": "*.out", "container": outs, "upload_on": "completion"}])
        first = harness.run(job)
        assert {k: r.state for k, r in first.items()} == {"BY_NAME=ok1": "succeeded", "BY_NAME=bad": "failed"}
        table.write_text("BY_NAME\nok1\ngood\n", encoding="utf-8")
        second = harness.run(job)
        submitted = harness.last_submit
        assert submitted is not None and submitted.rerun is not None
        assert (submitted.enqueued, submitted.already_succeeded, len(submitted.rerun.dropped)) == (1, 1, 1)
        assert "1 dropped (no longer in the job)" in submitted.rerun.summary()
        assert {k: r.state for k, r in second.items()} == {"BY_NAME=ok1": "succeeded", "BY_NAME=good": "succeeded"}
        with harness.backend() as be:
            counts = be.task_counts(job.id)
            assert (counts.total, counts.succeeded, counts.failed) == (2, 2, 0), counts
            served = sorted(blob.rsplit("/", 1)[-1] for _, blob in be.output_blobs(job.id))
        assert served == ["good.out", "ok1.out"], served


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
