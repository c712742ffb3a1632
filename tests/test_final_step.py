"""The final step (``[final]``): one task after all the per-file tasks, with their outputs listed.

On the local backend and on the azure backend against the Batch emulator (through the real SDK):
it runs once after every task succeeded and sees the listing (and, staged, the outputs); it does
not run when a task failed unless ``run_when = "completed"``; ``status`` shows it apart; a re-run
that runs no per-file task and keeps its definition does not run it again.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.core.job import job_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from two_backends import KINDS, on_backend

pytestmark = pytest.mark.timeout(240)

# Each per-file task writes <stem>.out; the one named 'bad.txt' fails while the file $FAIL_FLAG exists
# (a file, not a variable: the job's definition, hence each task's fingerprint, stays the same).
PER_FILE = ("sh -c 'if [ \"$INPUT_NAME\" = bad.txt ] && [ -e \"$FAIL_FLAG\" ]; then exit 3; fi; "
            "tr a-z A-Z < \"$INPUT\" > \"$INPUT_STEM\".out'")
# The final step copies the listing, writes how many staged files it saw, and counts its own runs.
FINAL = ("sh -c 'cp outputs.jsonl listing.jsonl; find outputs -type f 2>/dev/null | sort > staged.txt; "
         "echo run >> \"$RUNS\"'")


def _job(job_id: str, ins: str, outs: str, final_outs: str, *, runs: Path, fail: bool = False,
         run_when: str = "succeeded", stage: bool = True, tag: str = "") -> Any:
    runs.with_suffix(".fail").unlink(missing_ok=True)
    if fail:
        runs.with_suffix(".fail").write_text("fail")
    return job_from_dict({
        "id": job_id, "command": PER_FILE, "inputs": {"container": ins},
        "outputs": [{"pattern": "*.out", "container": outs}],
        "environment": {"FAIL_FLAG": str(runs.with_suffix(".fail")), "RUNS": str(runs)},
        "final": {"command": FINAL + tag, "run_when": run_when, "stage_outputs": stage,
                  "outputs": [{"pattern": "*.txt", "container": final_outs},
                              {"pattern": "listing.jsonl", "container": final_outs}]},
    })


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _setup(kind: str, project: Any, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, str, str, str, Path]:
    config, _ = on_backend(kind, project, request)
    ins, outs, final_outs = project.container("inputs"), project.container("outputs"), project.container("final")
    project.put_inputs(ins, {"a.txt": b"alpha\n", "b c.txt": b"beta\n", "bad.txt": b"gamma\n"})
    return config, ins, outs, final_outs, tmp_path / "runs"


def test_final_step_runs_once_after_all_succeed_and_sees_the_outputs(kind: str, project: Any,
                                                                     request: pytest.FixtureRequest,
                                                                     tmp_path: Path) -> None:
    config, ins, outs, final_outs, runs = _setup(kind, project, request, tmp_path)
    job_id = f"fin-{uuid.uuid4().hex[:8]}"
    job = _job(job_id, ins, outs, final_outs, runs=runs)
    with get_backend(None, config) as be:
        be.submit(job)
        counts = be.run_to_end(job, timeout=200)
        assert counts.succeeded == 3 and counts.total == 3, counts  # the final step is not counted
        view = be.final_step(job_id)
        assert view is not None and view.state == "succeeded", view
        per_file = {r.task_id for r in be.list_task_results(job_id)}
        assert len(per_file) == 3 and "final-step" not in per_file
        listed = next(v for v in be.list_jobs() if v.job_id == job_id)  # `batchyard jobs` counts the same
        assert listed.counts is not None and listed.counts.total == 3, listed
        if kind == "emulator":  # Batch holds it through dependencies: the job uses them, the task names its own
            assert be.client.get_job(job_id).uses_task_dependencies is True
            assert set(be.client.get_task(job_id, "final-step").depends_on.task_ids) == per_file
    assert runs.read_text() == "run\n"
    with get_backend(None, config) as be:  # `download` serves the final step's outputs with the per-file ones
        served = sorted(be.output_blobs(job_id))
    assert {(final_outs, f"{job_id}/listing.jsonl"), (final_outs, f"{job_id}/staged.txt")} <= set(served), served
    assert sorted(name for container, name in served if container == outs) == sorted(
        f"{job_id}/{stem}.out" for stem in ("a", "b c", "bad")), served
    listing = [json.loads(line) for line in
               project.storage.download_bytes(final_outs, f"{job_id}/listing.jsonl").decode().splitlines()]
    names = sorted(entry["name"] for entry in listing)
    assert names == sorted(f"{job_id}/{stem}.out" for stem in ("a", "b c", "bad")), names
    assert all(entry["container"] == outs and entry["path"] == f"outputs/{outs}/{entry['name']}" for entry in listing)
    staged = project.storage.download_bytes(final_outs, f"{job_id}/staged.txt").decode().splitlines()
    assert staged == sorted(f"outputs/{outs}/{entry['name']}" for entry in listing)

    # Submitted again with nothing to re-run and the same definition: the final step does not run.
    with get_backend(None, config) as be:
        result = be.submit(job)
        assert result.enqueued == 0
        be.run_to_end(job, timeout=200)
        assert be.final_step(job_id).state == "unchanged"
    assert runs.read_text() == "run\n"


@pytest.mark.parametrize("run_when", ["succeeded", "completed"])
def test_a_failed_task_blocks_the_final_step_unless_completed_is_enough(kind: str, run_when: str, project: Any,
                                                                       request: pytest.FixtureRequest,
                                                                       tmp_path: Path) -> None:
    config, ins, outs, final_outs, runs = _setup(kind, project, request, tmp_path)
    job_id = f"fin-{uuid.uuid4().hex[:8]}"
    job = _job(job_id, ins, outs, final_outs, runs=runs, fail=True, run_when=run_when, stage=False)
    with get_backend(None, config) as be:
        be.submit(job)
        counts = be.run_to_end(job, timeout=200)
        assert (counts.succeeded, counts.failed) == (2, 1), counts
        view = be.final_step(job_id)
    if run_when == "succeeded":
        assert view.state == "skipped" and "1 task(s) failed" in view.reason, view
        assert not runs.exists()
    else:
        assert view.state == "succeeded", view
        assert runs.read_text() == "run\n"
        listing = project.storage.download_bytes(final_outs, f"{job_id}/listing.jsonl").decode().splitlines()
        assert len(listing) == 2 and all(json.loads(line)["path"] is None for line in listing)


JOB_TOML = """
id = "{job_id}"
command = "sh -c 'cat \\"$INPUT\\" > \\"$INPUT_STEM\\".out'"

[inputs]
container = "{ins}"

[[outputs]]
pattern = "*.out"
container = "{outs}"

[final]
command = "sh -c 'wc -l < outputs.jsonl > count.txt; exit {final_exit}'"

[[final.outputs]]
pattern = "count.txt"
container = "{final_outs}"
"""


@pytest.mark.parametrize("final_exit", [0, 4])
def test_the_job_file_section_and_the_commands_show_the_final_step_apart(final_exit: int, project: Any) -> None:
    """`[final]` in a job file: `plan` shows it with its dependencies, `run` prints it under the tasks
    (and exits 1 when it failed), `status --json` and `report --json` carry it apart from the tasks."""
    ins, outs, final_outs = project.container("inputs"), project.container("outputs"), project.container("final")
    project.put_inputs(ins, {"one.txt": b"1\n", "two.txt": b"2\n"})
    job_id = f"finc-{uuid.uuid4().hex[:8]}"
    job_file = project.dir / "job.toml"
    job_file.write_text(JOB_TOML.format(job_id=job_id, ins=ins, outs=outs, final_outs=final_outs,
                                        final_exit=final_exit), encoding="utf-8")
    planned = project.cli("plan", str(job_file), "--json")
    assert planned.returncode == 0, planned.stderr
    final_plan = json.loads(planned.stdout)["final_step"]
    assert final_plan["argv"][:2] == ["sh", "-c"] and final_plan["run_when"] == "succeeded"
    assert final_plan["depends_on"] == {"tasks": 2, "barriers": 0, "final_step_names": 2,
                                        "final_step_id_chars": final_plan["depends_on"]["final_step_id_chars"]}

    ran = project.cli("run", str(job_file))
    assert ran.returncode == (0 if final_exit == 0 else 1), ran.stdout + ran.stderr
    state = "succeeded" if final_exit == 0 else "failed"
    assert f"final step {state} (run_when = succeeded, exit code {final_exit})" in ran.stdout, ran.stdout
    assert "2 succeeded, 0 failed, 2 total" in ran.stdout, ran.stdout
    status = json.loads(project.cli("status", job_id, "--json").stdout)
    assert status["counts"]["total"] == 2 and status["final_step"]["state"] == state
    assert "final-step" not in {t["task_id"] for t in status["tasks"]}
    report = project.cli("report", job_id, "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["final_step"]["result"]["exit_code"] == final_exit
    if final_exit == 0:  # its outputs upload on success, as [[outputs]] do
        assert project.storage.download_bytes(final_outs, f"{job_id}/count.txt").strip() == b"2"
    else:
        logs = project.cli("logs", job_id, "final-step", "--stderr")
        assert logs.returncode == 0, logs.stderr
        # The failed final step comes back to this machine like any task: listing, command, exit code.
        replay = project.cli("debug", job_id, "final-step", "--dir", str(project.dir / "replay"))
        assert replay.returncode == final_exit, replay.stdout + replay.stderr
        assert next(iter((project.dir / "replay").rglob("count.txt"))).read_text().strip() == "2"


def test_the_final_step_reruns_when_a_task_it_depends_on_reran_or_its_definition_changed(
        kind: str, project: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    config, ins, outs, final_outs, runs = _setup(kind, project, request, tmp_path)
    job_id = f"fin-{uuid.uuid4().hex[:8]}"
    with get_backend(None, config) as be:
        failing = _job(job_id, ins, outs, final_outs, runs=runs, fail=True, stage=False)
        be.submit(failing)
        be.run_to_end(failing, timeout=200)
        assert be.final_step(job_id).state == "skipped" and not runs.exists()
        # The failed task re-runs (and succeeds now): the final step runs after it.
        fixed = _job(job_id, ins, outs, final_outs, runs=runs, stage=False)
        assert be.submit(fixed).enqueued == 1
        counts = be.run_to_end(fixed, timeout=200)
        assert counts.succeeded == 3, counts
        assert be.final_step(job_id).state == "succeeded"
        assert runs.read_text() == "run\n"
        # No per-file task to run, but the final step's command changed: it alone runs again.
        changed = _job(job_id, ins, outs, final_outs, runs=runs, stage=False, tag=" v2")
        assert be.submit(changed).enqueued == 0
        be.run_to_end(changed, timeout=200)
        assert be.final_step(job_id).state == "succeeded"
        assert runs.read_text() == "run\nrun\n"
        # One input changed: the change-aware re-run runs that task alone, and the final step after it.
        project.put_inputs(ins, {"a.txt": b"alpha, changed\n"})
        result = be.submit(changed)
        assert result.enqueued == 1 and result.rerun.any_rerun(), result
        be.run_to_end(changed, timeout=200)
        assert be.final_step(job_id).state == "succeeded"
        # Asked for by name (`batchyard run --rerun final-step`): the final step alone runs again.
        assert be.submit(changed, rerun=["final-step"]).enqueued == 0
        be.run_to_end(changed, timeout=200)
        assert be.final_step(job_id).state == "succeeded"
    assert runs.read_text() == "run\nrun\nrun\nrun\n"


def test_map_lines_takes_the_final_step_as_a_keyword(project: Any) -> None:
    """The Python API: ``final=`` (keyword-only) is the job file's ``[final]``."""
    from batchyard import FinalStep, OutputSpec, map_lines

    ins, outs, final_outs = project.container("inputs"), project.container("outputs"), project.container("final")
    project.put_inputs(ins, {"x.txt": b"a\nb\n", "y.txt": b"c\n"})
    final = FinalStep(command="sh -c 'cat outputs/*/*/*.txt > all.txt'", stage_outputs=True,
                      outputs=(OutputSpec(pattern="all.txt", container=final_outs),))
    job_id = f"finapi-{uuid.uuid4().hex[:6]}"
    run = map_lines(str.upper, inputs=f"{ins}/*.txt", outputs=f"{outs}/{{job_id}}/", job_id=job_id,
                    config=project.config(), workers=2, timeout=200, final=final)
    assert run.succeeded, run.results()
    assert run.final_step()["state"] == "succeeded", run.final_step()
    assert project.storage.download_bytes(final_outs, f"{job_id}/all.txt") == b"A\nB\nC\n"
    with pytest.raises(TypeError):
        map_lines(str.upper, f"{ins}/*.txt", f"{outs}/{{job_id}}/", None, final)  # type: ignore[misc]
