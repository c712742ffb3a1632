"""The `batchyard` command end to end, as a user runs it (subprocesses against the real Azurite)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from batchyard.backends import get_backend_class, register_backend
from batchyard.core.config import load_config
from batchyard.core.errors import BackendNotFoundError, ConfigError, MissingDependencyError

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
    assert "1 queued, 19 already succeeded, 1 failed before (re-run)" in " ".join(again.stderr.split())


def test_validation_error_exit_2_names_the_field(project) -> None:  # type: ignore[no-untyped-def]
    job = project.dir / "bad.toml"
    job.write_text('id = "bad id"\ncommand = "true"\n[inputs]\ncontainer = "input-data"\nglobb = "*"\n',
                   encoding="utf-8")
    result = project.cli("run", str(job))
    assert result.returncode == 2
    assert "id: 'bad id' is not a valid job id" in result.stderr
    assert "inputs.globb: unknown field" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_job_and_backend(project) -> None:  # type: ignore[no-untyped-def]
    missing = project.cli("status", "nosuchjob")
    assert missing.returncode == 3 and "job 'nosuchjob' not found" in missing.stderr
    wrong = project.cli("status", "x", "--backend", "lcoal")
    assert wrong.returncode == 3 and "Did you mean 'local'?" in wrong.stderr


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
    with pytest.raises(BackendNotFoundError, match="Did you mean 'azure'"):
        get_backend_class("azrue")
    register_backend("needs-missing", "batchyard_nonexistent_plugin.mod", "X", install_hint="pip install by-plugin",
                     clobber=True)
    with pytest.raises(MissingDependencyError, match="pip install by-plugin"):
        get_backend_class("needs-missing")
