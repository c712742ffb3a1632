"""Azure-backend specifics against the Batch API emulator (real SDK over HTTP, real Azurite, no mocks)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends import get_backend
from batchyard.backends.azure import AzureBackend
from batchyard.backends.azure_pools import per_job_pool_id
from batchyard.backends.azure_tasks import TaskAdder, sas_lifetime
from batchyard.config import PoolSection, load_config
from batchyard.emulator.batch import FaultConfig
from batchyard.errors import AuthenticationError, BackendError
from batchyard.job import job_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from conformance.test_azure_emulator import azure_env, create_empty_pool, raw_client

pytestmark = pytest.mark.timeout(90)
REPO = Path(__file__).resolve().parent.parent


def azure_config(project: Any, emu: Any, *, pool_id: str | None = None, key: str | None = None) -> Any:
    toml = project.dir / "batchyard.toml"
    text = toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
    if pool_id and "[azure]" not in text:
        text += f'[azure]\npool_id = "{pool_id}"\npoll_interval = 0.3\n'
    toml.write_text(text, encoding="utf-8")
    env = azure_env(project, emu)
    if key is not None:
        env["BATCHYARD_BATCH_KEY"] = key
    return load_config(toml, env=env)


def simple_job(project: Any, job_id: str, container: str, **extra: Any) -> Any:
    return job_from_dict({"id": job_id, "command": "cat {input}", "inputs": {"container": container}, **extra},
                         source="test", base_dir=project.dir)


def test_wrong_key_fails_preflight_and_creates_nothing(project: Any, batch_emulator: Any) -> None:
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    config = azure_config(project, batch_emulator, key=wrong)
    with get_backend(None, config) as be, pytest.raises(AuthenticationError) as info:
        be.preflight()
    message = str(info.value)
    assert "Batch account key" in message and wrong not in message and batch_emulator.account_key not in message
    client = raw_client(batch_emulator)
    assert list(client.list_pools()) == [] and list(client.list_jobs()) == []
    assert config.storage.system_container not in {c.name for c in project.storage.blob_service.list_containers()}


def test_env_only_config_runs_on_a_per_job_pool(project: Any, batch_emulator: Any, tmp_path: Path,
                                                tmp_path_factory: pytest.TempPathFactory,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("bare"))  # no batchyard.toml above: defaults + environment only
    env = {"AZURE_STORAGE_CONNECTION_STRING": project.env["AZURE_STORAGE_CONNECTION_STRING"],
           "BATCHYARD_HOME": str(tmp_path / "home"), "BATCHYARD_BACKEND": "azure",
           "BATCHYARD_BATCH_URL": batch_emulator.url, "BATCHYARD_BATCH_ACCOUNT": batch_emulator.account_name,
           "BATCHYARD_BATCH_KEY": batch_emulator.account_key}
    config = load_config(None, env=env)
    assert config.source is None and config.backend == "azure" and config.azure.pool is None
    ins = project.container("inputs")
    project.put_inputs(ins, {"one.txt": b"1", "two.txt": b"2"})
    job_id = f"envonly-{uuid.uuid4().hex[:6]}"
    pool_id = per_job_pool_id(job_id)
    client = raw_client(batch_emulator)
    with get_backend(None, config) as be:
        assert isinstance(be, AzureBackend)
        be.preflight()
        submitted = be.submit(simple_job(project, job_id, ins))
        assert (submitted.total, submitted.enqueued) == (2, 2)
        assert be.pools.get_record(pool_id) is not None, "the per-job pool was not recorded"
        pool = client.get_pool(pool_id)
        assert pool.vm_size == "standard_d2s_v3" and pool.target_dedicated_nodes == 1
        counts = be.wait(job_id, timeout=30, poll_interval=0.2)
        assert (counts.succeeded, counts.failed) == (2, 0)
        assert not be.pools.exists(pool_id), "the per-job pool survived a fully successful run"
        assert be.pools.get_record(pool_id) is None
        assert str(client.get_job(job_id).state.value) == "completed"
        assert {r.label: r.state for r in be.list_task_results(job_id)} == {"one.txt": "succeeded",
                                                                             "two.txt": "succeeded"}
        task_id = next(r.task_id for r in be.list_task_results(job_id) if r.label == "one.txt")
        assert be.read_task_log(job_id, task_id) == b"1", "stdout must come from the log blob (node is gone)"
        again = be.submit(simple_job(project, job_id, ins))  # all succeeded: nothing to do, no pool
        assert (again.enqueued, again.already_succeeded) == (0, 2) and not be.pools.exists(pool_id)
        project.put_inputs(ins, {"three.txt": b"3"})
        with pytest.raises(BackendError, match=f"job {job_id} is completed on Azure Batch.*batchyard delete"):
            be.submit(simple_job(project, job_id, ins))
        be.delete(job_id)
        with pytest.raises(ResourceNotFoundError):
            client.get_job(job_id)


def test_resubmit_is_idempotent_and_task_exists_is_tolerated(project: Any, batch_emulator: Any) -> None:
    client = raw_client(batch_emulator)
    create_empty_pool(client, "idle")  # no nodes: nothing runs, so every task stays active
    config = azure_config(project, batch_emulator, pool_id="idle")
    ins = project.container("inputs")
    project.put_inputs(ins, {f"f{i}.txt": b"x" for i in range(5)})
    job = simple_job(project, "idem", ins)
    with get_backend(None, config) as be:
        first = be.submit(job)
        second = be.submit(job)
        assert (first.enqueued, second.enqueued, second.already_running) == (5, 0, 5)
        assert len(list(client.list_tasks("idem"))) == 5
        # An interrupted submit that did add its tasks: adding them again is not an error.
        from batchyard.backends.azure_tasks import TaskUrls, build_task

        urls = TaskUrls(resource_files=(), output_containers={}, log_container_url="http://unused")
        options = [build_task(job, t, urls=urls, input_url=None, required=[]) for t in be.fan_out(job)]
        report = TaskAdder(be.client, "idem").add(options)
        assert (report.added, report.existed) == (0, 5)
        assert be.task_counts("idem").pending == 5


def test_add_collection_is_chunked_and_split_when_too_large(project: Any, batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig(add_collection_too_large_over=40, http_503_count=1))
    client = raw_client(emu)
    create_empty_pool(client, "idle")
    config = azure_config(project, emu, pool_id="idle")
    (project.dir / "sweep.csv").write_text("N\n" + "".join(f"{i}\n" for i in range(250)), encoding="utf-8")
    job = job_from_dict({"id": "big", "command": "echo {N}", "tasks": "sweep.csv"}, source="test",
                        base_dir=project.dir)
    started = time.monotonic()
    with get_backend(None, config) as be:
        submitted = be.submit(job)
        assert submitted.enqueued == 250
        ids = [t.id for t in client.list_tasks("big", select=["id"])]
        assert len(ids) == 250 == len({i.lower() for i in ids})
        assert be.task_counts("big").pending == 250
    assert time.monotonic() - started < 30


def test_sas_expiry_follows_the_constraints(project: Any, batch_emulator: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    margin = timedelta(hours=1)
    bounded = simple_job(project, "b", "inputs-x", constraints={"max_wall_clock_time": "10m",
                                                                 "max_task_retry_count": 2})
    assert sas_lifetime(bounded, margin=margin) == (timedelta(minutes=30) + margin, [])
    unbounded = simple_job(project, "u", "inputs-x")
    lifetime, warnings = sas_lifetime(unbounded, margin=margin)
    assert lifetime == timedelta(days=7) and "week-long SAS" in warnings[0]
    long = simple_job(project, "l", "inputs-x", constraints={"max_wall_clock_time": "2d", "max_task_retry_count": 4})
    lifetime, warnings = sas_lifetime(long, margin=margin)
    assert lifetime == timedelta(days=10, hours=1) and "over 7 days" in warnings[0]

    client = raw_client(batch_emulator)
    create_empty_pool(client, "idle")
    config = azure_config(project, batch_emulator, pool_id="idle")
    ins = project.container("inputs")
    project.put_inputs(ins, {"s.txt": b"s"})
    with get_backend(None, config) as be, caplog.at_level(logging.WARNING, logger="batchyard"):
        be.submit(simple_job(project, "sasjob", ins, constraints={"max_wall_clock_time": "10m",
                                                                  "max_task_retry_count": 2}))
        assert not [r for r in caplog.records if "SAS" in r.getMessage()]
        be.submit(simple_job(project, "sasweek", ins))
        assert any("week-long SAS" in r.getMessage() for r in caplog.records)
    (task,) = client.list_tasks("sasjob")
    url = task.resource_files[0].http_url
    query = parse_qs(urlsplit(url).query)
    assert query["sp"] == ["r"]
    expiry = datetime.fromisoformat(query["se"][0].replace("Z", "+00:00"))
    expected = datetime.now(UTC) + timedelta(minutes=30) + margin
    assert abs((expiry - expected).total_seconds()) < 120
    out = parse_qs(urlsplit(task.output_files[-1].destination.container.container_url).query)
    assert sorted(out["sp"][0]) == ["c", "w"]


def _pool_cli(project: Any, emu: Any, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from batchyard.pool_cli import pool; pool(sys.argv[1:], prog_name='batchyard pool')"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=project.dir, env=azure_env(project, emu),
                          capture_output=True, text=True, timeout=60)


def test_pool_delete_only_deletes_pools_batchyard_created(project: Any, batch_emulator: Any) -> None:
    client = raw_client(batch_emulator)
    create_empty_pool(client, "not-ours")
    config = azure_config(project, batch_emulator)
    with AzureBackend(config) as be:
        be.pools.create("ours", PoolSection(dedicated_nodes=0), job_id=None)
    refused = _pool_cli(project, batch_emulator, "delete", "not-ours")
    assert refused.returncode == 3, refused.stderr
    assert "not created by batchyard" in refused.stderr and batch_emulator.account_key not in refused.stderr
    assert client.get_pool("not-ours").id == "not-ours"
    listed = _pool_cli(project, batch_emulator, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [p["pool_id"] for p in json.loads(listed.stdout)] == ["ours"]
    deleted = _pool_cli(project, batch_emulator, "delete", "ours")
    assert deleted.returncode == 0, deleted.stderr
    with pytest.raises(ResourceNotFoundError):
        client.get_pool("ours")


def test_cli_run_and_status_through_the_environment(project: Any, batch_emulator: Any) -> None:
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"alpha", "b.txt": b"beta"})
    (project.dir / "job.toml").write_text(
        f'id = "clijob"\ncommand = "cat {{input}}"\n[inputs]\ncontainer = "{ins}"\n', encoding="utf-8")
    env = {**azure_env(project, batch_emulator), "BATCHYARD_BACKEND": "azure"}
    run = subprocess.run([sys.executable, "-m", "batchyard", "run", "job.toml"], cwd=project.dir, env=env,
                         capture_output=True, text=True, timeout=80)
    assert run.returncode == 0, run.stderr + run.stdout
    status = subprocess.run([sys.executable, "-m", "batchyard", "status", "clijob", "--json"], cwd=project.dir,
                            env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["backend"] == "azure" and data["counts"]["succeeded"] == 2
    assert sorted(t["label"] for t in data["tasks"]) == ["a.txt", "b.txt"]
    assert all(t["state"] == "succeeded" and t["attempts"] == 1 for t in data["tasks"])
    assert batch_emulator.account_key not in run.stderr + run.stdout + status.stdout
