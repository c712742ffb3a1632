"""Job schedule operations: every one the 2025-06-01 spec has, and the jobs listed from a schedule.

Statuses as recorded from Azure (``test_batch_job_schedules``): create 201, update and replace 200,
disable and enable 204, terminate and delete 202, exists (HEAD) 200 or 404. Conflicts use the
codes of Batch's error table: ``JobScheduleExists``, ``JobWithSameIdExists``,
``JobScheduleCompleted``, ``JobScheduleBeingTerminated``, ``JobScheduleBeingDeleted``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from batchyard.emulator.batch.common import BatchApiError, check_id, forget_passwords, invalid, not_found, require
from batchyard.emulator.batch.odata import page, select
from batchyard.emulator.batch.protocol import (
    Request,
    Response,
    Router,
    check_conditions,
    created,
    entity,
    resource_headers,
)
from batchyard.emulator.batch.schedules import ScheduleClock, check_schedule, schedule_view
from batchyard.emulator.batch.state import JobSchedule

if TYPE_CHECKING:
    from batchyard.emulator.batch.service import BatchService

_BUSY = {"completed": ("JobScheduleCompleted", "The specified job schedule is already in completed state."),
         "terminating": ("JobScheduleBeingTerminated", "The specified job schedule is being terminated."),
         "deleting": ("JobScheduleBeingDeleted", "The specified job schedule has been marked for deletion and "
                      "is being reclaimed.")}


class JobScheduleOps:
    def __init__(self, emu: BatchService, clock: ScheduleClock, check_job: Callable[[dict[str, Any]], None]) -> None:
        self.emu, self.clock, self.check_job = emu, clock, check_job

    def register(self, r: Router) -> None:
        r.add("POST", "jobschedules", self.create)
        r.add("GET", "jobschedules", self.list)
        r.add("GET", "jobschedules/{}", self.get)
        r.add("HEAD", "jobschedules/{}", self.exists)
        r.add("PATCH", "jobschedules/{}", self.update)
        r.add("PUT", "jobschedules/{}", self.replace)
        r.add("DELETE", "jobschedules/{}", self.delete)
        r.add("POST", "jobschedules/{}/disable", self.disable)
        r.add("POST", "jobschedules/{}/enable", self.enable)
        r.add("POST", "jobschedules/{}/terminate", self.terminate)
        r.add("GET", "jobschedules/{}/jobs", self.jobs)

    # --- helpers ----------------------------------------------------------------------------------
    def schedule(self, schedule_id: str) -> JobSchedule:
        schedule = self.emu.store.job_schedules.get(schedule_id.lower())
        if schedule is None:
            raise not_found("JobSchedule", schedule_id)
        return schedule

    def url(self, schedule: JobSchedule) -> str:
        return f"{self.emu.url}/jobschedules/{schedule.id}"

    def done(self, schedule: JobSchedule, status: int) -> Response:
        return Response(status, None, resource_headers(self.url(schedule), schedule.etag, schedule.last_modified))

    @staticmethod
    def refuse_unless(schedule: JobSchedule, *allowed: str) -> None:
        if schedule.state not in allowed:
            code, message = _BUSY.get(schedule.state, ("OperationInvalidForCurrentState",
                                                       "The operation is not valid for the schedule's state."))
            raise BatchApiError(409, code, message)

    def job_specification(self, spec: Any, prop: str = "jobSpecification") -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise invalid(f"{prop} must be an object", prop)
        if "id" in spec:
            raise invalid(f"{prop} has no id: each job is named after the schedule", f"{prop}.id")
        checked = {**spec, "id": "jobspecification"}
        try:
            self.check_job(checked)  # fills in Azure's defaults (preparation and release tasks) as it goes
        except BatchApiError as exc:  # name the property inside the schedule
            exc.values = [(k, f"{prop}.{v}" if k == "PropertyName" else v) for k, v in exc.values]
            raise
        checked.pop("id")
        return forget_passwords(checked)

    # --- operations -------------------------------------------------------------------------------
    def create(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise invalid("The job schedule must be a JSON object.", "jobSchedule")
        schedule_id = check_id(require(body, "id"))
        spec = {**body, "schedule": check_schedule(require(body, "schedule", dict)),
                "jobSpecification": self.job_specification(require(body, "jobSpecification", dict))}
        store = self.emu.store
        with store.lock:
            if schedule_id.lower() in store.job_schedules:
                raise BatchApiError(409, "JobScheduleExists", "The specified job schedule already exists.",
                                    [("Id", schedule_id)])
            if schedule_id.lower() in store.jobs:
                raise BatchApiError(409, "JobWithSameIdExists", "A job with the specified job schedule id exists. "
                                    "Job and job schedule cannot have the same id.", [("Id", schedule_id)])
            quota = self.emu.faults.config.job_quota
            live = sum(1 for j in store.jobs.values() if j.state not in ("completed", "deleting"))
            live += sum(1 for s in store.job_schedules.values() if s.state in ("active", "disabled"))
            if quota and live >= quota:
                raise BatchApiError(409, "ActiveJobAndScheduleQuotaReached", "The specified account has reached "
                                    "the maximum number of active jobs and job schedules.")
            schedule = JobSchedule(id=schedule_id, spec=spec, state="active")
            store.job_schedules[schedule_id.lower()] = schedule
            self.clock.plan_next(schedule)
            self.clock.advance(schedule)  # a schedule due now has its first job when create answers
            return created(self.url(schedule), schedule.etag, schedule.last_modified)

    def list(self, req: Request) -> Response:
        with self.emu.store.lock:
            views = [schedule_view(s, self.emu.url) for s in self.emu.store.job_schedules.values()]
        items, next_link = page(views, req.query, self.emu.url, "/jobschedules")
        return self.emu.listing("jobschedules", items, next_link)

    def get(self, req: Request) -> Response:
        with self.emu.store.lock:
            schedule = self.schedule(req.params[0])
            check_conditions(req, schedule.etag, schedule.last_modified)
            view = select(schedule_view(schedule, self.emu.url), req.query.get("$select"))
            return entity(self.emu.url, "jobschedules", view, schedule.etag, schedule.last_modified)

    def exists(self, req: Request) -> Response:
        with self.emu.store.lock:
            schedule = self.schedule(req.params[0])
            check_conditions(req, schedule.etag, schedule.last_modified)
            return Response(200, None, resource_headers(self.url(schedule), schedule.etag, schedule.last_modified),
                            content_length=0)

    def _change(self, req: Request, *, replace: bool) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise invalid("The body must be a JSON object.", "jobSchedule")
        changes: dict[str, Any] = {}
        if replace:
            changes["schedule"] = check_schedule(body.get("schedule"))
            changes["jobSpecification"] = self.job_specification(require(body, "jobSpecification", dict))
            changes["metadata"] = body.get("metadata")
        else:
            if "schedule" in body:
                changes["schedule"] = check_schedule(body["schedule"])
            if "jobSpecification" in body:
                changes["jobSpecification"] = self.job_specification(body["jobSpecification"])
            if "metadata" in body:
                changes["metadata"] = body["metadata"]
        with self.emu.store.lock:
            schedule = self.schedule(req.params[0])
            check_conditions(req, schedule.etag, schedule.last_modified)
            self.refuse_unless(schedule, "active", "disabled")
            for key, value in changes.items():
                if value is None:
                    schedule.spec.pop(key, None)
                else:
                    schedule.spec[key] = value
            if "schedule" in changes:  # a new schedule applies from now on
                self.clock.plan_next(schedule)
            schedule.touch()
            self.clock.advance(schedule)
            return self.done(schedule, 200)

    def update(self, req: Request) -> Response:
        return self._change(req, replace=False)

    def replace(self, req: Request) -> Response:
        return self._change(req, replace=True)

    def delete(self, req: Request) -> Response:
        with self.emu.store.lock:
            schedule = self.schedule(req.params[0])
            check_conditions(req, schedule.etag, schedule.last_modified)
            if schedule.state != "deleting":
                self.clock.delete(schedule)
            return Response(202, None, {"DataServiceId": self.url(schedule)})

    def disable(self, req: Request) -> Response:
        with self.emu.store.lock:
            schedule = self.schedule(req.params[0])
            check_conditions(req, schedule.etag, schedule.last_modified)
            self.refuse_unless(schedule, "active", "disabled")
            schedule.set_state("disabled")
            return self.done(schedule, 204)

    def enable(self, req: Request) -> Response:
        with self.emu.store.lock:
            schedule = self.schedule(req.params[0])
            check_conditions(req, schedule.etag, schedule.last_modified)
            self.refuse_unless(schedule, "active", "disabled")
            schedule.set_state("active")
            self.clock.advance(schedule)
            return self.done(schedule, 204)

    def terminate(self, req: Request) -> Response:
        with self.emu.store.lock:
            schedule = self.schedule(req.params[0])
            check_conditions(req, schedule.etag, schedule.last_modified)
            if schedule.state != "terminating":
                self.refuse_unless(schedule, "active", "disabled")
                self.clock.terminate(schedule)
            return self.done(schedule, 202)

    def jobs(self, req: Request) -> Response:
        store = self.emu.store
        with store.lock:
            schedule = self.schedule(req.params[0])
            jobs = [store.jobs[j.lower()] for j in schedule.job_ids if j.lower() in store.jobs]
            views = [job.view(self.emu.url) for job in jobs]
        items, next_link = page(views, req.query, self.emu.url, f"/jobschedules/{schedule.id}/jobs")
        return self.emu.listing("jobs", items, next_link)
