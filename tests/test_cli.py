"""The `batchyard` command end to end, as a user runs it.

Each command runs at least once as a subprocess against the real Azurite on the local backend;
what the command line itself decides (exit codes, summaries, errors, re-runs, --watch) is
tested in this process on the in-memory stub backend (``stub_project``), which needs no storage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import (
    available_backends,
    get_backend,
    get_backend_class,
    register_backend,
    unregister_backend,
)
from batchyard.backends.stub import StubOutcome
from batchyard.core.config import load_config
from batchyard.core.errors import BackendNotFoundError, ConfigError, MissingDependencyError
from batchyard.core.job import TaskDef

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "uppercase"


@pytest.fixture
def example(project):  # type: ignore[no-untyped-def]
    """The README's example job copied into the test's project (its containers made unique)."""
    shutil.copytree(EXAMPLE, project.dir / "uppercase")
    job = project.dir / "uppercase" / "job.toml"
    text = job.read_text(encoding="utf-8")
    text = text.replace('"input-data"', f'"in-{project.uid}"').replace('"output-data"', f'"out-{project.uid}"')
    job.write_text(text, encoding="utf-8")
    return job


def test_run_example_status_logs_download(project, example: Path) -> None:  # type: ignore[no-untyped-def]
    run = project.cli("run", str(example), "--workers", "2")
    assert run.returncode == 1, run.stderr  # one input fails on purpose
    assert "19 succeeded, 1 failed, 20 total" in run.stdout
    assert "deliberately" in run.stdout

    status = project.cli("status", "uppercase", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["counts"] == {"pending": 0, "running": 0, "succeeded": 19, "failed": 1, "cancelled": 0, "total": 20}
    failed = [t for t in data["tasks"] if t["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["exit_code"] == 2 and failed[0]["retry_count"] == 1
    assert "deliberate failure" in failed[0]["stderr_tail"]

    ok = next(t for t in data["tasks"] if t["label"].endswith("café menu.txt"))
    logs = project.cli("logs", "uppercase", ok["task_id"])
    assert logs.returncode == 0 and "café menu.txt -> café menu.out.txt" in logs.stdout
    err = project.cli("logs", "uppercase", failed[0]["task_id"], "--stderr")
    assert "refusing input marked '!fail'" in err.stdout

    dest = project.dir / "downloaded"
    down = project.cli("download", "uppercase", str(dest))
    assert down.returncode == 0, down.stderr
    got = (dest / f"out-{project.uid}" / "uppercase" / "日本語.out.txt").read_text(encoding="utf-8")
    assert got == (EXAMPLE / "inputs" / "日本語.txt").read_text(encoding="utf-8").upper()
    assert len(list(dest.rglob("*.out.txt"))) == 19

    # A second run only re-runs the failed task.
    again = project.cli("run", str(example), "--workers", "2")
    assert again.returncode == 1
    assert "20 tasks, 1 queued: 19 kept, 1 failed" in " ".join(again.stderr.split())

    missing = project.cli("status", "nosuchjob")
    assert missing.returncode == 3 and "job 'nosuchjob' not found" in missing.stderr


def test_no_wait_then_standalone_worker(project) -> None:  # type: ignore[no-untyped-def]
    container = project.container("inputs")
    project.put_inputs(container, {"a.txt": b"a", "b.txt": b"b"})
    job = project.dir / "job.toml"
    job.write_text(f'id = "nowait"\ncommand = "true"\n[inputs]\ncontainer = "{container}"\n', encoding="utf-8")
    submitted = project.cli("run", str(job), "--no-wait")
    assert submitted.returncode == 0 and "2 queued" in " ".join(submitted.stderr.split())
    pending = json.loads(project.cli("status", "nowait", "--json").stdout)
    assert pending["counts"]["pending"] == 2
    worker = project.cli("worker", "--workers", "1", "--idle-exit", "2")
    assert worker.returncode == 0, worker.stderr
    done = json.loads(project.cli("status", "nowait", "--json").stdout)
    assert done["counts"]["succeeded"] == 2


def test_cancel_fails_pending_tasks(project) -> None:  # type: ignore[no-untyped-def]
    container = project.container("inputs")
    project.put_inputs(container, {"a.txt": b"a"})
    job = project.dir / "job.toml"
    job.write_text(f'id = "cancelme"\ncommand = "true"\n[inputs]\ncontainer = "{container}"\n', encoding="utf-8")
    assert project.cli("run", str(job), "--no-wait").returncode == 0
    assert project.cli("cancel", "cancelme").returncode == 0
    data = json.loads(project.cli("status", "cancelme", "--json").stdout)
    assert [t["failure_category"] for t in data["tasks"]] == ["cancelled"]
    assert project.cli("delete", "cancelme").returncode == 0
    assert project.cli("status", "cancelme").returncode == 3


def test_a_job_last_run_on_a_backend_not_set_up_here_says_so(project) -> None:  # type: ignore[no-untyped-def]
    """`status` follows the job's document to the backend it last ran on; when that backend has no
    settings here, the error says why it was chosen and how to ask the configured one."""
    from batchyard.backends import get_backend

    container = project.container("inputs")
    project.put_inputs(container, {"a.txt": b"a"})
    job_file = project.dir / "job.toml"
    job_file.write_text(f'id = "moved"\ncommand = "true"\n[inputs]\ncontainer = "{container}"\n', encoding="utf-8")
    assert project.cli("run", str(job_file), "--no-wait").returncode == 0
    with get_backend("local", project.config()) as be:  # as if it ran on Azure Batch last
        be.store.save_job(be.job("moved"), spec_hash="x", backend="azure")
    shown = project.cli("status", "moved")
    assert shown.returncode == 2 and "Traceback" not in shown.stderr, shown.stderr
    assert "(job moved last ran on the azure backend (its job document says so); --backend local asks" in shown.stderr
    assert "--backend local" in shown.stderr
    assert project.cli("status", "moved", "--backend", "local").returncode == 0


def test_emulator_start_env_status_stop(project) -> None:  # type: ignore[no-untyped-def]
    env = {"BATCHYARD_HOME": str(project.dir / "emuhome")}
    try:
        started = project.cli("emulator", "start", env=env, timeout=120)
        assert started.returncode == 0, started.stderr
        printed = project.cli("emulator", "env", env=env)
        assert printed.returncode == 0
        line = printed.stdout.strip().splitlines()[0]
        assert line.startswith("export AZURE_STORAGE_CONNECTION_STRING=")
        assert "AccountName=devstoreaccount1" in line and "BlobEndpoint=http://127.0.0.1:" in line
        assert project.cli("emulator", "status", env=env).returncode == 0
    finally:
        stopped = project.cli("emulator", "stop", env=env)
    assert stopped.returncode == 0 and "azurite: stopped" in stopped.stderr
    assert project.cli("emulator", "status", env=env).returncode == 1


def test_config_precedence_and_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "batchyard.toml"
    cfg.write_text('backend = "local"\n[storage]\nconnection_string = "AccountName=a;AccountKey=literalsecret"\n'
                   "[local]\nworkers = 3\n", encoding="utf-8")
    loaded = load_config(cfg, env={})
    assert (loaded.backend, loaded.workers) == ("local", 3)
    assert "holds a key in the file" in caplog.text
    assert "literalsecret" not in caplog.text and "literalsecret" not in repr(loaded)
    from_env = load_config(cfg, env={"BATCHYARD_BACKEND": "azure",
                                     "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=k"})
    assert from_env.backend == "azure" and from_env.storage_connection_string == "AccountKey=k"
    assert load_config(cfg, env={"BATCHYARD_BACKEND": "azure"}, backend="local").backend == "local"
    cfg.write_text("[local]\nmirror_pool = true\n[azure.pool]\ndedicated_nodes = 2\nspot_nodes = 1\n"
                   "task_slots_per_node = 4\n", encoding="utf-8")
    assert load_config(cfg, env={}).workers == 12  # local concurrency = the pool's nodes x slots
    cfg.write_text("[local]\nnodes = 3\ntask_slots_per_node = 2\n", encoding="utf-8")
    assert load_config(cfg, env={}).workers == 6
    cfg.write_text("[local]\nworkerz = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"local.workerz: unknown setting"):
        load_config(cfg, env={})


def test_registry_did_you_mean_and_install_hint() -> None:
    assert "stub" not in available_backends(), "the test-only stub backend is registered outside its fixture"
    with pytest.raises(BackendNotFoundError, match="Did you mean 'azure'"):
        get_backend_class("azrue")
    register_backend("needs-missing", "batchyard_nonexistent_plugin.mod", "X", install_hint="pip install by-plugin",
                     clobber=True)
    try:
        with pytest.raises(MissingDependencyError, match="pip install by-plugin"):
            get_backend_class("needs-missing")
    finally:
        unregister_backend("needs-missing")
    assert "needs-missing" not in available_backends()


# ------------------------------------------------------------------------------ on the stub backend
SWEEP = "KEY\nalpha\nbravo\nflaky\nbad\necho\n"


def _scripted(calls: list[tuple[str, int]]) -> Any:
    """Every attempt succeeds, but "bad" always fails and "flaky" fails its first attempt; ``calls``
    records (key, attempt) of each attempt."""
    def script(task: TaskDef, attempt: int) -> StubOutcome:
        key = dict(task.params)["KEY"]
        calls.append((key, attempt))
        if key == "bad" or (key == "flaky" and attempt == 1):
            return StubOutcome(exit_code=2, stderr=f"refusing {key} on purpose\n", seconds=0.5)
        return StubOutcome(stdout=f"{key} done\n", seconds=1.0)
    return script


def _sweep(stub_project: Any, job_id: str = "sweep") -> Path:
    (stub_project.dir / "sweep.csv").write_text(SWEEP, encoding="utf-8")
    return stub_project.job_file("job.toml", f'id = "{job_id}"\ncommand = "work {{KEY}}"\ntasks = "sweep.csv"\n'
                                              "[constraints]\nmax_task_retry_count = 1\n")


def test_stub_is_registered_only_for_the_tests_that_ask(stub_project: Any) -> None:
    assert "stub" in available_backends()
    from batchyard.backends import stub

    stub.unregister("stub")
    try:
        assert "stub" not in available_backends()
        with pytest.raises(BackendNotFoundError, match="unknown backend 'stub'"):
            get_backend_class("stub")
    finally:
        stub.register("stub")


def test_run_summary_status_logs_and_rerun_of_the_failed_only(stub_project: Any) -> None:
    calls: list[tuple[str, int]] = []
    stub_project.world.script = _scripted(calls)
    job = _sweep(stub_project)
    run = stub_project.cli("run", str(job))
    assert run.exit_code == 1, run.stderr  # a task failed
    assert "job sweep on stub: 5 tasks, 5 queued" in " ".join(run.stderr.split())
    assert "sweep: 4 succeeded, 1 failed, 5 total" in run.stdout
    assert "command exited with code 2" in run.stdout and "batchyard logs sweep" in run.stdout
    assert sorted(calls) == [("alpha", 1), ("bad", 1), ("bad", 2), ("bravo", 1), ("echo", 1), ("flaky", 1),
                             ("flaky", 2)]

    status = stub_project.cli("status", "sweep", "--json")
    assert status.exit_code == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["backend"], data["counts"]) == ("stub", {"pending": 0, "running": 0, "succeeded": 4, "failed": 1,
                                                          "cancelled": 0, "total": 5})
    by_label = {t["label"]: t for t in data["tasks"]}
    bad, flaky = by_label["KEY=bad"], by_label["KEY=flaky"]
    assert (bad["state"], bad["exit_code"], bad["retry_count"], bad["failure_category"]) == ("failed", 2, 1,
                                                                                             "exit_code")
    assert "refusing bad on purpose" in bad["stderr_tail"]
    assert (flaky["state"], flaky["retry_count"], [a["exit_code"] for a in flaky["attempt_records"]]) == (
        "succeeded", 1, [2, 0])
    summary = stub_project.cli("status", "sweep")
    assert summary.exit_code == 0 and "4 succeeded, 1 failed, 5 total" in summary.stdout

    logs = stub_project.cli("logs", "sweep", by_label["KEY=alpha"]["task_id"])
    assert (logs.exit_code, logs.stdout) == (0, "alpha done\n")
    err = stub_project.cli("logs", "sweep", bad["task_id"], "--stderr")
    assert (err.exit_code, err.stdout) == (0, "refusing bad on purpose\n")

    calls.clear()
    again = stub_project.cli("run", str(job))
    assert again.exit_code == 1
    assert "5 tasks, 1 queued: 4 kept, 1 failed" in " ".join(again.stderr.split())
    assert calls == [("bad", 1), ("bad", 2)], "a task that had succeeded ran again"


def test_no_wait_then_logs_cancel_delete(stub_project: Any) -> None:
    job = _sweep(stub_project, "parked")
    submitted = stub_project.cli("run", str(job), "--no-wait")
    assert submitted.exit_code == 0 and "5 queued" in " ".join(submitted.stderr.split())
    data = json.loads(stub_project.cli("status", "parked", "--json").stdout)
    assert data["counts"]["pending"] == 5 and {t["attempts"] for t in data["tasks"]} == {0}
    task_id = data["tasks"][0]["task_id"]
    early = stub_project.cli("logs", "parked", task_id)
    assert early.exit_code == 3 and "has no stdout yet (state pending)" in early.stderr
    unknown = stub_project.cli("logs", "parked", "no-such-task")
    assert unknown.exit_code == 3 and "task 'no-such-task' not found in job 'parked'" in unknown.stderr

    cancelled = stub_project.cli("cancel", "parked")
    assert cancelled.exit_code == 0 and "job parked cancelled" in cancelled.stderr
    data = json.loads(stub_project.cli("status", "parked", "--json").stdout)
    states = {(t["state"], t["failure_category"], t["attempts"]) for t in data["tasks"]}
    assert states == {("cancelled", "cancelled", 0)}
    assert stub_project.cli("delete", "parked").exit_code == 0
    for command in (("status", "parked"), ("logs", "parked", task_id), ("cancel", "parked"), ("delete", "parked")):
        gone = stub_project.cli(*command)
        assert gone.exit_code == 3 and "job 'parked' not found" in gone.stderr, command


def test_bad_input_exits_2_or_3_with_one_clear_line(stub_project: Any) -> None:
    bad = stub_project.job_file("bad.toml", 'id = "bad id"\ncommand = "true"\n[inputs]\ncontainer = "input-data"\n'
                                            'globb = "*"\n')
    result = stub_project.cli("run", str(bad))
    assert result.exit_code == 2
    assert "id: 'bad id' is not a valid job id" in result.stderr
    assert "inputs.globb: unknown field" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    empty = stub_project.job_file("empty.toml", 'id = "empty"\ncommand = "cat {input}"\n[inputs]\n'
                                              'container = "nothing-here"\n')
    nothing = stub_project.cli("run", str(empty))
    assert nothing.exit_code == 2 and "no blob in container 'nothing-here'" in nothing.stderr
    missing = stub_project.cli("status", "nosuchjob")
    assert missing.exit_code == 3 and "job 'nosuchjob' not found" in missing.stderr
    wrong = stub_project.cli("status", "x", "--backend", "lcoal")
    assert wrong.exit_code == 3 and "Did you mean 'local'?" in wrong.stderr


def test_status_watch_follows_the_job_to_the_end(stub_project: Any) -> None:
    stub_project.world.blobs.update({("inputs", f"in/{i}.txt"): b"x" for i in range(6)})
    job = stub_project.job_file("job.toml", 'id = "watched"\ncommand = "cat {input}"\n[inputs]\n'
                                            'container = "inputs"\nprefix = "in/"\n')
    assert stub_project.cli("run", str(job), "--no-wait").exit_code == 0
    stub_project.world.tasks_per_poll = 2  # two tasks start at each poll, and end at the next
    get_backend(None, stub_project.config()).start_execution(None, workers=2)
    watched = stub_project.cli("status", "watched", "--watch")
    assert watched.exit_code == 0, watched.stderr
    assert "job watched on stub" in watched.stdout and "finished" in watched.stdout
    assert "6/6 done" in watched.stdout
