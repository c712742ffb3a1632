"""Job schedules through the unmodified azure-batch SDK: the SDK's recorded flow against Azure, jobs
made from the jobSpecification on a real clock, the schedule's time limits, and Azure's conflicts.

Recurring tests use an interval scale (a 1-minute recurrence lasts 1.2 s) and wait for states with
generous deadlines; what they compare are the service's own timestamps, never a sleep.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.batch import models as bm
from azure.batch.models._models import BatchJobTerminateOptions  # not exported by 15.1.0
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from .sdk_helpers import wait_for
from .test_sdk_tutorial import client_for, make_pool, sh

pytestmark = pytest.mark.timeout(120)
SCALE = 0.02  # 1 minute -> 1.2 s


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def spec(pool_id: str, **kw: Any) -> bm.BatchJobSpecification:
    return bm.BatchJobSpecification(pool_info=bm.BatchPoolInfo(pool_id=pool_id), **kw)


def jobs_of(client: Any, schedule_id: str) -> list[bm.BatchJob]:
    return list(client.list_jobs_from_schedule(schedule_id))


def terminate(client: Any, job_id: str) -> None:
    client.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason="done"), polling_interval=1).result()


def conflict(call: Any) -> tuple[int, str, dict[str, str]]:
    with pytest.raises(HttpResponseError) as err:
        call()
    details = {v["key"]: v["value"] for v in err.value.model.get("values") or []}
    return err.value.status_code, err.value.error.code, details


def test_recorded_job_schedule_flow(batch_emulator: Any) -> None:
    """test_batch_job_schedules as the SDK recorded it against Azure (same calls, same answers)."""
    client = client_for(batch_emulator)
    schedule_id = uid("batch_schedule")
    client.create_job_schedule(bm.BatchJobScheduleCreateOptions(
        id=schedule_id,
        schedule=bm.BatchJobScheduleConfiguration(start_window=timedelta(hours=1),
                                                  recurrence_interval=timedelta(days=1)),
        job_specification=spec("pool_id", constraints=bm.BatchJobConstraints(max_task_retry_count=2),
                               all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.TERMINATE_JOB)))
    assert schedule_id in [s.id for s in client.list_job_schedules()]
    schedule = client.get_job_schedule(schedule_id)
    assert schedule.state == bm.BatchJobScheduleState.ACTIVE
    assert schedule.schedule.start_window == timedelta(hours=1)
    assert schedule.schedule.recurrence_interval == timedelta(days=1)
    assert schedule.job_specification.priority == 0 and schedule.job_specification.max_parallel_tasks == -1
    assert schedule.job_specification.constraints.max_task_retry_count == 2
    # Due at once: the first job exists when create answers, the next run is a day later.
    assert schedule.execution_info.recent_job.id == f"{schedule_id}:job-1"
    assert schedule.execution_info.next_run_time - schedule.creation_time == pytest.approx(timedelta(days=1),
                                                                                          abs=timedelta(seconds=5))
    assert client.job_schedule_exists(schedule_id)
    (job,) = jobs_of(client, schedule_id)
    assert job.id == f"{schedule_id}:job-1" and job.pool_info.pool_id == "pool_id"
    assert job.constraints.max_task_retry_count == 2
    assert client.disable_job_schedule(schedule_id) is None
    assert client.get_job_schedule(schedule_id).state == bm.BatchJobScheduleState.DISABLED
    assert client.enable_job_schedule(schedule_id) is None
    assert client.get_job_schedule(schedule_id).state == bm.BatchJobScheduleState.ACTIVE
    client.replace_job_schedule(schedule_id, bm.BatchJobSchedule(
        schedule=bm.BatchJobScheduleConfiguration(recurrence_interval=timedelta(hours=10)),
        job_specification=spec("pool_id")))
    replaced = client.get_job_schedule(schedule_id)
    assert replaced.schedule.recurrence_interval == timedelta(hours=10) and replaced.schedule.start_window is None
    assert replaced.job_specification.constraints.max_task_retry_count == 0  # replaced whole
    client.update_job_schedule(schedule_id, bm.BatchJobScheduleUpdateOptions(
        schedule=bm.BatchJobScheduleConfiguration(recurrence_interval=timedelta(hours=5))))
    updated = client.get_job_schedule(schedule_id)
    assert updated.schedule.recurrence_interval == timedelta(hours=5)
    assert updated.execution_info.recent_job.id == f"{schedule_id}:job-1"  # a change never starts a run early
    client.begin_terminate_job_schedule(schedule_id, polling_interval=1).result()
    done = client.get_job_schedule(schedule_id)
    assert done.state == bm.BatchJobScheduleState.COMPLETED and done.execution_info.end_time is not None
    assert client.get_job(f"{schedule_id}:job-1").state == bm.BatchJobState.COMPLETED  # its active job ended
    client.begin_delete_job_schedule(schedule_id, polling_interval=1).result()
    with pytest.raises(ResourceNotFoundError):
        client.get_job_schedule(schedule_id)
    with pytest.raises(ResourceNotFoundError):
        client.get_job(f"{schedule_id}:job-1")  # deleting a schedule deletes its jobs


def test_recurring_jobs_one_at_a_time_from_the_specification(batch_emulator_factory: Any) -> None:
    emulator = batch_emulator_factory(interval_scale=SCALE)
    client = client_for(emulator)
    pool_id, schedule_id = uid("sched-pool"), uid("every-minute")
    make_pool(client, pool_id, nodes=1, slots=1)
    client.create_job_schedule(bm.BatchJobScheduleCreateOptions(
        id=schedule_id,
        schedule=bm.BatchJobScheduleConfiguration(recurrence_interval=timedelta(minutes=1),
                                                  start_window=timedelta(minutes=1)),
        job_specification=spec(pool_id, common_environment_settings=[bm.EnvironmentSetting(name="RUN", value="yes")])))
    first = f"{schedule_id}:job-1"
    client.create_task(first, bm.BatchTaskCreateOptions(id="t", command_line=sh("echo $RUN $AZ_BATCH_JOB_ID")))
    wait_for(lambda: client.get_task(first, "t").state == bm.BatchTaskState.COMPLETED, what="the job's task")
    assert b"".join(client.download_task_file(first, "t", "stdout.txt")).decode().split() == ["yes", first]
    # job-1 is still active: the next run waits, then its start window passes and that run is lost.
    due = client.get_job_schedule(schedule_id).execution_info.next_run_time
    wait_for(lambda: client.get_job_schedule(schedule_id).execution_info.next_run_time > due,
             what="a run lost to its start window")
    assert [j.id for j in jobs_of(client, schedule_id)] == [first]
    terminate(client, first)
    second = wait_for(lambda: [j for j in jobs_of(client, schedule_id) if j.id.endswith(":job-2")],
                      what="the next job once the first one ended")[0]
    assert second.creation_time >= client.get_job(first).execution_info.end_time
    schedule = client.get_job_schedule(schedule_id)
    assert schedule.state == bm.BatchJobScheduleState.ACTIVE and schedule.execution_info.recent_job.id == second.id


def test_do_not_run_until_and_after(batch_emulator_factory: Any) -> None:
    emulator = batch_emulator_factory(interval_scale=SCALE)
    client = client_for(emulator)
    schedule_id = uid("window")
    start = datetime.now(UTC) + timedelta(seconds=2)
    stop = start + timedelta(seconds=3)
    client.create_job_schedule(bm.BatchJobScheduleCreateOptions(
        id=schedule_id,
        schedule=bm.BatchJobScheduleConfiguration(do_not_run_until=start, do_not_run_after=stop,
                                                  recurrence_interval=timedelta(minutes=1)),
        job_specification=spec("no-such-pool-needed")))
    created = client.get_job_schedule(schedule_id)
    assert jobs_of(client, schedule_id) == []  # not before doNotRunUntil
    assert created.execution_info.next_run_time == pytest.approx(start, abs=timedelta(milliseconds=1))

    def completed() -> bm.BatchJobSchedule | None:
        for job in jobs_of(client, schedule_id):
            if job.state == bm.BatchJobState.ACTIVE:
                terminate(client, job.id)  # each run ends, so the next one may start
        schedule = client.get_job_schedule(schedule_id)
        return schedule if schedule.state == bm.BatchJobScheduleState.COMPLETED else None

    schedule = wait_for(completed, what="completion after doNotRunAfter")
    jobs = jobs_of(client, schedule_id)
    # made at doNotRunUntil or later, none after doNotRunAfter (the check runs a moment before the job exists)
    assert jobs and all(start <= j.creation_time <= stop + timedelta(milliseconds=500) for j in jobs)
    assert schedule.execution_info.end_time >= stop and schedule.execution_info.next_run_time is None


def test_schedule_without_recurrence_completes_with_its_job(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    schedule_id = uid("once")
    client.create_job_schedule(bm.BatchJobScheduleCreateOptions(
        id=schedule_id, schedule=bm.BatchJobScheduleConfiguration(), job_specification=spec("pool-x")))
    schedule = client.get_job_schedule(schedule_id)
    assert schedule.execution_info.next_run_time is None and schedule.state == bm.BatchJobScheduleState.ACTIVE
    terminate(client, f"{schedule_id}:job-1")
    done = wait_for(lambda: (s := client.get_job_schedule(schedule_id)).state ==
                    bm.BatchJobScheduleState.COMPLETED and s, what="completed")
    assert done.previous_state == bm.BatchJobScheduleState.ACTIVE
    assert [j.id for j in jobs_of(client, schedule_id)] == [f"{schedule_id}:job-1"]
    assert conflict(lambda: client.disable_job_schedule(schedule_id))[:2] == (409, "JobScheduleCompleted")
    assert conflict(lambda: client.begin_terminate_job_schedule(schedule_id))[:2] == (409, "JobScheduleCompleted")


def test_refused_as_azure_refuses(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    schedule_id, job_id = uid("dup"), uid("plain-job")
    options = bm.BatchJobScheduleCreateOptions(id=schedule_id, schedule=bm.BatchJobScheduleConfiguration(
        do_not_run_until=datetime.now(UTC) + timedelta(days=1)), job_specification=spec("p"))
    client.create_job_schedule(options)
    assert conflict(lambda: client.create_job_schedule(options))[:2] == (409, "JobScheduleExists")
    client.create_job(bm.BatchJobCreateOptions(id=job_id, pool_info=bm.BatchPoolInfo(pool_id="p")))
    assert conflict(lambda: client.create_job_schedule(bm.BatchJobScheduleCreateOptions(
        id=job_id.upper(), schedule=bm.BatchJobScheduleConfiguration(), job_specification=spec("p"))))[:2] == \
        (409, "JobWithSameIdExists")
    assert conflict(lambda: client.create_job(bm.BatchJobCreateOptions(
        id=schedule_id, pool_info=bm.BatchPoolInfo(pool_id="p"))))[:2] == (409, "JobScheduleWithSameIdExists")
    status, code, details = conflict(lambda: client.create_job_schedule(bm.BatchJobScheduleCreateOptions(
        id=uid("fast"), schedule=bm.BatchJobScheduleConfiguration(recurrence_interval=timedelta(seconds=30)),
        job_specification=spec("p"))))
    assert (status, code, details["PropertyName"]) == (400, "InvalidPropertyValue", "schedule.recurrenceInterval")
    status, code, details = conflict(lambda: client.create_job_schedule(bm.BatchJobScheduleCreateOptions(
        id=uid("nopool"), schedule=bm.BatchJobScheduleConfiguration(),
        job_specification=bm.BatchJobSpecification(priority=1))))
    # The request-body check names the missing property itself, as for every other body (validation.py).
    assert (status, code, details["PropertyName"]) == (400, "MissingRequiredProperty", "poolInfo")
    status, code, _ = conflict(lambda: client.get_job_schedule(uid("missing")))
    assert (status, code) == (404, "JobScheduleNotFound")
    assert client.get_job_schedule(schedule_id).execution_info.recent_job is None  # not due for a day
