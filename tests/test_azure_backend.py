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
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from batchyard.backends import get_backend
from batchyard.backends.azure.adder import TaskAdder
from batchyard.backends.azure.backend import AzureBackend
from batchyard.backends.azure.pools import per_job_pool_id, pool_options
from batchyard.backends.azure.registries import container_setup
from batchyard.backends.azure.tasks import sas_lifetime
from batchyard.core.config import PoolSection, load_config
from batchyard.core.errors import AuthenticationError, BackendError, ConfigError
from batchyard.core.job import job_from_dict
from batchyard.emulator.batch import FaultConfig

sys.path.insert(0, str(Path(__file__).parent))
from conformance.test_azure_emulator import IMAGE, azure_env, create_empty_pool, raw_client

pytestmark = pytest.mark.timeout(240)  # a hang guard: generous, so a busy machine never trips it
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


def batch_ids(client: Any) -> tuple[set[str], set[str]]:
    return {p.id for p in client.list_pools()}, {j.id for j in client.list_jobs()}


def nothing_new(client: Any, before: tuple[set[str], set[str]]) -> bool:
    """No pool or job appeared since ``before`` (others may have gone: a shared emulator deletes as it goes)."""
    pools, jobs = batch_ids(client)
    return not (pools - before[0]) and not (jobs - before[1])


def simple_job(project: Any, job_id: str, container: str, **extra: Any) -> Any:
    return job_from_dict({"id": job_id, "command": "cat {input}", "inputs": {"container": container}, **extra},
                         source="test", base_dir=project.dir)


def test_wrong_key_fails_preflight_and_creates_nothing(project: Any, batch_emulator: Any) -> None:
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    client = raw_client(batch_emulator)
    before = batch_ids(client)  # the emulator may be shared: compare, never expect it empty
    config = azure_config(project, batch_emulator, key=wrong)
    with get_backend(None, config) as be, pytest.raises(AuthenticationError) as info:
        be.preflight()
    message = str(info.value)
    assert "Batch account key" in message and wrong not in message and batch_emulator.account_key not in message
    assert nothing_new(client, before)
    assert config.storage.system_container not in {c.name for c in project.storage.blob_service.list_containers()}


def _released(be: Any, pool_id: str) -> bool:
    """Gone, or being deleted (Azure's ``deleting`` lasts a while; it bills no new node)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:  # one call: between an existence check and a get, a deleting pool may be gone
        return str(be.client.get_pool(pool_id).state) == "BatchPoolState.DELETING"
    except ResourceNotFoundError:
        return True


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
        counts = be.wait(job_id, timeout=180, poll_interval=0.2)
        assert (counts.succeeded, counts.failed) == (2, 0)
        assert _released(be, pool_id), "the per-job pool survived a fully successful run"
        assert be.pools.get_record(pool_id) is None
        assert str(client.get_job(job_id).state.value) == "completed"
        assert {r.label: r.state for r in be.list_task_results(job_id)} == {"one.txt": "succeeded",
                                                                             "two.txt": "succeeded"}
        task_id = next(r.task_id for r in be.list_task_results(job_id) if r.label == "one.txt")
        assert be.read_task_log(job_id, task_id) == b"1", "stdout must come from the log blob (node is gone)"
        again = be.submit(simple_job(project, job_id, ins))  # all succeeded: nothing to do, no pool
        assert (again.enqueued, again.already_succeeded) == (0, 2) and _released(be, pool_id)
        project.put_inputs(ins, {"three.txt": b"3"})
        # The completed job stays as it is: a new run (a new Batch job) runs the new input only.
        third = be.submit(simple_job(project, job_id, ins))
        assert (third.enqueued, third.already_succeeded) == (1, 2)
        assert [t.display_name for t in client.list_tasks(f"{job_id}-r2")] == ["three.txt"]
        assert be.wait(job_id, timeout=30, poll_interval=0.2).succeeded == 3
        be.delete(job_id)
        for batch_job_id in (job_id, f"{job_id}-r2"):
            with pytest.raises(ResourceNotFoundError):
                client.get_job(batch_job_id)


def test_resubmit_is_idempotent_and_task_exists_is_tolerated(project: Any, batch_emulator: Any) -> None:
    client = raw_client(batch_emulator)
    idle = f"idle-{project.uid}"  # a shared emulator (make test-compose) has other tests' pools
    create_empty_pool(client, idle)  # no nodes: nothing runs, so every task stays active
    config = azure_config(project, batch_emulator, pool_id=idle)
    ins = project.container("inputs")
    project.put_inputs(ins, {f"f{i}.txt": b"x" for i in range(5)})
    job = simple_job(project, "idem", ins)
    with get_backend(None, config) as be:
        first = be.submit(job)
        second = be.submit(job)
        assert (first.enqueued, second.enqueued, second.already_running) == (5, 0, 5)
        assert len(list(client.list_tasks("idem"))) == 5
        # An interrupted submit that did add its tasks: adding them again is not an error.
        from batchyard.backends.azure.tasks import TaskUrls, build_task

        urls = TaskUrls(resource_files=(), output_containers={}, log_container_url="http://unused")
        options = [build_task(job, t, urls=urls, input_url=None, required=[]) for t in be.fan_out(job)]
        report = TaskAdder(be.client, "idem").add(options)
        assert (report.added, report.existed) == (0, 5)
        assert be.task_counts("idem").pending == 5


def test_adder_takes_tasks_as_requests_go_out(batch_emulator: Any) -> None:
    """The adder builds a bounded number of chunks ahead of Batch's answers: tasks are on Batch
    before the last body is built, and a refused task stops the chunks not yet taken."""
    client = raw_client(batch_emulator)
    uid = uuid.uuid4().hex[:8]
    create_empty_pool(client, f"idle-{uid}")
    job_id = f"stream-{uid}"
    client.create_job(bm.BatchJobCreateOptions(id=job_id, pool_info=bm.BatchPoolInfo(pool_id=f"idle-{uid}")))
    seen_on_batch: list[int] = []

    def bodies(n: int, *, bad_at: int | None = None) -> Any:
        for i in range(n):
            if i == 2_400:  # chunk 24: at most 16 chunks are in flight, so 8 have been answered
                seen_on_batch.append(client.get_job_task_counts(job_id).task_counts.active)
            yield {"id": "bad id" if i == bad_at else f"t{i:05d}", "commandLine": f"true {i}"}

    report = TaskAdder(client, job_id).add(bodies(2_500))
    assert (report.added, report.existed) == (2_500, 0)
    assert seen_on_batch and seen_on_batch[0] >= 800
    taken = 0

    def counted() -> Any:
        nonlocal taken
        for body in bodies(10_000, bad_at=0):
            taken += 1
            yield body

    with pytest.raises(BackendError, match="refused task 'bad id'"):
        # One request at a time: the first chunk is answered before a third is built.
        TaskAdder(client, job_id, concurrency=1).add(counted())
    assert taken <= 300  # the refusal ended the add long before every body was built


def test_add_collection_is_chunked_and_split_when_too_large(project: Any, batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig(add_collection_too_large_over=40, http_503_count=1))
    client = raw_client(emu)
    create_empty_pool(client, "idle")
    config = azure_config(project, emu, pool_id="idle")
    (project.dir / "sweep.csv").write_text("N\n" + "".join(f"{i}\n" for i in range(250)), encoding="utf-8")
    job = job_from_dict({"id": "big", "command": "echo {N}", "tasks": "sweep.csv"}, source="test",
                        base_dir=project.dir)
    with get_backend(None, config) as be:
        submitted = be.submit(job)
        assert submitted.enqueued == 250
        ids = [t.id for t in client.list_tasks("big", select=["id"])]
        assert len(ids) == 250 == len({i.lower() for i in ids})
        assert be.task_counts("big").pending == 250


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
    idle = f"idle-{project.uid}"  # a shared emulator (make test-compose) has other tests' pools
    create_empty_pool(client, idle)
    config = azure_config(project, batch_emulator, pool_id=idle)
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
    code = "import sys; from batchyard.cli.pool import pool; pool(sys.argv[1:], prog_name='batchyard pool')"
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
    deadline = time.monotonic() + 30  # deleting for a moment, as on Azure, then gone
    while any(p.id == "ours" for p in client.list_pools()):
        assert time.monotonic() < deadline, "the pool was never deleted"
        time.sleep(0.1)


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


# ---------------------------------------------------------------------------------------------- registries
PRIVATE = "myregistry.azurecr.io"
REGISTRY_PASSWORD = "acr-Pa55word-" + "x7Q2" * 8  # what ACR's access keys look like: long and random
IDENTITY = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull"
REGISTRIES_TOML = f"""
[[azure.container_registries]]
server = "{PRIVATE}"
username = "myregistry"
password_env = "MYREGISTRY_PASSWORD"

[[azure.container_registries]]
server = "byidentity.azurecr.io"
identity_resource_id = "{IDENTITY}"
"""


def registry_config(project: Any, emu: Any, *, pool_id: str | None = None, password: bool = True,
                    extra: str = "") -> Any:
    """An azure config with REGISTRIES_TOML; its password in the environment unless ``password=False``."""
    toml = project.dir / "batchyard.toml"
    text = toml.read_text(encoding="utf-8").split("[azure]")[0].replace('backend = "local"', 'backend = "azure"')
    text += "[azure]\npoll_interval = 0.3\n" + (f'pool_id = "{pool_id}"\n' if pool_id else "") + extra
    toml.write_text(text + REGISTRIES_TOML, encoding="utf-8")
    env = azure_env(project, emu)
    if password:
        env["MYREGISTRY_PASSWORD"] = REGISTRY_PASSWORD
    return load_config(toml, env=env)


def raw_get(client: Any, path: str) -> str:
    """The emulator's JSON exactly as sent (the SDK models would hide a field they do not know)."""
    from azure.core.rest import HttpRequest

    response = client.send_request(HttpRequest("GET", f"{path}?api-version=2025-06-01"))
    assert response.status_code == 200, response.text()
    return response.text()


def test_registry_config_errors_name_the_field(tmp_path: Path) -> None:
    def error(entry: str, *, extra: str = "") -> str:
        (tmp_path / "batchyard.toml").write_text(f"[[azure.container_registries]]\n{entry}{extra}", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / "batchyard.toml", env={})
        return str(info.value)

    base = f'server = "{PRIVATE}"\nusername = "me"\n'
    literal = error(base + f'password = "{REGISTRY_PASSWORD}"\n')
    assert "azure.container_registries.0.password: a password is never read from batchyard.toml" in literal
    assert "password_env" in literal and REGISTRY_PASSWORD not in literal
    assert "azure.container_registries.0.pasword_env: unknown setting" in error(base + 'pasword_env = "PW"\n')
    assert "azure.container_registries.0: set username and password_env" in error(base)
    pasted = error(base + f'password_env = "{REGISTRY_PASSWORD}"\n')
    assert "azure.container_registries.0.password_env: the NAME of the environment variable" in pasted
    assert REGISTRY_PASSWORD not in pasted
    both = error(base + f'password_env = "PW"\nidentity_resource_id = "{IDENTITY}"\n')
    assert "azure.container_registries.0: set either username and password_env, or identity_resource_id" in both
    assert "azure.container_registries.0.server" in error('server = "myregistry.azurecr.io/tools"\nusername = "u"\n'
                                                        'password_env = "PW"\n')
    twice = error(base + 'password_env = "PW"\n', extra=f'[[azure.container_registries]]\nserver = "https://'
                  f'{PRIVATE.upper()}/"\nusername = "u"\npassword_env = "PW2"\n')
    assert f"azure.container_registries: two entries for {PRIVATE}" in twice

    # Valid: the server is normalised, and a missing variable is no error yet (status, logs never need it).
    (tmp_path / "batchyard.toml").write_text(REGISTRIES_TOML.replace(PRIVATE, f"https://{PRIVATE}/"),
                                             encoding="utf-8")
    config = load_config(tmp_path / "batchyard.toml", env={})
    assert [r.server for r in config.azure.container_registries] == [PRIVATE, "byidentity.azurecr.io"]
    assert config.registry_password(PRIVATE) is None
    with_env = load_config(tmp_path / "batchyard.toml", env={"MYREGISTRY_PASSWORD": REGISTRY_PASSWORD})
    assert with_env.registry_password(f"https://{PRIVATE.upper()}") == REGISTRY_PASSWORD
    assert REGISTRY_PASSWORD not in repr(with_env) + str(with_env.azure) + repr(with_env.azure.container_registries)


def test_container_pool_lists_registries_and_the_password_appears_nowhere(
        project: Any, batch_emulator_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("", "azure", "batchyard", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    emu = batch_emulator_factory(FaultConfig())  # its own emulator (faults given): the test reads its state
    client = raw_client(emu)
    config = registry_config(project, emu, extra="[azure.pool]\ndedicated_nodes = 0\n")  # no node: nothing runs
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    image = f"{PRIVATE}/tools/app:1"
    job_id = f"acr-{uuid.uuid4().hex[:6]}"
    pool_id = per_job_pool_id(job_id)

    options = pool_options(pool_id, PoolSection(), job_id=job_id, containers=container_setup(image, config))
    sent = options.virtual_machine_configuration.container_configuration.container_registries
    assert [(r.registry_server, r.username, r.password) for r in sent] == [(PRIVATE, "myregistry", REGISTRY_PASSWORD)]

    with get_backend(None, config) as be:
        assert be.submit(simple_job(project, job_id, ins, container_image=image)).enqueued == 1
        pool = client.get_pool(pool_id)
        containers = pool.virtual_machine_configuration.container_configuration
        assert containers.container_image_names == [image]
        (registry,) = containers.container_registries  # the identity registry: a created pool cannot use it
        assert (registry.registry_server, registry.username, registry.password) == (PRIVATE, "myregistry", None)
        (task,) = client.list_tasks(job_id)
        assert task.container_settings.registry.registry_server == PRIVATE
        assert task.container_settings.registry.password is None

        seen = {"GET pool": raw_get(client, f"/pools/{pool_id}"), "GET pools": raw_get(client, "/pools"),
                "GET job": raw_get(client, f"/jobs/{job_id}"), "GET tasks": raw_get(client, f"/jobs/{job_id}/tasks"),
                "backend repr": repr(be) + repr(be.config) + str(be.config.azure),
                "setup repr": repr(container_setup(image, config)),
                "emulator state": json.dumps([p.spec for p in emu.store.pools.values()]
                                             + [t.spec for j in emu.store.jobs.values() for t in j.tasks.values()])}
        assert PRIVATE in seen["GET pool"] and '"username":"myregistry"' in seen["GET pool"]
        records = be.documents.system_container
        seen["records"] = "".join(project.storage.download_bytes(records, name).decode(errors="replace")
                                  for name in project.storage.list_blob_names(records))
        assert job_id in seen["records"]  # the pool record and the job document are there

        # errors: a submit with the variable unset, and the emulator refusing a bad registry reference
        unset = registry_config(project, emu, password=False)
        with get_backend(None, unset) as be2, pytest.raises(ConfigError) as info:
            be2.submit(simple_job(project, f"{job_id}-x", ins, container_image=image))
        seen["missing-password error"] = str(info.value)
        bad = bm.ContainerRegistryReference(registry_server=PRIVATE, password=REGISTRY_PASSWORD)  # no username
        with pytest.raises(HttpResponseError) as refused:
            client.create_pool(bm.BatchPoolCreateOptions(
                id="refused", vm_size="standard_d2s_v3", virtual_machine_configuration=bm.VirtualMachineConfiguration(
                    image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04",
                    container_configuration=bm.BatchContainerConfiguration(
                        type=bm.ContainerType.DOCKER_COMPATIBLE, container_registries=[bad]))))
        seen["emulator error"] = str(refused.value)
        assert "containerRegistries[0].username" in seen["emulator error"]
    seen["log"] = caplog.text + "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert any(r.name.startswith("azure") for r in caplog.records), "the Azure SDK loggers were not captured"
    for where, text in seen.items():
        assert REGISTRY_PASSWORD not in text, f"the registry password shows in the {where}"


def test_task_registry_follows_the_image_host(project: Any, batch_emulator: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    client = raw_client(batch_emulator)
    idle = f"idle-{project.uid}"  # a shared emulator (make test-compose) has other tests' pools
    # No nodes: container tasks never need a Docker engine here. Container-enabled, as Batch requires.
    client.create_pool(bm.BatchPoolCreateOptions(
        id=idle, vm_size="standard_d2s_v3", target_dedicated_nodes=0,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04",
            container_configuration=bm.BatchContainerConfiguration(type=bm.ContainerType.DOCKER_COMPATIBLE))))
    config = registry_config(project, batch_emulator, pool_id=idle)
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})

    def registry_of(image: str) -> Any:
        job_id = f"img-{uuid.uuid4().hex[:6]}"
        with get_backend(None, config) as be:
            be.submit(simple_job(project, job_id, ins, container_image=image))
        (task,) = client.list_tasks(job_id)
        assert task.container_settings.image_name == image
        return task.container_settings.registry

    with caplog.at_level(logging.WARNING, logger="batchyard"):
        private = registry_of(f"{PRIVATE}/tools/app@sha256:{'0' * 64}")
        assert (private.registry_server, private.username, private.password) == (PRIVATE, "myregistry", None)
        identity = registry_of("byidentity.azurecr.io/app:2")
        assert identity.identity_reference.resource_id == IDENTITY and identity.username is None
        for public in ("python:3.12-slim", "myorg/tool", "mcr.microsoft.com/azurelinux/base/python:3"):
            assert registry_of(public) is None, public
        assert not [r for r in caplog.records if "container_registries" in r.getMessage()]
        assert registry_of("ghcr.io/someone/tool:1") is None
    (warning,) = [r.getMessage() for r in caplog.records if "container_registries" in r.getMessage()]
    assert "ghcr.io" in warning and "anonymous" in warning


def test_registry_problems_stop_a_submit_before_anything_exists(project: Any, batch_emulator: Any) -> None:
    client = raw_client(batch_emulator)
    before = batch_ids(client)  # the emulator may be shared: compare, never expect it empty
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    unset = registry_config(project, batch_emulator, password=False)
    with get_backend(None, unset) as be:
        with pytest.raises(ConfigError, match=r"azure\.container_registries\.0\.password_env: the environment "
                                              r"variable MYREGISTRY_PASSWORD .* is not set"):
            be.submit(simple_job(project, "nopw", ins, container_image=f"{PRIVATE}/app:1"))
        # the identity registry (an ARM-made pool's business) needs no password; a created pool cannot use it
        with_pw = registry_config(project, batch_emulator)
    with get_backend(None, with_pw) as be, pytest.raises(ConfigError, match=r"managed identity.*pool_id"):
        be.submit(simple_job(project, "byid", ins, container_image="byidentity.azurecr.io/app:2"))
    assert nothing_new(client, before)
    assert not be.pools.get_record(per_job_pool_id("byid")) and not be.pools.get_record(per_job_pool_id("nopw"))
    # A job without an image never needs the registries, so the unset variable is no obstacle.
    idle = f"idle-{project.uid}"  # a shared emulator (make test-compose) has other tests' pools
    create_empty_pool(client, idle)
    plain = registry_config(project, batch_emulator, pool_id=idle, password=False)
    with get_backend(None, plain) as be:
        assert be.submit(simple_job(project, "plain", ins)).enqueued == 1
