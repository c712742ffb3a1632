"""Batch semantics beyond the tutorial: auto pools, start tasks, dependencies, staging failures,
job completion, termination, and the detached process."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as bm
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from batchyard.emulator.batch import detached_status, start_detached, stop_detached

from .test_sdk_tutorial import IMAGE, client_for, make_job, make_pool, sh, wait_all_completed

pytestmark = pytest.mark.timeout(240)  # a hang guard: generous, so a busy machine never trips it
VM = bm.VirtualMachineConfiguration(image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04")


def wait_for(check: Any, timeout: float = 120) -> Any:
    """Poll ``check`` until true (its value); the deadline only bounds a failure, so it is generous."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_auto_pool_lives_and_dies_with_job(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    client.create_job(bm.BatchJobCreateOptions(id="auto-job", pool_info=bm.BatchPoolInfo(
        auto_pool_specification=bm.BatchAutoPoolSpecification(
            auto_pool_id_prefix="auto", pool_lifetime_option=bm.BatchPoolLifetimeOption.JOB, keep_alive=False,
            pool=bm.BatchPoolSpecification(vm_size="standard_d2s_v3", target_dedicated_nodes=1,
                                           virtual_machine_configuration=VM)))))
    pool_id = client.get_job("auto-job").execution_info.pool_id
    assert pool_id.startswith("auto_") and client.get_pool(pool_id).current_dedicated_nodes == 1
    client.create_task("auto-job", bm.BatchTaskCreateOptions(id="t", command_line="true"))
    wait_all_completed(client, "auto-job")
    client.update_job("auto-job", bm.BatchJobUpdateOptions(
        all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.TERMINATE_JOB))
    job = wait_for(lambda: (j := client.get_job("auto-job")).state == bm.BatchJobState.COMPLETED and j)
    assert job.execution_info.termination_reason == "AllTasksComplete"
    # The auto pool is deleting for a moment, as on Azure, then gone.
    wait_for(lambda: all(p.id != pool_id for p in client.list_pools()))


def test_start_task_runs_per_node(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    client.create_pool(bm.BatchPoolCreateOptions(
        id="st-pool", vm_size="standard_d2s_v3", target_dedicated_nodes=2, virtual_machine_configuration=VM,
        start_task=bm.BatchStartTask(command_line=sh("echo ready > $AZ_BATCH_NODE_SHARED_DIR/marker"),
                                     wait_for_success=True)))
    nodes = wait_for(lambda: (ns := list(client.list_nodes("st-pool"))) and all(
        n.state == bm.BatchNodeState.IDLE for n in ns) and ns)
    assert all(n.start_task_info.exit_code == 0 for n in nodes)
    make_job(client, "st-job", "st-pool")
    client.create_task("st-job", bm.BatchTaskCreateOptions(id="read", command_line=sh(
        "cat $AZ_BATCH_NODE_SHARED_DIR/marker; echo $AZ_BATCH_ACCOUNT_NAME $AZ_BATCH_POOL_ID")))
    wait_all_completed(client, "st-job")
    out = b"".join(client.download_task_file("st-job", "read", "stdout.txt")).decode().split()
    assert out == ["ready", batch_emulator.account_name, "st-pool"]
    client.create_pool(bm.BatchPoolCreateOptions(
        id="bad-st-pool", vm_size="standard_d2s_v3", target_dedicated_nodes=1, virtual_machine_configuration=VM,
        start_task=bm.BatchStartTask(command_line="false", wait_for_success=True)))
    (node,) = wait_for(lambda: (ns := list(client.list_nodes("bad-st-pool"))) and ns[0].state ==
                       bm.BatchNodeState.START_TASK_FAILED and ns)
    assert node.start_task_info.result == bm.BatchTaskExecutionResult.FAILURE


def test_dependencies_block_and_satisfy(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    make_pool(client, "dep-pool", nodes=1, slots=4)
    make_job(client, "dep-job", "dep-pool", uses_task_dependencies=True)
    satisfy = bm.ExitConditions(default=bm.ExitOptions(dependency_action=bm.DependencyAction.SATISFY))
    client.create_tasks("dep-job", [
        bm.BatchTaskCreateOptions(id="a", command_line="false"),
        bm.BatchTaskCreateOptions(id="b", command_line=sh("exit 1"), exit_conditions=satisfy),
        bm.BatchTaskCreateOptions(id="c", command_line="true", depends_on=bm.BatchTaskDependencies(task_ids=["a"])),
        bm.BatchTaskCreateOptions(id="d", command_line="true", depends_on=bm.BatchTaskDependencies(task_ids=["b"])),
    ])
    done = bm.BatchTaskState.COMPLETED
    wait_for(lambda: client.get_task("dep-job", "a").state == done and client.get_task("dep-job", "d").state == done)
    # A task added now runs only once the scheduler has passed over the job again, "c" included: had
    # the failed "a" released it, "c" would have run by then (the node has free slots).
    client.create_task("dep-job", bm.BatchTaskCreateOptions(id="e", command_line="true"))
    wait_for(lambda: client.get_task("dep-job", "e").state == done)
    assert client.get_task("dep-job", "c").state == bm.BatchTaskState.ACTIVE  # blocked by failed "a"


def test_staging_failures_and_container_source(batch_emulator: Any, azurite_connection_string: str) -> None:
    blobs = BlobServiceClient.from_connection_string(azurite_connection_string)
    name = f"in-{uuid.uuid4().hex[:8]}"
    blobs.create_container(name)
    for blob in ("set/a.txt", "set/b.txt", "other.txt"):
        blobs.get_blob_client(name, blob).upload_blob(blob.encode())
    cred = blobs.credential
    sas = generate_container_sas(cred.account_name, name, account_key=cred.account_key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    url = f"{blobs.url}/{name}?{sas}"
    client = client_for(batch_emulator)
    make_pool(client, "stage-pool", nodes=1, slots=4)
    make_job(client, "stage-job", "stage-pool")
    client.create_tasks("stage-job", [
        bm.BatchTaskCreateOptions(id="prefix", command_line="ls -R data", resource_files=[
            bm.ResourceFile(storage_container_url=url, blob_prefix="set/", file_path="data")]),
        bm.BatchTaskCreateOptions(id="auto", command_line="cat other.txt", resource_files=[
            bm.ResourceFile(auto_storage_container_name=name, blob_prefix="other")]),
        bm.BatchTaskCreateOptions(id="missing", command_line="true", resource_files=[
            bm.ResourceFile(http_url=f"{blobs.url}/{name}/nope.txt?{sas}", file_path="nope.txt")]),
        bm.BatchTaskCreateOptions(id="denied", command_line="true", resource_files=[
            bm.ResourceFile(storage_container_url=f"{blobs.url}/{name}?{sas.replace('sig=', 'sig=AA')}")]),
    ])
    done = {t.id: t for t in wait_all_completed(client, "stage-job")}
    assert done["prefix"].execution_info.result == bm.BatchTaskExecutionResult.SUCCESS
    listing = b"".join(client.download_task_file("stage-job", "prefix", "stdout.txt")).decode()
    assert "a.txt" in listing and "b.txt" in listing and "other.txt" not in listing
    assert b"".join(client.download_task_file("stage-job", "auto", "stdout.txt")) == b"other.txt"
    missing = done["missing"].execution_info
    assert missing.failure_info.code == "BlobNotFound" and missing.exit_code is None
    assert missing.failure_info.category == bm.BatchErrorSourceCategory.USER_ERROR
    denied = done["denied"].execution_info
    assert denied.failure_info.code == "ResourceContainerAccessDenied" and denied.exit_code is None


def test_terminate_task_and_job_kill_processes(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    make_pool(client, "kill-pool", nodes=1, slots=4)
    make_job(client, "kill-job", "kill-pool")
    client.create_tasks("kill-job", [bm.BatchTaskCreateOptions(id=f"s{i}", command_line="sleep 30")
                                     for i in range(3)])
    wait_for(lambda: client.get_job_task_counts("kill-job").task_counts.running == 3)
    client.terminate_task("kill-job", "s0")
    task = wait_for(lambda: (t := client.get_task("kill-job", "s0")).state == bm.BatchTaskState.COMPLETED and t)
    assert task.execution_info.failure_info.code == "TaskEnded"
    client.begin_delete_job("kill-job", polling_interval=0.1).result(timeout=120)
    node = client.list_nodes("kill-pool").next()
    assert node.running_tasks_count == 0 and node.state == bm.BatchNodeState.IDLE


def test_detached_process(tmp_path: Path, azurite_connection_string: str) -> None:
    home = tmp_path / "home"
    record = start_detached(home=home, storage_connection_string=azurite_connection_string)
    try:
        assert record.account_key not in repr(record)
        assert (home / "batch-emulator.json").stat().st_mode & 0o777 == 0o600
        assert azurite_connection_string not in (home / "batch-emulator.json").read_text()
        status = detached_status(home=home)
        assert status is not None and status.url == record.url
        client = client_for(status)
        make_pool(client, "p", nodes=0)
        assert client.get_pool("p").id == "p"
    finally:
        assert stop_detached(home=home) is True
    assert detached_status(home=home) is None
    assert stop_detached(home=home) is False


def test_body_over_1mb_is_refused(batch_emulator: Any) -> None:
    from azure.core.exceptions import HttpResponseError

    client = client_for(batch_emulator)
    make_pool(client, "size-pool", nodes=0)
    make_job(client, "size-job", "size-pool")
    with pytest.raises(HttpResponseError) as info:
        client.create_task("size-job", bm.BatchTaskCreateOptions(id="huge", command_line="true", environment_settings=[
            bm.EnvironmentSetting(name="BIG", value="x" * (1024 * 1024 + 10))]))
    assert info.value.status_code == 413 and info.value.error.code == "RequestBodyTooLarge"
    with pytest.raises(HttpResponseError) as info:
        client.create_task("size-job", bm.BatchTaskCreateOptions(id="bad", command_line="true", resource_files=[
            bm.ResourceFile(http_url="http://127.0.0.1:1/x", file_path="../escape")]))
    assert info.value.status_code == 400 and info.value.error.code == "InvalidPropertyValue"
    with pytest.raises(HttpResponseError) as info:
        client.create_task("size-job", bm.BatchTaskCreateOptions(id="mpi", command_line="true",
                                                                 multi_instance_settings=bm.MultiInstanceSettings(
                                                                     coordination_command_line="true")))
    assert info.value.status_code == 400 and "does not support" in info.value.message


def test_an_add_collection_holds_at_most_100_tasks(batch_emulator: Any) -> None:
    """Azure's limit on one add-collection request: 100 tasks (its 1 MB is the test above). The SDK's
    ``create_task_collection`` sends what it is given, so the emulator must refuse the 101st."""
    from azure.core.exceptions import HttpResponseError

    client = client_for(batch_emulator)
    suffix = uuid.uuid4().hex[:8]
    pool_id, job_id = f"collection-pool-{suffix}", f"collection-job-{suffix}"
    make_pool(client, pool_id, nodes=0)
    make_job(client, job_id, pool_id)

    def group(count: int, prefix: str) -> bm.BatchTaskGroup:
        return bm.BatchTaskGroup(task_values=[bm.BatchTaskCreateOptions(id=f"{prefix}-{i}", command_line="true")
                                          for i in range(count)])

    with pytest.raises(HttpResponseError) as info:
        client.create_task_collection(job_id, group(101, "over"))
    assert info.value.status_code == 413 and info.value.error.code == "RequestBodyTooLarge"
    assert [t.id for t in client.list_tasks(job_id)] == []  # nothing of a refused collection was added
    added = client.create_task_collection(job_id, group(100, "at"))
    results = added.result_values or []
    assert len(results) == 100 and all(r.status == bm.BatchTaskAddStatus.SUCCESS for r in results)
    assert len(list(client.list_tasks(job_id))) == 100


def test_a_missing_task_file_costs_no_sdk_traceback(batch_emulator: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A HEAD of a task's missing stderr.txt (a task cancelled before it ran) answers 404 with no body;
    the SDK's failsafe parse of it logged a WARNING with a JSONDecodeError traceback, which `status`
    and `logs` printed. The azure backend's client module keeps it at DEBUG."""
    import logging

    from azure.core.exceptions import HttpResponseError

    import batchyard.backends.azure.clients  # noqa: F401  (installs the filter)

    client = client_for(batch_emulator)
    suffix = uuid.uuid4().hex[:8]
    make_pool(client, f"quiet-pool-{suffix}", nodes=0)
    make_job(client, f"quiet-job-{suffix}", f"quiet-pool-{suffix}")
    client.create_task(f"quiet-job-{suffix}", bm.BatchTaskCreateOptions(id="waits", command_line="true"))
    with caplog.at_level(logging.INFO, logger="azure"), pytest.raises(HttpResponseError) as info:
        client.get_task_file_properties(f"quiet-job-{suffix}", "waits", "stderr.txt")
    assert info.value.status_code == 404
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
