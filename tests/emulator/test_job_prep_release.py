"""Job preparation and release tasks through the unmodified azure-batch SDK: Azure's defaults, when
they run (once per node before the job's tasks; at the end on every node that prepared), what a
failed preparation does, and their status list."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from azure.batch import models as bm
from azure.batch.models._models import BatchJobTerminateOptions  # not exported by 15.1.0
from azure.core.exceptions import HttpResponseError

from .sdk_helpers import VM, wait_for
from .test_sdk_tutorial import client_for, make_pool, sh

pytestmark = pytest.mark.timeout(120)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refused(call: Any) -> tuple[int, str, dict[str, str]]:
    with pytest.raises(HttpResponseError) as err:
        call()
    details = {v["key"]: v["value"] for v in err.value.model.get("values") or []}
    return err.value.status_code, err.value.error.code, details


def node_file(client: Any, pool_id: str, node_id: str, path: str) -> str:
    return b"".join(client.download_node_file(pool_id, node_id, path)).decode()


def terminate(client: Any, job_id: str) -> None:
    client.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason="done"), polling_interval=1).result()


def test_recorded_job_with_preparation_and_release(batch_emulator: Any) -> None:
    """test_batch_jobs as the SDK recorded it: Azure's defaults echoed, an empty status list."""
    client = client_for(batch_emulator)
    job_id = uid("batch_job1")
    client.create_job(bm.BatchJobCreateOptions(
        id=job_id, pool_info=bm.BatchPoolInfo(auto_pool_specification=bm.BatchAutoPoolSpecification(
            pool_lifetime_option=bm.BatchPoolLifetimeOption.JOB,
            pool=bm.BatchPoolSpecification(vm_size="standard_d2s_v3", virtual_machine_configuration=VM))),
        job_preparation_task=bm.BatchJobPreparationTask(command_line=sh("echo hello world")),
        job_release_task=bm.BatchJobReleaseTask(command_line=sh("echo goodbye world"))))
    job = client.get_job(job_id)
    prep, release = job.job_preparation_task, job.job_release_task
    assert (prep.id, prep.wait_for_success, prep.rerun_on_node_reboot_after_success) == ("jobpreparation", True, True)
    assert prep.constraints.max_task_retry_count == 0 and prep.constraints.retention_time.days == 7
    assert prep.user_identity.auto_user.elevation_level == bm.ElevationLevel.NON_ADMIN
    assert release.id == "jobrelease" and release.max_wall_clock_time.total_seconds() == 15 * 60
    assert release.retention_time.days == 7
    assert list(client.list_job_preparation_and_release_task_status(job_id)) == []
    terminate(client, job_id)
    assert client.get_job(job_id).state == bm.BatchJobState.COMPLETED


def test_preparation_once_per_node_before_tasks_release_at_the_end(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    pool_id, job_id = uid("prep-pool"), uid("prep-job")
    make_pool(client, pool_id, nodes=2, slots=1)
    marker = "$AZ_BATCH_NODE_SHARED_DIR/$AZ_BATCH_JOB_ID"
    client.create_job(bm.BatchJobCreateOptions(
        id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id),
        common_environment_settings=[bm.EnvironmentSetting(name="STEP", value="common")],
        job_preparation_task=bm.BatchJobPreparationTask(command_line=sh(f"echo prep $STEP >> {marker}.prep")),
        job_release_task=bm.BatchJobReleaseTask(command_line=sh(f"cat {marker}.prep > {marker}.release"))))
    client.create_tasks(job_id, [bm.BatchTaskCreateOptions(id=f"t{i}", command_line=sh(f"cat {marker}.prep"))
                                 for i in range(6)])
    tasks = wait_for(lambda: (ts := list(client.list_tasks(job_id))) and all(
        t.state == bm.BatchTaskState.COMPLETED for t in ts) and ts, what="tasks completed")
    assert all(t.execution_info.exit_code == 0 for t in tasks)  # each found its node prepared
    used = {t.node_info.node_id for t in tasks}
    statuses = {s.node_id: s for s in client.list_job_preparation_and_release_task_status(job_id)}
    assert set(statuses) >= used
    for node_id, status in statuses.items():
        info = status.job_preparation_task_execution_info
        assert (info.state, info.result, info.exit_code, info.retry_count) == (
            bm.BatchJobPreparationTaskState.COMPLETED, bm.BatchTaskExecutionResult.SUCCESS, 0, 0)
        assert info.task_root_directory == f"workitems/{job_id}/job-1/jobpreparation"
        assert status.pool_id == pool_id and status.job_release_task_execution_info is None
        assert node_file(client, pool_id, node_id, f"shared/{job_id}.prep") == "prep common\n"  # once per node
    terminate(client, job_id)
    assert client.get_job(job_id).state == bm.BatchJobState.COMPLETED  # only once the releases ended
    for node_id, status in {s.node_id: s for s in client.list_job_preparation_and_release_task_status(job_id)}.items():
        info = status.job_release_task_execution_info
        assert (info.state, info.exit_code) == (bm.BatchJobReleaseTaskState.COMPLETED, 0)
        assert node_file(client, pool_id, node_id, f"shared/{job_id}.release") == "prep common\n"


def test_failed_preparation_keeps_the_jobs_tasks_off_the_node(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    pool_id, job_id, other_id = uid("bad-prep-pool"), uid("bad-prep"), uid("other")
    make_pool(client, pool_id, nodes=1, slots=1)
    client.create_job(bm.BatchJobCreateOptions(
        id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id),
        job_preparation_task=bm.BatchJobPreparationTask(command_line=sh("exit 3"),
                                                        constraints=bm.BatchTaskConstraints(max_task_retry_count=1))))
    client.create_task(job_id, bm.BatchTaskCreateOptions(id="waits", command_line="true"))
    status = wait_for(lambda: (ss := list(client.list_job_preparation_and_release_task_status(job_id))) and
                      ss[0].job_preparation_task_execution_info.state ==
                      bm.BatchJobPreparationTaskState.COMPLETED and ss[0], what="the preparation to end")
    info = status.job_preparation_task_execution_info
    assert (info.result, info.exit_code, info.retry_count) == (bm.BatchTaskExecutionResult.FAILURE, 3, 1)
    assert info.failure_info.code == "FailureExitCode"
    # The node stays eligible for other jobs while this job's task keeps waiting.
    client.create_job(bm.BatchJobCreateOptions(id=other_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id)))
    client.create_task(other_id, bm.BatchTaskCreateOptions(id="runs", command_line="true"))
    wait_for(lambda: client.get_task(other_id, "runs").state == bm.BatchTaskState.COMPLETED, what="the other job")
    assert client.get_task(job_id, "waits").state == bm.BatchTaskState.ACTIVE


def test_refused_as_azure_refuses(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    pool = bm.BatchPoolInfo(pool_id="any")
    status, code, details = refused(lambda: client.create_job(bm.BatchJobCreateOptions(
        id=uid("release-only"), pool_info=pool, job_release_task=bm.BatchJobReleaseTask(command_line="true"))))
    assert (status, code, details["PropertyName"]) == (400, "MissingRequiredProperty", "jobPreparationTask")
    status, code, details = refused(lambda: client.create_job(bm.BatchJobCreateOptions(
        id=uid("long-release"), pool_info=pool, job_preparation_task=bm.BatchJobPreparationTask(command_line="true"),
        job_release_task=bm.BatchJobReleaseTask(command_line="true", max_wall_clock_time=timedelta(minutes=20)))))
    assert (status, code, details["PropertyName"]) == (400, "InvalidPropertyValue", "jobReleaseTask.maxWallClockTime")
    status, code, details = refused(lambda: client.create_job(bm.BatchJobCreateOptions(
        id=uid("bad-prep-id"), pool_info=pool, job_preparation_task=bm.BatchJobPreparationTask(
            id="has space", command_line="true"))))
    assert (status, code, details["PropertyName"]) == (400, "InvalidPropertyValue", "jobPreparationTask.id")
    job_id = uid("ids")
    client.create_job(bm.BatchJobCreateOptions(
        id=job_id, pool_info=pool, job_preparation_task=bm.BatchJobPreparationTask(id="setup", command_line="true"),
        job_release_task=bm.BatchJobReleaseTask(id="teardown", command_line="true")))
    assert refused(lambda: client.create_task(job_id, bm.BatchTaskCreateOptions(
        id="SETUP", command_line="true")))[:2] == (409, "TaskIdSameAsJobPreparationTask")
    assert refused(lambda: client.create_task(job_id, bm.BatchTaskCreateOptions(
        id="teardown", command_line="true")))[:2] == (409, "TaskIdSameAsJobReleaseTask")
    plain = uid("plain")
    client.create_job(bm.BatchJobCreateOptions(id=plain, pool_info=pool))
    assert refused(lambda: list(client.list_job_preparation_and_release_task_status(plain)))[:2] == \
        (409, "JobPreparationTaskNotSpecified")
