"""``batchyard report`` and ``watch_status``: real runs (local, azure on the Batch emulator), runs on the
in-memory stub backend (what the command does with any backend's results, no storage needed) and
synthetic scale.

The pixel checks read the PNG the command wrote (as embedded in report.html): each attempt's
bar centre, placed by :func:`render_timeline`'s layout, must be that attempt's colour.
"""

from __future__ import annotations

import base64
import io
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from batchyard.analysis.report import COLOURS, build_report, parse_time, render_html, report_numbers
from batchyard.analysis.report_figures import MAX_BAR_ATTEMPTS, render_figures, render_timeline
from batchyard.backends import get_backend
from batchyard.backends.base import TaskCounts, TaskResult, TaskState
from batchyard.backends.stub import StubOutcome
from batchyard.cli.report import watch_status
from batchyard.core.job import Job, TaskDef, job_from_dict

WORK = '''\
import pathlib, sys, time
src, marks = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
kind, seconds = src.read_text().split()
time.sleep(float(seconds))
if kind == "fail":
    print("work: refusing " + src.name + " on purpose", file=sys.stderr)
    sys.exit(3)
if kind == "flaky" and not (marks / src.name).exists():
    (marks / src.name).write_text("seen")
    print("work: first attempt fails", file=sys.stderr)
    sys.exit(7)
print("work: ok " + src.name)
'''
INPUTS = {"a.txt": b"ok 0.4", "b.txt": b"ok 0.2", "c.txt": b"ok 0.3", "d.txt": b"ok 0.2",
          "bad.txt": b"fail 0.2", "flaky.txt": b"flaky 0.3"}


def make_job(project: Any, job_id: str, marks: Path, inputs: dict[str, bytes] = INPUTS) -> Job:
    ins = project.container("inputs")
    project.put_inputs(ins, inputs)
    (project.dir / "work.py").write_text(WORK, encoding="utf-8")
    return job_from_dict({"id": job_id, "command": f"python3 work.py {{input}} {marks}",
                          "inputs": {"container": ins}, "resource_files": [{"source": "work.py"}],
                          "constraints": {"max_task_retry_count": 1}}, source="test", base_dir=project.dir)


def run_report(project: Any, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``batchyard report ...`` in a subprocess (through cli.py once it registers the command)."""
    from batchyard.cli.main import main

    if "report" in main.commands:
        return project.cli("report", *args, env=env)
    code = "from batchyard.cli.report import report; report(prog_name='batchyard report')"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=project.dir, env={**project.env, **(env or {})},
                          capture_output=True, text=True, timeout=180)


def assert_self_contained(page: str) -> None:
    lowered = page.lower()
    assert "<script" not in lowered and "@import" not in lowered
    for attr in re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.I):
        assert attr.startswith("data:"), f"external reference {attr[:60]!r}"
    assert not re.search(r"url\(\s*['\"]?(?!data:)", page, flags=re.I)
    assert "http://" not in re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)  # stderr text aside
    assert "https://" not in re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def pixels(png: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


def check_report_dir(out: Path, results: list[TaskResult], job_id: str) -> str:
    """The report written by the command shows every drawn attempt, in its colour, and every failure."""
    page = (out / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    pngs = embedded_pngs(page)
    assert len(pngs) == 3
    assert pngs[0] == (out / "timeline.png").read_bytes()
    data = build_report(results, job_id=job_id)
    _, layout = render_timeline(data)  # where each bar is (same data, same geometry)
    assert layout.mode == "bars"
    image = pixels(pngs[0])
    assert image.size == (layout.width, layout.height)
    assert len(layout.attempt_xy) == len(data.attempts) == sum(len(r.attempt_records) for r in results)
    for attempt, (x, y) in zip(data.attempts, layout.attempt_xy, strict=True):
        assert image.getpixel((x, y)) == rgb(COLOURS[attempt.outcome]), attempt
    colours = {c for _, c in image.getcolors(1 << 20)}
    assert rgb(COLOURS["failed"]) in colours
    for r in results:
        if r.state == "failed":
            assert f"<td>{r.task_id}</td>" in page and r.label in page
            assert f"batchyard logs {job_id} {r.task_id} --stderr" in page
    return page


# ------------------------------------------------------------------------------------------------ local
def test_local_report_every_attempt_failure_and_retry(project: Any, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    job = make_job(project, "rep", marks)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        assert be.run_to_end(job, workers=2, timeout=120, poll_interval=0.3).finished
        results = list(be.list_task_results(job.id))
    by_label = {r.label: r for r in results}
    assert (by_label["bad.txt"].state, by_label["bad.txt"].attempts) == ("failed", 2)
    assert (by_label["flaky.txt"].state, by_label["flaky.txt"].attempts) == ("succeeded", 2)

    done = run_report(project, "rep", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    page = check_report_dir(tmp_path / "out", results, "rep")
    assert "work: refusing bad.txt on purpose" in page
    # plan's forecast for the configured Azure pool, from this run's durations, next to the actual.
    assert "Forecast on Azure vs this run" in page and "standard_d2s_v3" in page
    data = build_report(results, job_id="rep")
    outcomes = sorted(a.outcome for a in data.attempts)
    assert outcomes == ["failed", "retried", "retried"] + ["succeeded"] * 5  # 8 attempts: 4 ok, 2 + 2 with retries
    assert len({a.row for a in data.attempts}) <= 2 + 1  # two worker slots (a lost-lease row at most)

    shown = run_report(project, "rep", "--json")
    assert shown.returncode == 0, shown.stderr
    assert not (project.dir / "rep-report").exists(), "--json alone writes no files"
    numbers = json.loads(shown.stdout)
    check_numbers(numbers, results)
    assert numbers["forecast"]["wall_time_s"] > 0 and numbers["forecast"]["slots"] >= 1
    # Asked for by another spelling of its id: the default folder has the job's own.
    spelled = run_report(project, "REP")
    assert spelled.returncode == 0, spelled.stderr
    assert (project.dir / "rep-report" / "report.html").is_file() and not (project.dir / "REP-report").exists()
    missing = run_report(project, "no-such-job")
    assert missing.returncode == 3 and "not found" in missing.stderr, missing.stderr


def check_numbers(numbers: dict[str, Any], results: list[TaskResult]) -> None:
    """--json agrees with the task results, computed here independently."""
    durations = [parse_time(a["ended_at"]) - parse_time(a["started_at"])  # type: ignore[operator]
                 for r in results for a in r.attempt_records if a.get("ended_at")]
    totals = numbers["totals"]
    assert totals["total"] == len(results)
    assert totals["succeeded"] == sum(r.state == "succeeded" for r in results)
    assert totals["failed"] == sum(r.state == "failed" for r in results)
    assert totals["attempts"] == sum(r.attempts for r in results)
    assert totals["retries"] == sum(r.retry_count for r in results)
    d = numbers["durations"]
    assert d["count"] == len(durations)
    q = statistics.quantiles(durations, n=100, method="inclusive")
    assert d["median"] == pytest.approx(statistics.median(durations), abs=2e-3)
    assert d["p95"] == pytest.approx(q[94], abs=2e-3)
    assert d["max"] == pytest.approx(max(durations), abs=2e-3)
    series = numbers["throughput"]["series"]
    assert sum(b["completed"] for b in series) == totals["succeeded"] + totals["failed"]
    assert sum(b["failed"] for b in series) == totals["failed"]
    assert sum(n["attempts"] for n in numbers["nodes"]) == totals["attempts_drawn"]
    busy = sum(n["busy_seconds"] for n in numbers["nodes"])
    assert busy == pytest.approx(sum(durations), abs=0.01 * len(numbers["nodes"]))
    failed = {f["task_id"]: f for f in numbers["failed_tasks"]}
    assert set(failed) == {r.task_id for r in results if r.state == "failed"}
    for r in results:
        if r.state == "failed":
            assert (failed[r.task_id]["exit_code"], failed[r.task_id]["failure_category"]) == (r.exit_code,
                                                                                               r.failure_category)


# ------------------------------------------------------------------------------------------------ azure
def test_a_cancelled_job_reports_its_cancelled_tasks(project: Any, tmp_path: Path) -> None:
    """Cancelled before any worker ran: every task ends cancelled, and the report counts them (it
    raised KeyError: 'cancelled' in the throughput series)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    job = make_job(project, "repcancel", marks)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        be.cancel("repcancel")
    as_json = run_report(project, "repcancel", "--json")
    assert as_json.returncode == 0 and "Traceback" not in as_json.stderr, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["totals"]["cancelled"] == len(INPUTS), report["totals"]
    done = run_report(project, "repcancel", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "report.html").is_file()


def test_tasks_cancelled_while_running_count_in_the_throughput() -> None:
    """A task cancelled while it ran has an end time: the throughput series counts it apart, and the
    figure draws it."""
    results = synthetic_results(20, nodes=2, slots=2)
    last = max(r.ended_at for r in results if r.ended_at)
    results += [TaskResult(job_id="job-x", task_id=f"cut-{i}", state=TaskState.CANCELLED, label=f"cut {i}",
                           started_at=last, ended_at=last) for i in range(3)]
    data = build_report(results, job_id="job-x")
    numbers = report_numbers(data)
    assert sum(b["cancelled"] for b in numbers["throughput"]["series"]) == 3
    assert sum(b["completed"] for b in numbers["throughput"]["series"]) == len(results)
    image = pixels(render_figures(data)["throughput"])
    assert rgb(COLOURS["lost"]) in {c for _, c in image.getcolors(1 << 20)}


def test_azure_emulator_report(project: Any, batch_emulator: Any, tmp_path: Path) -> None:
    try:
        import batchyard.backends.azure.backend  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"batchyard.backends.azure.backend cannot be imported yet ({exc})")
    from azure.batch import BatchClient
    from azure.batch import models as bm
    from azure.core.credentials import AzureNamedKeyCredential

    client = BatchClient(batch_emulator.url, AzureNamedKeyCredential(batch_emulator.account_name,
                                                                     batch_emulator.account_key), retry_total=2)
    pool_id = f"rep-{uuid.uuid4().hex[:8]}"
    client.create_pool(bm.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=2, task_slots_per_node=1,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server",
                                                     version="latest"),
            node_agent_sku_id="batch.node.ubuntu 24.04")))
    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
                    + f'[azure]\npool_id = "{pool_id}"\npoll_interval = 0.3\n', encoding="utf-8")
    env = {"BATCHYARD_BATCH_URL": batch_emulator.url, "BATCHYARD_BATCH_ACCOUNT": batch_emulator.account_name,
           "BATCHYARD_BATCH_KEY": batch_emulator.account_key}
    marks = tmp_path / "marks"
    marks.mkdir()
    job = make_job(project, "azrep", marks)
    from batchyard.core.config import load_config

    with get_backend("azure", load_config(toml, env={**project.env, **env})) as be:
        be.submit(job)
        be.start_execution(job)
        try:
            assert be.wait(job.id, timeout=180, poll_interval=0.3).finished
        finally:
            be.stop_execution()
        results = list(be.list_task_results(job.id))
    by_label = {r.label: r for r in results}
    assert by_label["bad.txt"].state == "failed" and by_label["flaky.txt"].attempts == 2
    done = run_report(project, "azrep", "--out", str(tmp_path / "out"), env=env)
    assert done.returncode == 0, done.stderr
    page = check_report_dir(tmp_path / "out", results, "azrep")
    assert "earlier attempt(s) not drawn" in page  # Batch keeps only the last attempt's times
    shown = run_report(project, "azrep", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    numbers = json.loads(shown.stdout)
    check_numbers(numbers, results)
    assert numbers["backend"] == "azure" and numbers["totals"]["attempts_unrecorded"] >= 2


# ------------------------------------------------------------------------------------------------ scale
def synthetic_results(attempts: int, *, nodes: int = 8, slots: int = 4, seed: int = 7) -> list[TaskResult]:
    """Tasks laid back to back on nodes x slots; every 9th task fails once then succeeds, every 50th fails twice."""
    import random

    rng = random.Random(seed)
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    free = [[0.0] * slots for _ in range(nodes)]
    results: list[TaskResult] = []
    made = i = 0
    while made < attempts:
        tries = 2 if i % 9 == 0 or i % 50 == 0 else 1
        tries = min(tries, attempts - made)
        records = []
        for n in range(tries):
            node, slot = min(((a, b) for a in range(nodes) for b in range(slots)), key=lambda p: free[p[0]][p[1]])
            start = free[node][slot] + rng.uniform(0.01, 0.2)
            end = start + rng.lognormvariate(1.5, 0.5)
            free[node][slot] = end
            last = n == tries - 1
            ok = last and i % 50 != 0
            records.append({"number": n + 1, "started_at": (t0 + timedelta(seconds=start)).isoformat(),
                            "ended_at": (t0 + timedelta(seconds=end)).isoformat(), "exit_code": 0 if ok else 3,
                            "failure_category": None if ok else "exit_code", "failure_message": None,
                            "node_id": f"node-{node}", "slot": slot})
        made += tries
        final = records[-1]
        ok = final["exit_code"] == 0
        results.append(TaskResult(
            job_id="big", task_id=f"t{i:05d}", state=TaskState.SUCCEEDED if ok else TaskState.FAILED,
            label=f"inputs/file-{i:05d}.csv", exit_code=final["exit_code"],
            failure_category=None if ok else "exit_code", failure_message=None if ok else "exit 3",
            attempts=tries, started_at=records[0]["started_at"], ended_at=final["ended_at"],
            node_id=final["node_id"], stderr_tail="" if ok else "Traceback ...\nValueError: bad row " * 20,
            attempt_records=tuple(records)))
        i += 1
    return results


def test_ten_thousand_attempts_under_two_megabytes(tmp_path: Path) -> None:
    results = synthetic_results(10_000)
    started = time.monotonic()
    data = build_report(results, job_id="big", backend="azure", shape="8 x 4 slots")
    numbers = report_numbers(data)
    figures = render_figures(data)
    page = render_html(data, figures, numbers)
    elapsed = time.monotonic() - started
    size = len(page.encode())
    assert len(data.attempts) == 10_000 > MAX_BAR_ATTEMPTS
    assert numbers["timeline"]["mode"] == "merged"
    assert size < 2_000_000, f"{size} bytes"
    # How long it took is printed, not asserted: on a busy machine any bound is either loose enough
    # to catch nothing or tight enough to fail a correct run (the suite's timeout bounds a hang).
    assert_self_contained(page)
    check_numbers(numbers, results)
    image = pixels(figures["timeline"])
    colours = {c for _, c in image.getcolors(1 << 20)}
    assert {rgb(COLOURS[o]) for o in ("succeeded", "retried", "failed")} <= colours
    print(f"10k attempts: {size / 1e6:.2f} MB in {elapsed:.1f}s")


def test_many_rows_switch_to_density_and_small_jobs_draw_every_bar() -> None:
    wide = build_report(synthetic_results(3000, nodes=50, slots=4), job_id="wide")
    png, layout = render_timeline(wide)
    assert layout.mode == "density" and len(png) < 400_000
    small = build_report(synthetic_results(40, nodes=2, slots=2), job_id="small")
    png, layout = render_timeline(small)
    image = pixels(png)
    for attempt, xy in zip(small.attempts, layout.attempt_xy, strict=True):
        assert image.getpixel(xy) == rgb(COLOURS[attempt.outcome])


def test_empty_and_unstarted_jobs_render() -> None:
    pending = [TaskResult(job_id="j", task_id="t1", state=TaskState.PENDING, label="x")]
    data = build_report(pending, job_id="j")
    page = render_html(data, render_figures(data))
    assert "No task failed" in page and report_numbers(data)["durations"]["median"] is None


# ------------------------------------------------------------------------------------------------ watch
def test_watch_status_follows_a_real_job_to_the_end(project: Any, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    inputs = {f"w{i}.txt": b"ok 0.5" for i in range(8)}
    job = make_job(project, "watched", marks, inputs)
    buffer = io.StringIO()
    with get_backend("local", project.config()) as be:
        be.submit(job)
        be.start_execution(job, workers=2)
        try:
            counts = watch_status(be, job.id, console=Console(file=buffer, width=120, force_terminal=True),
                                  interval=0.3, timeout=120)
        finally:
            be.stop_execution()
        assert counts == be.task_counts(job.id)
    assert counts.finished and (counts.succeeded, counts.total) == (8, 8)
    text = buffer.getvalue()
    assert "job watched on local" in text and "finished" in text and "8/8 done" in text
    assert "slowest running tasks" in text and "tasks/min" in text


def test_watch_status_ctrl_c_leaves_the_job_and_returns_last_counts(stub_project: Any) -> None:
    (stub_project.dir / "five.csv").write_text("KEY\n" + "".join(f"k{i}\n" for i in range(5)), encoding="utf-8")
    job = job_from_dict({"id": "interrupted", "command": "work {KEY}", "tasks": "five.csv"}, source="test",
                        base_dir=stub_project.dir)
    polls: list[int] = []

    def ctrl_c_at_the_fourth_poll(job_id: str, stub: Any) -> None:
        polls.append(len(polls) + 1)
        if len(polls) == 4:
            raise KeyboardInterrupt
        for task in stub.tasks.values():  # what runs now has run for 75 s (as the watch will show)
            if task.state == "running":
                task.started_at = (datetime.now(UTC) - timedelta(seconds=75)).isoformat()

    buffer = io.StringIO()
    with get_backend(None, stub_project.config()) as be:
        be.submit(job)
        be.start_execution(job, workers=1)
        stub_project.world.tasks_per_poll = 1  # one task starts at each poll, and ends at the next
        stub_project.world.on_poll = ctrl_c_at_the_fourth_poll
        counts = watch_status(be, job.id, console=Console(file=buffer, width=120), interval=0.05)
        stub_project.world.on_poll = None
        assert be.task_counts(job.id).total == 5, "the job is left as it was"
    assert counts == TaskCounts(pending=2, running=1, succeeded=2) and not counts.finished
    text = buffer.getvalue()
    # Which task the table shows depends on when it was last refreshed (at most every interval, and
    # never more than 10% of the time): any of them ran for 75 s by then.
    assert "slowest running tasks" in text and re.search(r"KEY=k[0-2] .* 1m1\ds", text), text


def test_stub_report_json_and_html_from_the_command(stub_project: Any, tmp_path: Path) -> None:
    """What ``batchyard report`` makes of a backend's results (here the stub's, scripted): the numbers
    agree with the results and every attempt is drawn in its colour."""
    def script(task: TaskDef, attempt: int) -> StubOutcome:
        kind = task.label.split("/")[-1].split(".")[0]
        if kind == "bad" or (kind == "flaky" and attempt == 1):
            return StubOutcome(exit_code=3, stderr=f"work: refusing {kind} on purpose\n", seconds=0.4)
        return StubOutcome(stdout="work: ok\n", seconds={"a": 2.0, "b": 1.0}.get(kind, 0.5))

    stub_project.world.script = script
    stub_project.world.blobs.update({("ins", f"{k}.txt"): b"x" for k in ("a", "b", "c", "bad", "flaky")})
    job = stub_project.job_file("job.toml", 'id = "stubrep"\ncommand = "work {input}"\n[inputs]\ncontainer = "ins"\n'
                                            "[constraints]\nmax_task_retry_count = 1\n")
    assert stub_project.cli("run", str(job)).exit_code == 1
    with get_backend(None, stub_project.config()) as be:
        results = list(be.list_task_results("stubrep"))

    shown = stub_project.cli("report", "stubrep", "--json")
    assert shown.exit_code == 0, shown.stderr
    numbers = json.loads(shown.stdout)
    check_numbers(numbers, results)
    assert numbers["backend"] == "stub" and numbers["totals"]["attempts"] == 7
    assert numbers["durations"]["max"] == pytest.approx(2.0)
    done = stub_project.cli("report", "stubrep", "--out", str(tmp_path / "out"))
    assert done.exit_code == 0, done.stderr
    page = check_report_dir(tmp_path / "out", results, "stubrep")
    assert "work: refusing bad on purpose" in page
    missing = stub_project.cli("report", "no-such-job")
    assert missing.exit_code == 3 and "job 'no-such-job' not found" in missing.stderr


def test_watch_status_piped_prints_the_view_as_the_job_moves(stub_project: Any) -> None:
    """Not a terminal (a CI log, `| tee`): a live view drew nothing until the end; the view is printed
    each time the counts change, so the log follows the job."""
    (stub_project.dir / "four.csv").write_text("KEY\n" + "".join(f"k{i}\n" for i in range(4)), encoding="utf-8")
    job = job_from_dict({"id": "piped", "command": "work {KEY}", "tasks": "four.csv"}, source="test",
                        base_dir=stub_project.dir)
    buffer = io.StringIO()
    with get_backend(None, stub_project.config()) as be:
        be.submit(job)
        be.start_execution(job, workers=1)
        stub_project.world.tasks_per_poll = 1  # one task starts at each poll, and ends at the next
        counts = watch_status(be, job.id, console=Console(file=buffer, width=120), interval=0.05, timeout=60)
    assert counts.finished and counts.succeeded == 4
    shown = re.findall(r"(\d)/4 done", buffer.getvalue())
    assert len(set(shown)) >= 3 and shown[-1] == "4", shown
