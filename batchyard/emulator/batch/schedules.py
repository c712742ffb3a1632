"""Job schedules on a real clock: when a schedule makes a job, and when it is done.

The rules are the REST reference's (``BatchJobScheduleConfiguration``): a job is due at
``doNotRunUntil`` (or at once), then every ``recurrenceInterval``; it must be made within
``startWindow`` of its due time or that run is lost; a schedule has at most one active job, so a
run that comes while the last job is still active waits (within the window); after
``doNotRunAfter`` no job is made and the schedule completes once no job is active; a schedule that
does not recur completes when its one job completes. Jobs are named ``{schedule}:job-{n}`` and made
from the ``jobSpecification`` as a client's job would be (the SDK's recorded
``test_batch_job_schedules``). Terminating a schedule terminates its active job; deleting it
deletes its jobs, and it is gone once they are.

Durations wait ``IntervalScale`` times as long as on Azure; absolute times are the real clock.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from batchyard.emulator.batch.common import INFINITE_DURATION, BatchApiError, invalid, iso, parse_duration, utcnow
from batchyard.emulator.batch.intervals import IntervalScale, format_duration, parse_time
from batchyard.emulator.batch.state import Job, JobSchedule, Store

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchyard.emulator.batch.scheduler import Engine

log = logging.getLogger("batchyard.emulator.batch")
MIN_PERIOD_S = 60.0  # startWindow and recurrenceInterval: "The minimum value is 1 minute."
SPEC_DEFAULTS: dict[str, Any] = {"priority": 0, "maxParallelTasks": -1, "allowTaskPreemption": False,
                                 "usesTaskDependencies": False, "onAllTasksComplete": "noaction",
                                 "onTaskFailure": "noaction"}


def check_schedule(schedule: Any, prop: str = "schedule") -> dict[str, Any]:
    """The schedule part of a request, checked, with its durations in Batch's spelling."""
    if schedule is None:
        return {}
    if not isinstance(schedule, dict):
        raise invalid(f"{prop} must be an object", prop)
    out: dict[str, Any] = {}
    for key in ("doNotRunUntil", "doNotRunAfter"):
        stamp = parse_time(schedule.get(key), f"{prop}.{key}")
        if stamp is not None:
            out[key] = iso(stamp)
    for key in ("startWindow", "recurrenceInterval"):
        if schedule.get(key) is None:
            continue
        seconds = parse_duration(schedule[key], f"{prop}.{key}")
        if seconds is not None and seconds < MIN_PERIOD_S:
            raise invalid(f"{prop}.{key} must be at least 1 minute", f"{prop}.{key}")
        out[key] = INFINITE_DURATION if seconds is None else format_duration(seconds)
    unknown = sorted(set(schedule) - {"doNotRunUntil", "doNotRunAfter", "startWindow", "recurrenceInterval"})
    if unknown:
        raise BatchApiError(400, "InvalidPropertyValue", "The value provided for one of the properties in the "
                            "request body is invalid.", [("PropertyName", f"{prop}.{unknown[0]}"),
                                                         ("Reason", "not a property of a job schedule's schedule")])
    return out


def schedule_view(schedule: JobSchedule, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in schedule.spec.items() if k not in ("schedule", "jobSpecification")}
    out.update(schedule.common_view(f"{base}/jobschedules/{schedule.id}"))
    if schedule.spec.get("schedule"):
        out["schedule"] = dict(schedule.spec["schedule"])
    spec = dict(schedule.spec["jobSpecification"])
    constraints = {"maxWallClockTime": INFINITE_DURATION, "maxTaskRetryCount": 0, **(spec.get("constraints") or {})}
    out["jobSpecification"] = {**SPEC_DEFAULTS, **spec, "constraints": constraints}
    execution: dict[str, Any] = {}
    if schedule.next_run is not None and schedule.state in ("active", "disabled"):
        execution["nextRunTime"] = iso(schedule.next_run)
    if schedule.job_ids:
        recent = schedule.job_ids[-1]
        execution["recentJob"] = {"url": f"{base}/jobs/{recent}", "id": recent}
    if schedule.end_time is not None:
        execution["endTime"] = iso(schedule.end_time)
    out["executionInfo"] = execution
    return out


class ScheduleClock:
    """Makes the schedules' jobs when due; ``tick`` runs on the scheduler's loop with the lock held."""

    def __init__(self, store: Store, engine: Engine, scale: IntervalScale,
                 add_job: Callable[[dict[str, Any]], Job]) -> None:
        self.store, self.engine, self.scale, self.add_job = store, engine, scale, add_job

    def _seconds(self, schedule: JobSchedule, key: str) -> float | None:
        return parse_duration((schedule.spec.get("schedule") or {}).get(key), key)

    def plan_next(self, schedule: JobSchedule) -> None:
        """The next due time after a create or a schedule change (changes affect future runs only)."""
        until = (schedule.spec.get("schedule") or {}).get("doNotRunUntil")
        earliest = max(utcnow(), datetime.fromisoformat(until)) if until else utcnow()
        if schedule.last_run is None:
            schedule.next_run = earliest
            return
        recurrence = self._seconds(schedule, "recurrenceInterval")
        if recurrence is None:
            schedule.next_run = None  # it ran its one job
            return
        schedule.next_run = max(earliest, schedule.last_run + timedelta(seconds=self.scale.real(recurrence)))

    def active_job(self, schedule: JobSchedule) -> Job | None:
        if not schedule.job_ids:
            return None
        job = self.store.jobs.get(schedule.job_ids[-1].lower())
        return job if job is not None and job.state not in ("completed", "deleting") else None

    def _complete(self, schedule: JobSchedule) -> None:
        schedule.next_run, schedule.end_time = None, utcnow()
        schedule.set_state("completed")

    def tick(self) -> None:
        for schedule in list(self.store.job_schedules.values()):
            if schedule.state == "deleting":
                self._reap(schedule)
            elif schedule.state == "terminating":
                if self.active_job(schedule) is None:
                    self._complete(schedule)
            elif schedule.state in ("active", "disabled"):
                self.advance(schedule)

    def advance(self, schedule: JobSchedule) -> None:
        now = utcnow()
        active = self.active_job(schedule)
        after = (schedule.spec.get("schedule") or {}).get("doNotRunAfter")
        recurrence = self._seconds(schedule, "recurrenceInterval")
        if after and now > datetime.fromisoformat(after):
            schedule.next_run = None
        if schedule.next_run is None:  # no run left: its one job was made or its time is over
            if active is None:
                self._complete(schedule)
            return
        if now < schedule.next_run or schedule.state == "disabled":
            return
        window = self._seconds(schedule, "startWindow")
        if window is not None and now > schedule.next_run + timedelta(seconds=self.scale.real(window)):
            self._next(schedule, recurrence, now)  # this run's window passed: it is lost
            return
        if active is not None:
            return  # at most one active job: the run waits for it (within the window)
        spec = schedule.spec["jobSpecification"]
        job_id = f"{schedule.id}:job-{next(schedule.job_seq)}"
        try:
            self.add_job({**spec, "id": job_id})
        except BatchApiError as exc:  # e.g. the account's job quota: try again within the window
            log.info("job schedule %s could not make %s: %s", schedule.id, job_id, exc)
            return
        schedule.job_ids.append(job_id)
        schedule.last_run = now
        self._next(schedule, recurrence, now)

    def _next(self, schedule: JobSchedule, recurrence: float | None, now: datetime) -> None:
        if recurrence is None:
            schedule.next_run = None
            return
        step = timedelta(seconds=self.scale.real(recurrence))
        due = (schedule.next_run or now) + step
        while due <= now:  # runs missed while disabled or busy are not made up
            due += step
        schedule.next_run = due

    def _reap(self, schedule: JobSchedule) -> None:
        remaining = [self.store.jobs[j.lower()] for j in schedule.job_ids if j.lower() in self.store.jobs]
        for job in remaining:
            if job.state != "deleting":
                self.engine.delete_job(job)
        if not any(j.lower() in self.store.jobs for j in schedule.job_ids):
            self.store.job_schedules.pop(schedule.id.lower(), None)

    def terminate(self, schedule: JobSchedule) -> None:
        schedule.set_state("terminating")
        active = self.active_job(schedule)
        if active is not None and active.state != "terminating":
            self.engine.terminate_job(active, "UserTerminate")
        self.tick()

    def delete(self, schedule: JobSchedule) -> None:
        schedule.set_state("deleting")
        self._reap(schedule)
