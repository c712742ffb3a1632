"""Staging failures through the unmodified SDK: the same cause gives the same failureInfo on a task
and on a pool's start task, with the category Azure reports for its code (Microsoft's table of
task errors: BlobNotFound / BlobAccessDenied are the user's, BlobDownloadMiscError the service's)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.batch import models as bm
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from .test_behaviour import VM, wait_for
from .test_sdk_tutorial import client_for, make_job, make_pool, wait_all_completed

pytestmark = pytest.mark.timeout(90)
USER, SERVER = bm.BatchErrorSourceCategory.USER_ERROR, bm.BatchErrorSourceCategory.SERVER_ERROR


def _resource_files(azurite_connection_string: str) -> dict[str, tuple[bm.ResourceFile, str, Any]]:
    """Resource files that fail to stage, each for its own reason: name -> (file, code, category)."""
    blobs = BlobServiceClient.from_connection_string(azurite_connection_string)
    name = f"stage-{uuid.uuid4().hex[:8]}"
    blobs.create_container(name)
    blobs.get_blob_client(name, "present.txt").upload_blob(b"here")
    cred = blobs.credential
    sas = generate_container_sas(cred.account_name, name, account_key=cred.account_key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    base = blobs.url.rstrip("/")
    forged = sas.replace("sig=", "sig=AA")
    return {
        "missing": (bm.ResourceFile(http_url=f"{base}/{name}/nope.txt?{sas}", file_path="nope.txt"),
                    "BlobNotFound", USER),
        "denied": (bm.ResourceFile(http_url=f"{base}/{name}/present.txt?{forged}", file_path="present.txt"),
                   "BlobAccessDenied", USER),
        # A container name storage refuses (HTTP 400): neither absent nor forbidden.
        "misc": (bm.ResourceFile(http_url=f"{base}/Not_A_Container!/present.txt?{sas}", file_path="present.txt"),
                 "BlobDownloadMiscError", SERVER),
        "list-denied": (bm.ResourceFile(storage_container_url=f"{base}/{name}?{forged}"),
                        "ResourceContainerAccessDenied", USER),
        "list-misc": (bm.ResourceFile(storage_container_url=f"{base}/Not_A_Container!?{sas}"),
                      "ResourceContainerListMiscError", SERVER),
    }


def test_task_and_start_task_report_a_staging_failure_alike(batch_emulator: Any,
                                                           azurite_connection_string: str) -> None:
    client = client_for(batch_emulator)
    cases = _resource_files(azurite_connection_string)
    uid = uuid.uuid4().hex[:8]
    pool_id, job_id = f"stage-pool-{uid}", f"stage-job-{uid}"
    make_pool(client, pool_id, nodes=1, slots=len(cases))
    make_job(client, job_id, pool_id)
    client.create_tasks(job_id, [bm.BatchTaskCreateOptions(id=case, command_line="true", resource_files=[rf])
                                 for case, (rf, _, _) in cases.items()])
    for case, (rf, _, _) in cases.items():
        client.create_pool(bm.BatchPoolCreateOptions(
            id=f"st-{case}-{uid}", vm_size="standard_d2s_v3", target_dedicated_nodes=1,
            virtual_machine_configuration=VM,
            start_task=bm.BatchStartTask(command_line="true", resource_files=[rf], wait_for_success=True)))
    tasks = {t.id: t.execution_info for t in wait_all_completed(client, job_id)}
    for case, (_, code, category) in cases.items():
        (node,) = wait_for(lambda c=case: (ns := list(client.list_nodes(f"st-{c}-{uid}")))
                           and ns[0].state == bm.BatchNodeState.START_TASK_FAILED and ns)
        for where, info in (("task", tasks[case]), ("start task", node.start_task_info)):
            assert info.result == bm.BatchTaskExecutionResult.FAILURE, (case, where)
            assert (info.failure_info.code, info.failure_info.category) == (code, category), (case, where)
            assert info.exit_code is None, (case, where)
            details = " ".join(d.value or "" for d in info.failure_info.details or [])
            assert details and "sig=" not in details.replace("sig=***", ""), (case, where, details)
