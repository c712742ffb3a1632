"""`batchyard debug JOB TASK_ID`: a task that ran, run again on this machine, on both backends.

Each scenario runs a real job first (local: queue + worker processes on Azurite; azure: the real
SDK against the Batch emulator), then the real `batchyard debug` command in a subprocess.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from batchyard.backends import get_backend
from batchyard.core.job import Job, job_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from conformance.scenarios import Harness
from conformance.test_azure_emulator import AzureEmulatorHarness, azure_env
from conformance.test_local import LocalHarness

pytestmark = pytest.mark.timeout(240)
TASK_DIR = re.compile(r"^task dir: (.+)$", re.MULTILINE)
HELPER = 'tr a-z A-Z < "$1" | tee upper.txt\n'


@dataclass
class Side:
    """One backend to run a job on, and the `batchyard debug` command pointed at it."""

    name: str
    harness: Harness
    env: dict[str, str]
    project: Any

    def job(self, job_id: str, command: str, **fields: Any) -> Job:
        return job_from_dict({"id": job_id, "command": command, **fields}, source="test", base_dir=self.project.dir)

    def debug(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
              timeout: float = 150) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "batchyard", "debug", *args], cwd=self.project.dir,
                              env={**self.env, **(env or {})}, input=stdin, capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture(params=["local", "azure"])
def side(request: pytest.FixtureRequest, project: Any) -> Side:
    if request.param == "local":
        return Side("local", LocalHarness(project), dict(project.env), project)
    emulator = request.getfixturevalue("batch_emulator")
    return Side("azure", AzureEmulatorHarness(project, emulator), azure_env(project, emulator), project)


def task_dir_of(run: subprocess.CompletedProcess[str]) -> Path:
    found = TASK_DIR.search(run.stderr)
    assert found, f"no task dir printed:\n{run.stderr}"
    return Path(found.group(1))


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)


def no_secret_in(side: Side, *texts: str) -> None:
    secrets = [side.project.storage.account.account_key, side.env.get("BATCHYARD_BATCH_KEY", "")]
    for text in texts:
        for secret in filter(None, secrets):
            assert secret not in text, "a credential reached the replay's output or environment"


def test_a_failed_task_replayed_reproduces_its_exit_code_stderr_and_environment(side: Side) -> None:
    ins = side.project.container("inputs")
    side.project.put_inputs(ins, {"a.txt": b"alpha"})
    job_id = f"fails-{uuid.uuid4().hex[:6]}"
    job = side.job(job_id, "/bin/sh -c 'echo \"out of $1\"; echo \"err of $1\" >&2; env > env.txt; exit 3' sh {input}",
                   inputs={"container": ins}, environment={"BY_FROM_JOB": "yes"})
    (result,) = side.harness.run(job).values()
    assert (result.state, result.exit_code) == ("failed", 3), result
    recorded_stderr = side.harness.log(job_id, result.task_id, "stderr")

    replayed = side.debug(job_id, result.task_id)
    assert replayed.returncode == 3, replayed.stderr
    assert replayed.stdout == "out of a.txt\n", "stdout must be the task's own, and nothing else"
    task_dir = task_dir_of(replayed)
    assert (task_dir / "stderr.txt").read_bytes() == recorded_stderr == b"err of a.txt\n"
    assert "err of a.txt" in replayed.stderr and "Traceback" not in replayed.stderr
    # The AZ_BATCH_* layout of a real run, rooted in a kept folder under BATCHYARD_HOME/debug.
    assert task_dir.parts[-4:] == ("workitems", job_id, "job-1", result.task_id)
    assert Path(side.env["BATCHYARD_HOME"]) / "debug" in task_dir.parents
    env = env_file(task_dir / "wd" / "env.txt")
    assert env["AZ_BATCH_TASK_ID"] == result.task_id and env["AZ_BATCH_JOB_ID"] == job_id
    assert env["AZ_BATCH_TASK_DIR"] == str(task_dir) and env["AZ_BATCH_TASK_WORKING_DIR"] == str(task_dir / "wd")
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(task_dir.parents[3])
    assert env["AZ_BATCH_NODE_ID"] == result.node_id, "the node named must be the one the task ran on"
    assert env["BY_FROM_JOB"] == "yes"
    assert not {"AZURE_STORAGE_CONNECTION_STRING", "BATCHYARD_BATCH_KEY", "BATCHYARD_HOME"} & set(env)
    no_secret_in(side, replayed.stdout, replayed.stderr, (task_dir / "wd" / "env.txt").read_text())

    # Task ids in another case find the task, as Batch compares them (debug and logs alike).
    again = side.debug(job_id, result.task_id.upper())
    assert again.returncode == 3 and again.stdout == "out of a.txt\n", again.stderr
    logged = subprocess.run([sys.executable, "-m", "batchyard", "logs", job_id, result.task_id.upper(), "--stderr"],
                            cwd=side.project.dir, env=side.env, capture_output=True, text=True, timeout=120)
    assert (logged.returncode, logged.stdout) == (0, "err of a.txt\n"), logged.stderr

    replays = set((Path(side.env["BATCHYARD_HOME"]) / "debug").iterdir())
    unknown = side.debug(job_id, "no-such-task")
    assert unknown.returncode == 3 and "Traceback" not in unknown.stderr
    assert f"task 'no-such-task' not found in job '{job_id}'" in unknown.stderr, unknown.stderr
    assert set((Path(side.env["BATCHYARD_HOME"]) / "debug").iterdir()) == replays, "an empty node root was left"


def test_a_task_with_an_input_and_a_resource_file_replays_and_opens_a_shell(side: Side) -> None:
    ins, outs = side.project.container("inputs"), side.project.container("outputs")
    side.project.put_inputs(ins, {"in/b b.txt": b"bravo\n"})
    (side.project.dir / "helper.sh").write_text(HELPER, encoding="utf-8")
    job_id = f"staged-{uuid.uuid4().hex[:6]}"
    if side.name == "azure":  # the task's SAS URLs expire soon after the run: the replay must not need them
        toml = side.project.dir / "batchyard.toml"
        toml.write_text(toml.read_text(encoding="utf-8") + 'sas_margin = "1s"\n', encoding="utf-8")
    job = side.job(job_id, "sh helper.sh {input}", inputs={"container": ins, "prefix": "in/"},
                   resource_files=[{"source": "helper.sh"}], constraints={"max_wall_clock_time": "8s"},
                   outputs=[{"pattern": "upper.txt", "container": outs, "path": "{job_id}/{input_stem}.txt"}])
    (result,) = side.harness.run(job).values()
    if side.name == "local":
        assert result.state == "succeeded", result
    else:  # whether the node staged in time or not, its SAS is dead now
        wait_until_the_task_sas_is_refused(side, job_id, result.task_id)
    for name in list(side.project.storage.list_blob_names(outs, f"{job_id}/")):
        side.project.storage.container(outs).delete_blob(name)

    replayed = side.debug(job_id, result.task_id)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == "BRAVO\n"
    wd = task_dir_of(replayed) / "wd"
    assert (wd / "helper.sh").read_text(encoding="utf-8") == HELPER and (wd / "b b.txt").read_bytes() == b"bravo\n"
    assert (wd / "upper.txt").read_bytes() == b"BRAVO\n"
    assert list(side.project.storage.list_blob_names(outs, f"{job_id}/")) == [], "a replay uploads nothing"

    shell = side.debug(job_id, result.task_id, "--shell", env={"SHELL": "/bin/sh"},
                       stdin='echo "cwd=$(pwd)"\necho "task=$AZ_BATCH_TASK_ID"\nls\ncat "b b.txt"\nexit 7\n')
    assert shell.returncode == 7, shell.stderr
    shell_wd = task_dir_of(shell) / "wd"
    assert shell_wd != wd, "each replay gets a node root of its own"
    lines = shell.stdout.splitlines()
    assert lines[:2] == [f"cwd={shell_wd}", f"task={result.task_id}"]
    assert set(lines[2:-1]) == {"b b.txt", "helper.sh"}, "staged files only: the command must not have run"
    assert lines[-1] == "bravo"
    no_secret_in(side, shell.stdout, shell.stderr)


def wait_until_the_task_sas_is_refused(side: Side, job_id: str, task_id: str) -> None:
    """Polls the input's SAS URL, as Batch holds it, until the storage refuses it (it expired)."""
    task = side.harness.client.get_task(job_id, task_id)  # type: ignore[attr-defined]
    url = next(rf.http_url for rf in task.resource_files if "sig=" in rf.http_url and "/jobs/" not in rf.http_url)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10):  # the test's own Azurite, on loopback
                pass
        except urllib.error.HTTPError as exc:
            assert exc.code == 403, exc
            return
        assert time.monotonic() < deadline, "the task's SAS never expired"
        time.sleep(0.5)


def test_an_unknown_job_or_a_bad_id_is_a_clear_error(side: Side) -> None:
    unknown = side.debug("no-such-job", "some-task")
    assert unknown.returncode == 3, unknown.stderr
    assert "job 'no-such-job' not found" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = side.debug("a-job", "../etc/passwd")
    assert bad.returncode == 2 and "Invalid value for 'TASK_ID': '../etc/passwd' is not an id" in bad.stderr, bad.stderr


# ---------------------------------------------------------------------------------------------- local only
def test_a_task_no_worker_claimed_yet_replays_from_the_manifest(project: Any) -> None:
    ins = project.container("inputs")
    project.put_inputs(ins, {"c.txt": b"charlie"})
    (project.dir / "rows.csv").write_text("name\nzulu\n", encoding="utf-8")
    side = Side("local", LocalHarness(project), dict(project.env), project)
    by_blob = side.job(f"queued-{uuid.uuid4().hex[:6]}", "cat {input}", inputs={"container": ins})
    by_row = side.job(f"rows-{uuid.uuid4().hex[:6]}", "echo {name}", tasks="rows.csv")
    with get_backend("local", project.config()) as be:  # submitted, and no worker runs them
        be.submit(by_blob)
        be.submit(by_row)
        (queued,) = be.list_task_results(by_blob.id)
        (row,) = be.list_task_results(by_row.id)
    assert queued.state == row.state == "pending"

    replayed = side.debug(by_blob.id, queued.task_id)
    assert (replayed.returncode, replayed.stdout) == (0, "charlie"), replayed.stderr
    assert "it has not run yet" in replayed.stderr and "its manifest" in replayed.stderr
    refused = side.debug(by_row.id, row.task_id)
    assert refused.returncode == 3 and "Traceback" not in refused.stderr
    assert "has not been claimed by a worker yet" in refused.stderr and "CSV table" in refused.stderr, refused.stderr


def test_delete_removes_the_jobs_kept_replays_and_nothing_else(project: Any, tmp_path: Path) -> None:
    """`batchyard delete JOB` removes the task dirs `debug` kept for JOB on that backend; a `--dir` root,
    another job's (even one whose id starts with JOB's), another backend's and an unmarked folder stay."""
    from batchyard.cli.replays import MARKER, new_replay_root

    ins = project.container("inputs")
    project.put_inputs(ins, {"d.txt": b"delta"})
    side = Side("local", LocalHarness(project), dict(project.env), project)
    job = side.job(f"kept-{uuid.uuid4().hex[:6]}", "cat {input}", inputs={"container": ins})
    with get_backend("local", project.config()) as be:
        be.submit(job)
        (task,) = be.list_task_results(job.id)
    home = Path(side.env["BATCHYARD_HOME"])
    replays = [task_dir_of(side.debug(job.id.upper(), task.task_id)).parents[3] for _ in range(2)]
    chosen = tmp_path / "chosen-root"
    assert side.debug(job.id, task.task_id, "--dir", str(chosen)).returncode == 0
    others = [new_replay_root(home, f"{job.id}-b", "local"), new_replay_root(home, job.id, "azure")]
    unmarked = home / "debug" / f"{job.id}-unmarked"
    unmarked.mkdir()
    assert all((root / MARKER).is_file() for root in replays) and len(set(replays)) == 2

    deleted = subprocess.run([sys.executable, "-m", "batchyard", "delete", job.id], cwd=project.dir, env=side.env,
                             capture_output=True, text=True, timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    assert f"2 debug replay(s) of it removed from {home / 'debug'}" in deleted.stderr, deleted.stderr
    assert not any(root.exists() for root in replays)
    assert chosen.is_dir() and unmarked.is_dir() and all(root.is_dir() for root in others)


def test_ctrl_c_stops_the_replayed_command_and_its_children(project: Any, tmp_path: Path) -> None:
    ins = project.container("inputs")
    project.put_inputs(ins, {"d.txt": b"delta"})
    side = Side("local", LocalHarness(project), dict(project.env), project)
    job = side.job(f"hangs-{uuid.uuid4().hex[:6]}", "/bin/sh -c 'sleep 300 & echo $! > child.pid; wait' sh {input}",
                   inputs={"container": ins})
    with get_backend("local", project.config()) as be:
        be.submit(job)
        (task,) = be.list_task_results(job.id)
    root = tmp_path / "replay-root"
    debug = subprocess.Popen([sys.executable, "-m", "batchyard", "debug", job.id, task.task_id, "--dir", str(root)],
                             cwd=project.dir, env=side.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = root / "workitems" / job.id / "job-1" / task.task_id / "wd" / "child.pid"
    deadline = time.monotonic() + 120
    while not (pid_file.is_file() and pid_file.read_text().strip()):
        assert debug.poll() is None, debug.communicate()
        assert time.monotonic() < deadline, "the replayed command never started"
        time.sleep(0.2)
    child = int(pid_file.read_text())
    os.kill(debug.pid, signal.SIGINT)
    _, stderr = debug.communicate(timeout=60)
    assert debug.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 30
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the command's child outlived the interrupted replay"
        time.sleep(0.2)


def test_a_blob_url_is_read_back_as_its_container_and_blob_on_the_account_only() -> None:
    from batchyard.backends.azure.replay import account_reference

    sas = "?se=2020-01-01&sp=r&sig=abc%3D"
    azure, azurite = "https://acct.blob.core.windows.net", "http://127.0.0.1:10000/devstoreaccount1"
    assert account_reference(f"https://ACCT.blob.core.windows.net/inputs/in/b%20b.txt{sas}", azure) == (
        "inputs", "in/b b.txt")
    assert account_reference(f"{azurite}/sys-x/jobs/j/resources/helper.sh{sas}", azurite) == (
        "sys-x", "jobs/j/resources/helper.sh")
    assert account_reference(f"https://other.blob.core.windows.net/inputs/a.txt{sas}", azure) is None
    assert account_reference(f"http://127.0.0.1:10000/otheraccount/inputs/a.txt{sas}", azurite) is None
    assert account_reference(f"{azure}/inputs{sas}", azure) is None, "a container is not a blob"
