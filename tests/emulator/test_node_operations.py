"""Node operations through the unmodified azure-batch SDK: the SDK's recorded compute-node flow
(service logs, scheduling, reboot, removal), what a reboot and disabled scheduling do to tasks, pool
node counts and remote login settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.batch import models as bm
from azure.batch.models._models import BatchJobTerminateOptions, BatchNodeRebootOptions  # not exported by 15.1.0
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from .sdk_helpers import VM, wait_for
from .test_sdk_tutorial import client_for, make_job, make_pool, sh

pytestmark = pytest.mark.timeout(120)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refused(call: Any) -> tuple[int, str, dict[str, str]]:
    with pytest.raises(HttpResponseError) as err:
        call()
    details = {v["key"]: v["value"] for v in err.value.model.get("values") or []}
    return err.value.status_code, err.value.error.code, details


def idle_nodes(client: Any, pool_id: str, count: int) -> list[bm.BatchNode]:
    return wait_for(lambda: (ns := list(client.list_nodes(pool_id))) and len(ns) == count and all(
        n.state == bm.BatchNodeState.IDLE for n in ns) and ns, what=f"{count} idle nodes")


def no_scheduling(option: str = "requeue") -> bm.BatchNodeDisableSchedulingOptions:
    return bm.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option=option)


@pytest.fixture
def log_container(azurite_connection_string: str) -> tuple[BlobServiceClient, str, str]:
    blobs = BlobServiceClient.from_connection_string(azurite_connection_string)
    name = uid("nodelogs")
    blobs.create_container(name)
    sas = generate_container_sas(blobs.account_name, name, account_key=blobs.credential.account_key,
                                 permission=ContainerSasPermissions(write=True, create=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    return blobs, name, f"{blobs.url}{name}?{sas}"


def test_recorded_compute_node_flow(batch_emulator: Any, log_container: Any) -> None:
    """test_batch_compute_nodes as the SDK recorded it against Azure."""
    blobs, container, container_url = log_container
    client = client_for(batch_emulator)
    pool_id = uid("nodes")
    make_pool(client, pool_id, nodes=2, slots=1)
    nodes = idle_nodes(client, pool_id, 2)
    node = client.get_node(pool_id, nodes[0].id)
    assert node.scheduling_state == bm.SchedulingState.ENABLED and node.is_dedicated
    assert node.node_agent_info.version
    result = client.upload_node_logs(pool_id, nodes[0].id, bm.UploadBatchServiceLogsOptions(
        container_url=container_url, start_time=datetime.now(UTC) - timedelta(minutes=6)))
    assert result.number_of_files_uploaded > 0
    assert result.virtual_directory_name.startswith("batch-")
    assert f"/{pool_id}/{nodes[0].id}/" in result.virtual_directory_name
    (blob,) = list(blobs.get_container_client(container).list_blobs())
    assert blob.name.startswith(result.virtual_directory_name + "/")
    assert "allocated" in blobs.get_blob_client(container, blob.name).download_blob().readall().decode()
    assert client.disable_node_scheduling(pool_id, nodes[0].id, no_scheduling("terminate")) is None
    assert client.get_node(pool_id, nodes[0].id).scheduling_state == bm.SchedulingState.DISABLED
    assert refused(lambda: client.disable_node_scheduling(pool_id, nodes[0].id, no_scheduling()))[:2] == \
        (409, "NodeAlreadyInTargetSchedulingState")
    assert client.enable_node_scheduling(pool_id, nodes[0].id) is None
    assert client.get_node(pool_id, nodes[0].id).scheduling_state == bm.SchedulingState.ENABLED
    client.begin_reboot_node(pool_id, nodes[0].id, BatchNodeRebootOptions(node_reboot_kind="terminate"),
                             polling_interval=1).result()
    rebooted = wait_for(lambda: (n := client.get_node(pool_id, nodes[0].id)).state == bm.BatchNodeState.IDLE and n)
    assert rebooted.last_boot_time > rebooted.allocation_time
    client.begin_remove_nodes(pool_id, bm.BatchNodeRemoveOptions(node_ids=[n.id for n in nodes]),
                              polling_interval=1).result()
    assert wait_for(lambda: client.get_pool(pool_id).current_dedicated_nodes == 0, what="nodes removed")


def test_disabled_scheduling_keeps_tasks_off_and_requeues(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    pool_id, job_id = uid("sched-pool"), uid("sched-job")
    make_pool(client, pool_id, nodes=2, slots=1)
    first, second = idle_nodes(client, pool_id, 2)
    make_job(client, job_id, pool_id)
    client.create_task(job_id, bm.BatchTaskCreateOptions(id="long", command_line="sleep 60"))
    running = wait_for(lambda: (t := client.get_task(job_id, "long")).state == bm.BatchTaskState.RUNNING and t)
    busy = running.node_info.node_id
    other = second.id if busy == first.id else first.id
    client.disable_node_scheduling(pool_id, busy, no_scheduling("requeue"))  # its task goes back to the queue
    moved = wait_for(lambda: (t := client.get_task(job_id, "long")).state == bm.BatchTaskState.RUNNING and
                     t.node_info.node_id == other and t, what="the task requeued onto the other node")
    assert moved.execution_info.requeue_count == 1
    client.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason="done"), polling_interval=1).result()
    follow = uid("follow")
    make_job(client, follow, pool_id)
    client.create_tasks(follow, [bm.BatchTaskCreateOptions(id=f"t{i}", command_line="true") for i in range(4)])
    tasks = wait_for(lambda: (ts := list(client.list_tasks(follow))) and all(
        t.state == bm.BatchTaskState.COMPLETED for t in ts) and ts, what="tasks completed")
    assert {t.node_info.node_id for t in tasks} == {other}  # nothing new lands on the disabled node


def test_reboot_requeues_and_reruns_start_and_preparation_tasks(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    pool_id, job_id = uid("boot-pool"), uid("boot-job")
    client.create_pool(bm.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1, virtual_machine_configuration=VM,
        start_task=bm.BatchStartTask(command_line=sh("echo start >> $AZ_BATCH_NODE_SHARED_DIR/boots"))))
    (node,) = idle_nodes(client, pool_id, 1)
    client.create_job(bm.BatchJobCreateOptions(
        id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id),
        job_preparation_task=bm.BatchJobPreparationTask(
            command_line=sh("echo prep >> $AZ_BATCH_NODE_SHARED_DIR/boots"))))
    client.create_task(job_id, bm.BatchTaskCreateOptions(id="cut", command_line="sleep 3"))
    wait_for(lambda: client.get_task(job_id, "cut").state == bm.BatchTaskState.RUNNING, what="the task running")
    poller = client.begin_reboot_node(pool_id, node.id, BatchNodeRebootOptions(node_reboot_kind="taskcompletion"),
                                      polling_interval=1)
    # While it waits for the running task the node is rebooting: a second reboot is refused.
    assert refused(lambda: client.begin_reboot_node(pool_id, node.id, BatchNodeRebootOptions(
        node_reboot_kind="requeue")))[:2] == (409, "NodeBeingRebooted")
    poller.result()
    task = wait_for(lambda: (t := client.get_task(job_id, "cut")).state == bm.BatchTaskState.COMPLETED and t)
    assert task.execution_info.exit_code == 0 and task.execution_info.requeue_count == 0  # taskcompletion let it end
    client.create_task(job_id, bm.BatchTaskCreateOptions(id="after", command_line="true"))
    wait_for(lambda: client.get_task(job_id, "after").state == bm.BatchTaskState.COMPLETED, what="a task after boot")
    boots = b"".join(client.download_node_file(pool_id, node.id, "shared/boots")).decode().split()
    assert boots == ["start", "prep", "start", "prep"]  # the start task and the preparation ran again
    status = list(client.list_job_preparation_and_release_task_status(job_id))
    assert len(status) == 1 and status[0].job_preparation_task_execution_info.exit_code == 0


def test_node_counts_and_remote_login(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    ok_pool, bad_pool = uid("a-counts"), uid("b-counts")
    make_pool(client, ok_pool, nodes=2, slots=1)
    client.create_pool(bm.BatchPoolCreateOptions(
        id=bad_pool, vm_size="standard_d2s_v3", target_low_priority_nodes=1, virtual_machine_configuration=VM,
        start_task=bm.BatchStartTask(command_line="false", wait_for_success=True)))
    nodes = idle_nodes(client, ok_pool, 2)
    wait_for(lambda: [n for n in client.list_nodes(bad_pool) if n.state == bm.BatchNodeState.START_TASK_FAILED])
    counts = {c.pool_id: c for c in client.list_pool_node_counts() if c.pool_id in (ok_pool, bad_pool)}
    assert (counts[ok_pool].dedicated.idle, counts[ok_pool].dedicated.total, counts[ok_pool].low_priority.total) == \
        (2, 2, 0)
    assert (counts[bad_pool].low_priority.start_task_failed, counts[bad_pool].low_priority.total,
            counts[bad_pool].dedicated.total) == (1, 1, 0)
    filtered = list(client.list_pool_node_counts(filter=f"poolId eq '{ok_pool}'"))
    assert [c.pool_id for c in filtered] == [ok_pool]
    logins = [client.get_node_remote_login_settings(ok_pool, n.id) for n in nodes]
    assert {s.remote_login_ip_address for s in logins} == {"127.0.0.1"}
    assert len({s.remote_login_port for s in logins}) == 2


def test_log_upload_refused_without_leaking_the_sas(batch_emulator: Any, log_container: Any) -> None:
    _, _, container_url = log_container
    client = client_for(batch_emulator)
    pool_id = uid("log-pool")
    make_pool(client, pool_id, nodes=1, slots=1)
    (node,) = idle_nodes(client, pool_id, 1)
    missing = container_url.replace("nodelogs-", "absent-")  # a container that does not exist
    since = datetime.now(UTC) - timedelta(minutes=1)
    options = bm.UploadBatchServiceLogsOptions(container_url=missing, start_time=since)
    status, code, details = refused(lambda: client.upload_node_logs(pool_id, node.id, options))
    assert (status, code, details["PropertyName"]) == (400, "InvalidPropertyValue", "containerUrl")
    assert "sig=" not in details["Reason"] and missing.split("?")[1] not in details["Reason"]
