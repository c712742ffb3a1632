"""Issue 18, the first real Azure run: on the azure backend against the Batch emulator (real SDK, HTTP, Azurite).

Each test starts its own emulator (so the pools and jobs it lists are its own) and uses ids unique to it.
Nothing here waits on a clock to observe a state: tasks that must still be running block on a marker
file the test removes, and every wait is a poll with a generous deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from batchyard.backends import get_backend
from batchyard.backends.azure.pools import per_job_pool_id
from batchyard.core.config import load_config
from batchyard.core.errors import BackendError, ConfigError
from batchyard.core.job import job_from_dict
from batchyard.emulator.batch import FaultConfig

sys.path.insert(0, str(Path(__file__).parent))
from conformance.test_azure_emulator import IMAGE, azure_env, create_empty_pool, raw_client, resize

pytestmark = pytest.mark.timeout(180)
DEADLINE_S = 90.0


def configure(project: Any, emu: Any, *, azure: str = "", pool: str | None = None) -> Any:
    """batchyard.toml stays on the local backend by default; [azure] (and [azure.pool]) as given."""
    toml = project.dir / "batchyard.toml"
    text = toml.read_text(encoding="utf-8").split("[azure]")[0]
    text += "[azure]\npoll_interval = 0.3\n" + azure + ("[azure.pool]\n" + pool if pool is not None else "")
    toml.write_text(text, encoding="utf-8")
    return load_config(toml, env=azure_env(project, emu))


def job_file(project: Any, job_id: str, container: str, command: str = "cat {input}", extra: str = "") -> str:
    (project.dir / "job.toml").write_text(f'id = "{job_id}"\ncommand = {json.dumps(command)}\n{extra}'
                                          f'[inputs]\ncontainer = "{container}"\n', encoding="utf-8")
    return "job.toml"


def job_state(client: Any, batch_job_id: str) -> str:
    return str(client.get_job(batch_job_id).state.value)


def pool_exists(client: Any, pool_id: str) -> bool:
    """Whether the pool still stands: one being deleted (Azure's ``deleting``, which lasts a while
    there and a second on the emulator) bills no new node and counts as released."""
    try:
        return str(client.get_pool(pool_id).state) not in ("deleting", "BatchPoolState.DELETING")
    except ResourceNotFoundError:
        return False


def poll(what: str, check: Any, deadline_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {deadline_s:.0f} s")
        time.sleep(0.2)


def running(client: Any, batch_job_id: str) -> int:
    """Running tasks of the Batch job (0 while it does not exist yet)."""
    try:
        return int(client.get_job_task_counts(batch_job_id).task_counts.running)
    except ResourceNotFoundError:
        return 0


def blocking_command(marker: Path) -> str:
    """A task that runs until the test removes ``marker`` (then prints its input)."""
    return f"sh -c 'while [ -e \"$0\" ]; do sleep 0.1; done; cat \"$1\"' {marker} {{input}}"


# ---------------------------------------------------------------------------------------------- 1. runs that end
def test_a_failing_start_task_ends_the_run_with_its_stderr_and_deletes_the_pool(project: Any,
                                                                                batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig())
    client = raw_client(emu)
    failing = "sh -c 'echo E: Could not get lock /var/lib/dpkg/lock-frontend >&2; exit 100'"
    configure(project, emu, pool=f"start_task = {json.dumps(failing)}\n")
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"alpha"})
    job_id = f"stf-{uuid.uuid4().hex[:6]}"
    pool_id = per_job_pool_id(job_id)
    run = project.cli("run", job_file(project, job_id, ins), "--backend", "azure", env=azure_env(project, emu))
    assert run.returncode == 3, run.stderr + run.stdout
    err = run.stderr
    assert f"pool '{pool_id}': no node can take tasks (1 node(s): 1 starttaskfailed)" in err, err
    assert "its start task exited with code 100" in err and "E: Could not get lock /var/lib/dpkg/lock-frontend" in err
    assert f"pool {pool_id} deleted" in err and "Traceback" not in err
    assert not pool_exists(client, pool_id), "the pool of a run that cannot run anything still bills"
    assert job_state(client, job_id) == "completed", "the job still holds the active-job quota"

    # Fixed: the same command runs what is left, in a new Batch job on a new pool.
    configure(project, emu, pool="")
    again = project.cli("run", "job.toml", "--backend", "azure", env=azure_env(project, emu))
    assert again.returncode == 0, again.stderr + again.stdout
    assert "1 task, 1 queued: 1 cancelled" in " ".join(again.stderr.split())
    assert job_state(client, f"{job_id}-r2") == "completed" and not pool_exists(client, pool_id)
    status = json.loads(project.cli("status", job_id, "--json", env=azure_env(project, emu)).stdout)
    assert status["backend"] == "azure" and status["counts"] == {"pending": 0, "running": 0, "succeeded": 1,
                                                                 "failed": 0, "cancelled": 0, "total": 1}


def test_a_pool_with_no_node_ends_the_wait_after_the_grace(project: Any, batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig())
    client = raw_client(emu)
    shared = f"empty-{uuid.uuid4().hex[:6]}"
    create_empty_pool(client, shared)
    config = configure(project, emu, azure=f'pool_id = "{shared}"\nsteady_timeout = "1s"\n')
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    job = job_from_dict({"id": f"empty-{uuid.uuid4().hex[:6]}", "command": "cat {input}", "inputs": {"container": ins}},
                        source="test", base_dir=project.dir)
    with get_backend("azure", config) as be:
        be.submit(job)
        with pytest.raises(BackendError) as info:
            be.wait(job.id, timeout=DEADLINE_S, poll_interval=0.2)
    message = str(info.value)
    assert f"pool '{shared}' has had no node that can take tasks" in message and "(nodes: none;" in message
    assert f"pool {shared} is shared" in message, "a pool batchyard did not make is left as it is, and said so"
    assert pool_exists(client, shared) and job_state(client, job.id) == "completed"


# ---------------------------------------------------------------------------------------------- 2. cost-safe ends
def test_cancel_deletes_the_pool_and_a_rerun_runs_the_rest(project: Any, batch_emulator_factory: Any,
                                                           tmp_path: Path) -> None:
    emu = batch_emulator_factory(FaultConfig())
    client = raw_client(emu)
    configure(project, emu, pool="task_slots_per_node = 2\n")
    ins = project.container("inputs")
    project.put_inputs(ins, {f"f{i}.txt": f"file {i}".encode() for i in range(3)})
    marker = tmp_path / "hold"
    marker.write_text("")
    job_id = f"cx-{uuid.uuid4().hex[:6]}"
    pool_id = per_job_pool_id(job_id)
    env = azure_env(project, emu)
    submitted = project.cli("run", job_file(project, job_id, ins, blocking_command(marker)), "--backend", "azure",
                            "--no-wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert f"batchyard status {job_id} --watch --backend azure" in submitted.stderr  # the config says local
    poll("two running tasks", lambda: running(client, job_id) == 2)

    live = json.loads(project.cli("status", job_id, "--json", env=env).stdout)  # no --backend: the job knows
    assert live["backend"] == "azure" and live["counts"]["running"] == 2
    pool = live["pool"]
    assert (pool["pool_id"], pool["state"], pool["nodes"], pool["node_states"]) == (pool_id, "active", 1,
                                                                                     {"running": 1})
    assert pool["per_job"] and pool["node_hours"] >= 0 and pool["usd_per_node_hour"] == 0.096
    assert pool["cost_usd"] is not None

    cancelled = project.cli("cancel", job_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {job_id} cancelled on azure" in cancelled.stderr
    assert f"pool {pool_id}: deleted at the end of the run; standard_d2s_v3 x 1 node(s) x 2 slot(s)" in cancelled.stderr
    assert not pool_exists(client, pool_id) and job_state(client, job_id) == "completed"
    ended = json.loads(project.cli("status", job_id, "--json", env=env).stdout)
    assert ended["counts"] == {"pending": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 3, "total": 3}
    assert {t["failure_category"] for t in ended["tasks"]} == {"cancelled"}

    marker.unlink()  # what the cancelled tasks waited for
    rerun = project.cli("run", "job.toml", "--backend", "azure", env=env)
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    assert "3 tasks, 3 queued: 3 cancelled" in " ".join(rerun.stderr.split())
    assert f"pool {pool_id}: deleted at the end of the run" in rerun.stdout
    final = json.loads(project.cli("status", job_id, "--json", env=env).stdout)
    assert final["counts"]["succeeded"] == 3 and {t["state"] for t in final["tasks"]} == {"succeeded"}
    logs = project.cli("logs", job_id, final["tasks"][0]["task_id"], env=env)  # no --backend either
    assert logs.returncode == 0 and logs.stdout.startswith("file "), logs.stderr
    assert not pool_exists(client, pool_id) and job_state(client, f"{job_id}-r2") == "completed"


def test_cancel_after_every_task_ended_releases_the_pool_and_leaves_the_job_completed(project: Any,
                                                                                    batch_emulator: Any) -> None:
    """`run --no-wait`, every task done, nobody watching: the run's Batch job is open and its pool bills.
    `cancel` then has nothing to stop: it says so, ends the run as `run` would (pool deleted) and the job
    stays completed, not cancelled."""
    client = raw_client(batch_emulator)
    configure(project, batch_emulator)
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a", "b.txt": b"b"})
    job_id = f"done-{uuid.uuid4().hex[:6]}"
    env = _emulator_env(project, batch_emulator)
    submitted = project.cli("run", job_file(project, job_id, ins), "--no-wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    poll("both tasks completed", lambda: {t.state.value for t in client.list_tasks(job_id)} == {"completed"})
    assert pool_exists(client, per_job_pool_id(job_id)) and job_state(client, job_id) == "active"
    cancelled = project.cli("cancel", job_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {job_id} has ended (2 succeeded, 0 failed, 2 total): nothing to cancel" in cancelled.stderr
    assert not pool_exists(client, per_job_pool_id(job_id)) and job_state(client, job_id) == "completed"
    (view,) = [j for j in json.loads(project.cli("jobs", "--json", env=env).stdout)["jobs"] if j["job_id"] == job_id]
    assert view["state"] == "completed" and view["counts"]["succeeded"] == 2, view


def test_ctrl_c_ends_the_run_and_keep_auto_pool_keeps_the_pool_and_says_so(project: Any, batch_emulator_factory: Any,
                                                                           tmp_path: Path) -> None:
    emu = batch_emulator_factory(FaultConfig())
    client = raw_client(emu)
    configure(project, emu)
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    marker = tmp_path / "hold"
    marker.write_text("")
    job_id = f"int-{uuid.uuid4().hex[:6]}"
    env = {**azure_env(project, emu), "BATCHYARD_BACKEND": "azure"}
    proc = subprocess.Popen([sys.executable, "-m", "batchyard", "run", job_file(project, job_id, ins,
                                                                                 blocking_command(marker))],
                            cwd=project.dir, env={**project.env, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        poll("the task running", lambda: running(client, job_id) == 1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err + out
    assert f"interrupted: job {job_id} stopped on Azure Batch" in err and f"pool by-{job_id} deleted" in err
    assert not pool_exists(client, per_job_pool_id(job_id)) and job_state(client, job_id) == "completed"

    # keep_auto_pool: the pool outlives the end of the run, and cancel says so.
    configure(project, emu, azure="keep_auto_pool = true\n")
    kept_id = f"kept-{uuid.uuid4().hex[:6]}"
    project.cli("run", job_file(project, kept_id, ins, blocking_command(marker)), "--no-wait", env=env)
    poll("the task running", lambda: running(client, kept_id) == 1)
    cancelled = project.cli("cancel", kept_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert (f"pool by-{kept_id}: kept ([azure] keep_auto_pool = true; it bills until `batchyard pool delete "
            f"by-{kept_id}`)") in cancelled.stderr
    assert pool_exists(client, per_job_pool_id(kept_id)) and job_state(client, kept_id) == "completed"
    marker.unlink()


def test_ctrl_c_between_submit_and_wait_ends_the_run_too(project: Any, batch_emulator_factory: Any,
                                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The window where `run` prints what it queued, before it waits: the pool must not bill on."""
    emu = batch_emulator_factory(FaultConfig())
    client = raw_client(emu)
    config = configure(project, emu)
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    marker = tmp_path / "hold"
    marker.write_text("")
    job_id = f"gap-{uuid.uuid4().hex[:6]}"
    job = job_from_dict({"id": job_id, "command": blocking_command(marker), "inputs": {"container": ins}},
                        base_dir=project.dir)
    with pytest.raises(KeyboardInterrupt), get_backend("azure", config) as be:
        assert be.submit(job).enqueued == 1
        raise KeyboardInterrupt
    assert f"interrupted: job {job_id} stopped on Azure Batch" in caplog.text
    assert not pool_exists(client, per_job_pool_id(job_id)) and job_state(client, job_id) == "completed"
    marker.unlink()


def test_a_submit_that_fails_after_its_pool_exists_deletes_the_pool(project: Any, batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig(job_quota=1))
    client = raw_client(emu)
    create_empty_pool(client, "holder-pool")
    client.create_job(bm.BatchJobCreateOptions(id="holder", pool_info=bm.BatchPoolInfo(pool_id="holder-pool")))
    config = configure(project, emu)
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    job = job_from_dict({"id": f"quota-{uuid.uuid4().hex[:6]}", "command": "cat {input}", "inputs": {"container": ins}},
                        source="test", base_dir=project.dir)
    with get_backend("azure", config) as be, pytest.raises(BackendError) as info:
        be.submit(job)
    message = str(info.value)
    assert "ActiveJobAndScheduleQuotaReached" in message and f"pool {per_job_pool_id(job.id)} deleted" in message
    assert not pool_exists(client, per_job_pool_id(job.id)), "the pool of a job that could not be created bills on"
    assert emu.account_key not in message


# ------------------------------------------------------------------------------------ 3. fresh SAS, one re-run
def _sas_expiry(url: str) -> datetime:
    return datetime.fromisoformat(parse_qs(urlsplit(url).query)["se"][0].replace("Z", "+00:00"))


def test_failed_tasks_end_the_run_and_every_rerun_issues_fresh_sas(project: Any, batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig())
    client = raw_client(emu)
    shared = f"idle-{uuid.uuid4().hex[:6]}"
    create_empty_pool(client, shared)  # no node yet: the task waits while its URLs expire
    short = configure(project, emu, azure=f'pool_id = "{shared}"\nsas_margin = "1s"\n')
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"alpha"})
    job = job_from_dict({"id": f"sas-{uuid.uuid4().hex[:6]}", "command": "cat {input}", "inputs": {"container": ins},
                         "constraints": {"max_wall_clock_time": "1s", "max_task_retry_count": 0}},
                        source="test", base_dir=project.dir)
    with get_backend("azure", short) as be:
        be.submit(job)
        (task,) = client.list_tasks(job.id)
        first = _sas_expiry(task.resource_files[0].http_url)
        poll("the SAS URLs to expire", lambda: datetime.now(UTC) > first)
        resize(client, shared, 1)
        poll("the task to fail", lambda: be.task_counts(job.id).failed == 1)
        (failed,) = be.list_task_results(job.id)
        assert failed.failure_category == "staging_failed"
        assert failed.failure_message.startswith("a SAS URL was refused (HTTP 403, BlobAccessDenied): it expired")
        assert "AccountKey" not in failed.failure_message

        # A re-run while the Batch job is still open: the failed task is added again, with new URLs
        # (and with no node, it waits until those expire too).
        resize(client, shared, 0)
        again = be.submit(job)
        assert (again.enqueued, again.rerun_failed) == (1, 1)
        (task,) = client.list_tasks(job.id)
        assert _sas_expiry(task.resource_files[0].http_url) > first
        poll("the URLs of the re-added task to expire", lambda: datetime.now(UTC) > _sas_expiry(
            task.resource_files[0].http_url))
        resize(client, shared, 1)
        counts = be.wait(job.id, timeout=DEADLINE_S, poll_interval=0.2)
        assert (counts.succeeded, counts.failed) == (0, 1)
    assert job_state(client, job.id) == "completed", "a job with failed tasks kept holding the active-job quota"
    assert pool_exists(client, shared), "a shared pool is not batchyard's to delete"

    # A re-run after the job ended: a new Batch job, URLs signed now (with the usual margin).
    usual = configure(project, emu, azure=f'pool_id = "{shared}"\n')
    with get_backend("azure", usual) as be:
        third = be.submit(job)
        assert (third.enqueued, third.rerun_failed) == (1, 1)
        (task,) = client.list_tasks(f"{job.id}-r2")
        assert (_sas_expiry(task.resource_files[0].http_url) - datetime.now(UTC)).total_seconds() > 3000
        counts = be.wait(job.id, timeout=DEADLINE_S, poll_interval=0.2)
        assert (counts.succeeded, counts.failed, counts.total) == (1, 0, 1)
        assert [r.state for r in be.list_task_results(job.id)] == ["succeeded"]


# ---------------------------------------------------------------------------------------------- 4. preflight
def _emulator_env(project: Any, emu: Any, **changes: str) -> dict[str, str]:
    return {**azure_env(project, emu), "BATCHYARD_BACKEND": "azure", **changes}


def test_each_wrong_setting_is_one_line_naming_it_before_anything_exists(project: Any,
                                                                          batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig())
    client = raw_client(emu)
    configure(project, emu)
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    job_file(project, f"pre-{uuid.uuid4().hex[:6]}", ins)
    closed = f"http://127.0.0.1:{_closed_port()}"
    cases = {
        "wrong key": ({"BATCHYARD_BATCH_KEY": "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="}, 3,
                      ["HTTP 403", "BATCHYARD_BATCH_KEY"]),
        "key not base64": ({"BATCHYARD_BATCH_KEY": "not-base64!"}, 2, ["BATCHYARD_BATCH_KEY", "is not base64"]),
        "URL without scheme": ({"BATCHYARD_BATCH_URL": emu.url.removeprefix("http://")}, 2,
                               ["BATCHYARD_BATCH_URL", "is not an http:// or https:// endpoint"]),
        "unreachable URL": ({"BATCHYARD_BATCH_URL": closed}, 3, ["is unreachable", "BATCHYARD_BATCH_URL"]),
        "wrong account name": ({"BATCHYARD_BATCH_ACCOUNT": "someoneelse"}, 3,
                               ["HTTP 403", "BATCHYARD_BATCH_ACCOUNT"]),
    }
    for name, (changes, code, words) in cases.items():
        run = project.cli("run", "job.toml", env=_emulator_env(project, emu, **changes), timeout=120)
        errors = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode == code, f"{name}: {run.stderr}"
        assert len(errors) == 1 and errors[0].startswith("error: "), f"{name}: {run.stderr}"
        assert all(word in errors[0] for word in words), f"{name}: {errors[0]}"
        assert emu.account_key not in run.stderr and "Traceback" not in run.stderr
    assert list(client.list_pools()) == [] and list(client.list_jobs()) == []
    assert project.config().storage.system_container not in {c.name for c in
                                                              project.storage.blob_service.list_containers()}

    wrong = project.cli("plan", "job.toml", "--json",
                        env=_emulator_env(project, emu, BATCHYARD_BATCH_KEY="d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZw=="))
    assert wrong.returncode == 1, wrong.stderr
    (auth,) = [f for f in json.loads(wrong.stdout)["findings"] if f["code"] == "batch-account"]
    assert auth["severity"] == "error" and "HTTP 403" in auth["message"]
    good = project.cli("plan", "job.toml", "--json", env=_emulator_env(project, emu))
    assert good.returncode == 0, good.stderr + good.stdout
    quota = [f["message"] for f in json.loads(good.stdout)["findings"] if f["code"] == "job-quota"]
    assert "0 of 100 active jobs in use on the Batch account" in quota


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@pytest.mark.parametrize(("pool", "expected"), [
    ("task_slots_per_node = 16\n", "task_slots_per_node = 16 on standard_d2s_v3: Azure Batch allows at most "
                                   "min(4 x cores, 256) = 8"),
    ('resize_timeout = "2m"\n', "Azure Batch refuses a resize timeout under 5 minutes"),
    ('node_agent_sku_id = "batch.node.ubuntu 22.04"\n', "does not run on the image canonical/ubuntu-24_04-lts/server"),
    ('vm_size = "standard_b2s"\nspot_nodes = 1\n', "Azure offers no Spot VMs of B-series or promo sizes"),
])
def test_pool_settings_batch_refuses_stop_the_submit(project: Any, batch_emulator_factory: Any, pool: str,
                                                     expected: str) -> None:
    emu = batch_emulator_factory(FaultConfig())
    client = raw_client(emu)
    config = configure(project, emu, pool=pool)
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    job = job_from_dict({"id": f"rule-{uuid.uuid4().hex[:6]}", "command": "cat {input}", "inputs": {"container": ins}},
                        source="test", base_dir=project.dir)
    with get_backend("azure", config) as be, pytest.raises(ConfigError) as info:
        be.submit(job)
    assert expected in str(info.value)
    assert list(client.list_pools()) == [] and list(client.list_jobs()) == []
    with get_backend("azure", config) as be:
        codes = {f.code: f.severity for f in be.preflight_findings(job)}
    assert "error" in codes.values()


def test_a_reused_pool_must_suit_the_job(project: Any, batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig())
    client = raw_client(emu)
    plain, boxed = f"plain-{uuid.uuid4().hex[:6]}", f"boxed-{uuid.uuid4().hex[:6]}"
    create_empty_pool(client, plain)
    client.create_pool(bm.BatchPoolCreateOptions(
        id=boxed, vm_size="standard_d2s_v3", target_dedicated_nodes=0,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04",
            container_configuration=bm.BatchContainerConfiguration(type=bm.ContainerType.DOCKER_COMPATIBLE))))
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})

    def refusal(pool_id: str, **extra: Any) -> str:
        config = configure(project, emu, azure=f'pool_id = "{pool_id}"\n')
        job = job_from_dict({"id": f"reuse-{uuid.uuid4().hex[:6]}", "command": "cat {input}",
                             "inputs": {"container": ins}, **extra}, source="test", base_dir=project.dir)
        with get_backend("azure", config) as be, pytest.raises(ConfigError) as info:
            be.submit(job)
        return str(info.value)

    assert f"pool '{plain}' has no containerConfiguration" in refusal(plain, container_image="python:3.12-slim")
    assert f"pool '{boxed}' is container-enabled" in refusal(boxed)
    assert list(client.list_jobs()) == []
    # Batch itself refuses what the pool rules refuse: the emulator as strictly as Azure.
    with pytest.raises(HttpResponseError) as refused:
        client.create_pool(bm.BatchPoolCreateOptions(
            id="short", vm_size="standard_d2s_v3", resize_timeout=timedelta(minutes=2),
            virtual_machine_configuration=bm.VirtualMachineConfiguration(
                image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04")))
    assert refused.value.status_code == 400 and refused.value.error.code == "InvalidPropertyValue"


# ---------------------------------------------------------------------------------------------- 5. where it ran
def test_commands_find_the_job_where_it_ran_and_hints_carry_the_flag(project: Any, batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig())
    configure(project, emu)  # the config's backend stays local
    ins = project.container("inputs")
    project.put_inputs(ins, {"good.txt": b"good", "bad.txt": b"bad"})
    job_id = f"where-{uuid.uuid4().hex[:6]}"
    command = "sh -c 'if ! grep -q good \"$0\"; then echo no good in $0 >&2; exit 4; fi; cat \"$0\"' {input}"
    env = azure_env(project, emu)
    run = project.cli("run", job_file(project, job_id, ins, command), "--backend", "azure", env=env)
    assert run.returncode == 1, run.stderr + run.stdout
    hint = next(line for line in run.stdout.splitlines() if line.startswith("stderr of a failed task:"))
    assert hint.endswith("--stderr --backend azure"), hint
    logs = project.cli(*hint.split(": ", 1)[1].split()[1:], env=env)
    assert logs.returncode == 0 and "no good in" in logs.stdout, logs.stderr
    bare = project.cli(*hint.split(": ", 1)[1].split()[1:-2], env=env)  # the same, without the flag
    assert bare.returncode == 0 and bare.stdout == logs.stdout, bare.stderr
    status = json.loads(project.cli("status", job_id, "--json", env=env).stdout)  # no flag: the job document
    assert status["backend"] == "azure" and status["pool"]["state"] == "deleted"
    assert {t["label"]: t["state"] for t in status["tasks"]} == {"good.txt": "succeeded", "bad.txt": "failed"}
    report = project.cli("report", job_id, "--json", env=env)
    assert report.returncode == 0, report.stderr
    numbers = json.loads(report.stdout)
    assert numbers["backend"] == "azure"
    assert numbers["shape"] == f"Azure Batch pool by-{job_id}: standard_d2s_v3 x 1 node(s) x 1 slot(s) (deleted)"
    local = project.cli("status", job_id, "--json", "--backend", "local", env=env)  # the flag still decides:
    assert local.returncode == 3 and f"job '{job_id}' not found" in local.stderr, local.stderr
