"""The raw azure-batch SDK against the emulator, the way Microsoft's tutorial drives Batch.

Nothing from batchyard is imported here: the emulator arrives through the fixture only,
so these tests check the wire protocol the unmodified SDK speaks.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

pytestmark = pytest.mark.timeout(240)  # a hang guard: generous, so a busy machine never trips it
IMAGE = bm.BatchVmImageReference(publisher="Canonical", offer="ubuntu-24_04-lts", sku="server", version="latest")


def client_for(emu: Any, key: str | None = None) -> BatchClient:
    cred = AzureNamedKeyCredential(emu.account_name, key or emu.account_key)
    return BatchClient(emu.url, cred, retry_backoff_factor=0.05, retry_total=5)


def make_pool(client: BatchClient, pool_id: str, nodes: int = 2, slots: int = 2) -> None:
    client.create_pool(bm.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=nodes, task_slots_per_node=slots,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04"),
    ))


def make_job(client: BatchClient, job_id: str, pool_id: str, **kw: Any) -> None:
    client.create_job(bm.BatchJobCreateOptions(id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id), **kw))


def wait_all_completed(client: BatchClient, job_id: str, timeout: float = 120) -> list[bm.BatchTask]:
    """Poll until every task of the job is completed; the deadline only bounds a failure (generous)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = list(client.list_tasks(job_id))
        if tasks and all(t.state == bm.BatchTaskState.COMPLETED for t in tasks):
            return tasks
        assert time.monotonic() < deadline, f"tasks not done: {[(t.id, t.state) for t in tasks]}"
        time.sleep(0.2)


def sh(script: str) -> str:
    return f"/bin/sh -c '{script}'"


@pytest.fixture
def blobs(azurite_connection_string: str) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite_connection_string)


def test_tutorial_flow(batch_emulator: Any, blobs: BlobServiceClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(batch_emulator)
    suffix = uuid.uuid4().hex[:8]
    inputs, outputs = f"input-{suffix}", f"output-{suffix}"
    blobs.create_container(inputs)
    blobs.create_container(outputs)
    cred = blobs.credential
    expiry = datetime.now(UTC) + timedelta(hours=1)
    files = {f"taskdata{i}.txt": f"line one\nline two of file {i}\n".encode() for i in range(3)}
    resource_urls = {}
    for name, data in files.items():
        blobs.get_blob_client(inputs, name).upload_blob(data)
        sas = generate_blob_sas(cred.account_name, inputs, name, account_key=cred.account_key,
                                permission=BlobSasPermissions(read=True), expiry=expiry)
        resource_urls[name] = f"{blobs.url}/{inputs}/{name}?{sas}"
    out_sas = generate_container_sas(cred.account_name, outputs, account_key=cred.account_key,
                                     permission=ContainerSasPermissions(write=True), expiry=expiry)
    out_url = f"{blobs.url}/{outputs}?{out_sas}"

    make_pool(client, "tutorial-pool")
    deadline = time.monotonic() + 30  # a new pool is resizing for a moment, as on Azure, then steady
    while client.get_pool("tutorial-pool").allocation_state != bm.AllocationState.STEADY:
        assert time.monotonic() < deadline, "the pool never became steady"
        time.sleep(0.1)
    make_job(client, "tutorial-job", "tutorial-pool")
    tasks = []
    for i, name in enumerate(files):
        tasks.append(bm.BatchTaskCreateOptions(
            id=f"Task{i}", command_line=sh(f"wc -l {name} > $AZ_BATCH_TASK_WORKING_DIR/count{i}.txt; cat {name}"),
            resource_files=[bm.ResourceFile(http_url=resource_urls[name], file_path=name)],
            output_files=[bm.OutputFile(
                file_pattern=f"count{i}.txt",
                destination=bm.OutputFileDestination(container=bm.OutputFileBlobContainerDestination(
                    container_url=out_url, path=f"results/count{i}.txt")),
                upload_options=bm.OutputFileUploadConfiguration(
                    upload_condition=bm.OutputFileUploadCondition.TASK_SUCCESS))],
        ))
    result = client.create_tasks("tutorial-job", tasks)
    assert sorted(r.task_id for r in result.result_values) == ["Task0", "Task1", "Task2"]
    done = wait_all_completed(client, "tutorial-job")
    for task in done:
        assert task.execution_info.result == bm.BatchTaskExecutionResult.SUCCESS, task.execution_info
        assert task.execution_info.exit_code == 0
        assert task.node_info.pool_id == "tutorial-pool"
    stdout = b"".join(client.download_task_file("tutorial-job", "Task1", "stdout.txt")).decode()
    assert stdout == files["taskdata1.txt"].decode()
    props = client.get_task_file_properties("tutorial-job", "Task1", "stdout.txt")
    assert props.content_length == len(files["taskdata1.txt"]) and props.is_directory is False
    names = {f.name for f in client.list_task_files("tutorial-job", "Task1", recursive=True)}
    assert {"stdout.txt", "stderr.txt", "wd/taskdata1.txt", "wd/count1.txt"} <= names
    for i in range(3):
        data = blobs.get_blob_client(outputs, f"results/count{i}.txt").download_blob().readall()
        assert data.decode().startswith("2 ")
    counts = client.get_job_task_counts("tutorial-job")
    assert counts.task_counts.completed == 3 and counts.task_counts.succeeded == 3
    assert counts.task_slot_counts.completed == 3
    nodes = list(client.list_nodes("tutorial-pool"))
    assert len(nodes) == 2 and all(n.state == bm.BatchNodeState.IDLE for n in nodes)
    assert sum(n.total_tasks_run for n in nodes) == 3
    client.begin_delete_job("tutorial-job", polling_interval=0.1).result()
    with pytest.raises(ResourceNotFoundError):
        client.get_job("tutorial-job")
    client.begin_delete_pool("tutorial-pool", polling_interval=0.1).result()
    with pytest.raises(ResourceNotFoundError):
        client.get_pool("tutorial-pool")
    # Secrets never reach the log: not the Batch key, not a SAS signature.
    text = caplog.text
    assert batch_emulator.account_key not in text
    leaked = re.findall(r"sig=(?!\*\*\*|REDACTED)[^&\s'\"]+", text)
    assert not leaked
    assert cred.account_key not in text


def test_wrong_key_is_403(batch_emulator: Any) -> None:
    import base64
    import os

    bad = client_for(batch_emulator, key=base64.b64encode(os.urandom(64)).decode())
    with pytest.raises(HttpResponseError) as info:
        bad.get_pool("nope")
    assert info.value.status_code == 403
    assert info.value.error.code == "AuthenticationFailed"
    other = BatchClient(batch_emulator.url, AzureNamedKeyCredential("someoneelse", batch_emulator.account_key))
    with pytest.raises(HttpResponseError) as info:
        list(other.list_pools())
    assert info.value.status_code == 403


def test_many_tasks_duplicates_counts_and_filter(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    make_pool(client, "bulk-pool", nodes=2, slots=8)
    make_job(client, "bulk-job", "bulk-pool")
    tasks = [bm.BatchTaskCreateOptions(id=f"t{i:03d}", command_line="true") for i in range(250)]
    result = client.create_tasks("bulk-job", tasks)
    assert len(result.result_values) == 250
    # Resubmitting is harmless: TaskExists is treated as success by the SDK.
    again = client.create_tasks("bulk-job", tasks[:120])
    assert len(again.result_values) == 120
    raw = client.create_task_collection("bulk-job", bm.BatchTaskGroup(task_values=[
        bm.BatchTaskCreateOptions(id="T000", command_line="true")]))
    assert raw.result_values[0].status == bm.BatchTaskAddStatus.CLIENT_ERROR
    assert raw.result_values[0].error.code == "TaskExists"  # ids are unique case-insensitively
    with pytest.raises(ResourceExistsError):
        client.create_task("bulk-job", bm.BatchTaskCreateOptions(id="t001", command_line="true"))
    wait_all_completed(client, "bulk-job")
    completed = list(client.list_tasks("bulk-job", filter="state eq 'completed'", max_results=100))
    assert len(completed) == 250
    assert list(client.list_tasks("bulk-job", filter="state eq 'active' or state eq 'running'")) == []
    picked = list(client.list_tasks("bulk-job", filter="state eq 'completed' and executionInfo/exitCode eq 0",
                                    select=["id", "state"]))
    assert len(picked) == 250 and picked[0].command_line is None
    counts = client.get_job_task_counts("bulk-job").task_counts
    assert (counts.active, counts.running, counts.completed, counts.succeeded, counts.failed) == (0, 0, 250, 250, 0)


def test_failure_retries_and_wall_clock(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    make_pool(client, "fail-pool", nodes=1, slots=4)
    make_job(client, "fail-job", "fail-pool")
    client.create_task("fail-job", bm.BatchTaskCreateOptions(
        id="exit3", command_line=sh("echo boom >&2; exit 3"),
        constraints=bm.BatchTaskConstraints(max_task_retry_count=1)))
    client.create_task("fail-job", bm.BatchTaskCreateOptions(
        id="sleeper", command_line="sleep 30", constraints=bm.BatchTaskConstraints(
            max_wall_clock_time=timedelta(seconds=1))))
    done = {t.id: t for t in wait_all_completed(client, "fail-job")}
    info = done["exit3"].execution_info
    assert info.result == bm.BatchTaskExecutionResult.FAILURE and info.exit_code == 3
    assert info.retry_count == 1
    assert info.failure_info.category == bm.BatchErrorSourceCategory.USER_ERROR
    assert info.failure_info.code == "FailureExitCode"
    slow = done["sleeper"].execution_info
    assert slow.result == bm.BatchTaskExecutionResult.FAILURE and slow.failure_info.code == "TaskEnded"
    assert (slow.end_time - slow.start_time).total_seconds() < 30, "not killed: it ran its whole 30 s"
    stderr = b"".join(client.download_task_file("fail-job", "exit3", "stderr.txt"))
    assert stderr == b"boom\n"
    counts = client.get_job_task_counts("fail-job").task_counts
    assert counts.failed == 2 and counts.succeeded == 0
    failed = list(client.list_tasks("fail-job", filter="executionInfo/result eq 'failure'"))
    assert len(failed) == 2
