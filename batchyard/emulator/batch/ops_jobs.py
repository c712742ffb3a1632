"""Job operations (auto pools included)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from batchyard.emulator.batch.common import (
    BatchApiError,
    check_id,
    forget_passwords,
    invalid,
    iso,
    not_found,
    parse_duration,
    require,
    unsupported,
)
from batchyard.emulator.batch.jobprep_spec import check_prep_release
from batchyard.emulator.batch.odata import page, select
from batchyard.emulator.batch.ops_pools import _check_pool
from batchyard.emulator.batch.protocol import (
    Request,
    Response,
    Router,
    check_conditions,
    created,
    entity,
    resource_headers,
)
from batchyard.emulator.batch.state import Job

if TYPE_CHECKING:
    from batchyard.emulator.batch.service import BatchService

REFUSED_JOB_FIELDS = {"jobManagerTask": "job manager tasks"}
PATCHABLE = ("priority", "maxParallelTasks", "allowTaskPreemption", "onAllTasksComplete", "constraints",
             "metadata", "onTaskFailure")
ON_ALL = ("noaction", "terminatejob")
ON_FAILURE = ("noaction", "performexitoptionsjobaction")


def _check_settings(body: dict[str, Any]) -> None:
    if body.get("onAllTasksComplete", "noaction") not in ON_ALL:
        raise invalid(f"onAllTasksComplete must be one of {', '.join(ON_ALL)}", "onAllTasksComplete")
    if body.get("onTaskFailure", "noaction") not in ON_FAILURE:
        raise invalid(f"onTaskFailure must be one of {', '.join(ON_FAILURE)}", "onTaskFailure")
    constraints = body.get("constraints") or {}
    parse_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
    retries = constraints.get("maxTaskRetryCount", 0)
    if not isinstance(retries, int) or retries < -1:
        raise invalid("constraints.maxTaskRetryCount must be an integer >= -1", "constraints.maxTaskRetryCount")
    limit = body.get("maxParallelTasks", -1)
    if not isinstance(limit, int) or limit == 0 or limit < -1:
        raise invalid("maxParallelTasks must be -1 or a positive integer", "maxParallelTasks")


class JobOps:
    def __init__(self, emu: BatchService) -> None:
        self.emu = emu

    def register(self, r: Router) -> None:
        r.add("POST", "jobs", self.create)
        r.add("GET", "jobs", self.list)
        r.add("GET", "jobs/{}", self.get)
        r.add("PATCH", "jobs/{}", self.patch)
        r.add("PUT", "jobs/{}", self.replace)
        r.add("DELETE", "jobs/{}", self.delete)
        r.add("POST", "jobs/{}/terminate", self.terminate)
        r.add("POST", "jobs/{}/disable", self.disable)
        r.add("POST", "jobs/{}/enable", self.enable)
        r.add("GET", "jobs/{}/taskcounts", self.task_counts)

    def job(self, job_id: str) -> Job:
        job = self.emu.store.jobs.get(job_id.lower())
        if job is None:
            raise not_found("Job", job_id)
        return job

    def url(self, job: Job) -> str:
        return f"{self.emu.url}/jobs/{job.id}"

    def done(self, job: Job, status: int = 200) -> Response:
        return Response(status, None, resource_headers(self.url(job), job.etag, job.last_modified))

    def create(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise invalid("The job must be a JSON object.", "job")
        check_id(require(body, "id"))
        with self.emu.store.lock:
            job = self.add_job(body)
            return created(self.url(job), job.etag, job.last_modified)

    @staticmethod
    def check_job_body(body: dict[str, Any]) -> None:
        """What Azure checks of a job before it exists: a client's job, or a job schedule's jobSpecification."""
        pool_info = require(body, "poolInfo", dict)
        for name, what in REFUSED_JOB_FIELDS.items():
            if body.get(name):
                raise unsupported(what, name)
        check_prep_release(body)
        _check_settings(body)
        auto = pool_info.get("autoPoolSpecification")
        if not pool_info.get("poolId") and not auto:
            raise BatchApiError(400, "MissingRequiredProperty", "poolInfo needs poolId or autoPoolSpecification.",
                                [("PropertyName", "poolInfo.poolId")])
        if auto:
            if (auto.get("poolLifetimeOption") or "job").lower() != "job":
                raise unsupported("auto pools that outlive a job schedule (poolLifetimeOption jobschedule)",
                                  "poolInfo.autoPoolSpecification.poolLifetimeOption")
            _check_pool({**require(auto, "pool", dict), "id": "autopool"})

    def add_job(self, body: dict[str, Any]) -> Job:
        """Check and create a job (its auto pool too): a client's, or one a job schedule makes now."""
        self.check_job_body(body)
        auto = body["poolInfo"].get("autoPoolSpecification")
        store = self.emu.store
        with store.lock:
            if body["id"].lower() in store.jobs:
                raise BatchApiError(409, "JobExists", "The specified job already exists.", [("Id", body["id"])])
            if body["id"].lower() in store.job_schedules:
                raise BatchApiError(409, "JobScheduleWithSameIdExists", "A job schedule with the specified job id "
                                    "exists. Job and job schedule cannot have the same id.", [("Id", body["id"])])
            quota = self.emu.faults.config.job_quota
            live = sum(1 for j in store.jobs.values() if j.state not in ("completed", "deleting"))
            live += sum(1 for s in store.job_schedules.values() if s.state in ("active", "disabled"))
            if quota and live >= quota:
                raise BatchApiError(409, "ActiveJobAndScheduleQuotaReached",
                                    "The specified account has reached the maximum number of active jobs "
                                    "and job schedules.")
            # An auto pool's spec may hold registry passwords: never stored, never echoed.
            job = Job(id=body["id"], spec=forget_passwords(body), state="active", seq=next(store.job_seq))
            if auto:
                prefix = auto.get("autoPoolIdPrefix") or ""
                pool_id = f"{prefix}_{uuid.uuid4()}" if prefix else str(uuid.uuid4()).upper()
                pool = self.emu.pools.add_pool(_check_pool({**auto["pool"], "id": pool_id}), auto_for_job=job.id)
                job.pool_id = pool.id
            else:
                job.pool_id = body["poolInfo"]["poolId"]
            # Azure starts a job's clock when it is created, not when its first task runs.
            job.execution = {"startTime": iso(job.created), "poolId": job.pool_id}
            store.jobs[job.id.lower()] = job
            self.emu.engine.job_settings_changed(job)
            return job

    def list(self, req: Request) -> Response:
        with self.emu.store.lock:
            jobs = sorted(self.emu.store.jobs.values(), key=lambda j: j.seq)
            views = [j.view(self.emu.url) for j in jobs]
        items, next_link = page(views, req.query, self.emu.url, "/jobs")
        return self.emu.listing("jobs", items, next_link)

    def get(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.job(req.params[0])
            check_conditions(req, job.etag, job.last_modified)
            view = select(job.view(self.emu.url), req.query.get("$select"))
            return entity(self.emu.url, "jobs", view, job.etag, job.last_modified)

    def _update(self, req: Request, *, replace: bool) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise invalid("The body must be a JSON object.", "job")
        _check_settings(body)
        with self.emu.store.lock:
            job = self.job(req.params[0])
            check_conditions(req, job.etag, job.last_modified)
            if job.state in ("completed", "terminating", "deleting"):
                raise BatchApiError(409, "JobCompleted" if job.state == "completed" else "JobBeingTerminated",
                                    f"The specified job is {job.state}.")
            if job.spec.get("onAllTasksComplete") == "terminatejob" and body.get("onAllTasksComplete") == "noaction":
                raise invalid("onAllTasksComplete cannot be changed from terminatejob to noaction",
                              "onAllTasksComplete")
            if body.get("poolInfo") not in (None, job.spec.get("poolInfo")):
                raise unsupported("moving a job to another pool", "poolInfo")
            for key in PATCHABLE:
                if key in body:
                    job.spec[key] = body[key]
                elif replace and key not in ("onTaskFailure", "onAllTasksComplete"):
                    job.spec.pop(key, None)
            job.touch()
            self.emu.engine.job_settings_changed(job)
            return self.done(job)

    def patch(self, req: Request) -> Response:
        return self._update(req, replace=False)

    def replace(self, req: Request) -> Response:
        return self._update(req, replace=True)

    def delete(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.job(req.params[0])
            check_conditions(req, job.etag, job.last_modified)
            if job.state != "deleting":
                self.emu.engine.delete_job(job)
            return Response(202, None, {"DataServiceId": self.url(job)})

    def terminate(self, req: Request) -> Response:
        body = req.json(required=False) or {}
        with self.emu.store.lock:
            job = self.job(req.params[0])
            check_conditions(req, job.etag, job.last_modified)
            if job.state == "completed":
                raise BatchApiError(409, "JobCompleted", "The specified job is already in a completed state.")
            if job.state == "deleting":
                raise BatchApiError(409, "JobBeingDeleted", "The specified job is being deleted.")
            if job.state != "terminating":
                self.emu.engine.terminate_job(job, str(body.get("terminateReason") or "UserTerminate"))
            return self.done(job, 202)

    def disable(self, req: Request) -> Response:
        body = req.json()
        how = str(require(body, "disableTasks")).lower()
        if how not in ("requeue", "terminate", "wait"):
            raise invalid("disableTasks must be requeue, terminate or wait", "disableTasks")
        with self.emu.store.lock:
            job = self.job(req.params[0])
            if job.state not in ("active", "disabled", "disabling"):
                raise BatchApiError(409, "InvalidJobState", f"The job is {job.state} and cannot be disabled.")
            job.set_state("disabled")  # the scheduler stops starting its tasks at once
            if how != "wait":
                for task in job.tasks.values():
                    if task.state == "running":
                        self.emu.engine.cancel_task(task, how)
            return self.done(job, 202)

    def enable(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.job(req.params[0])
            if job.state not in ("disabled", "enabling", "active"):
                raise BatchApiError(409, "InvalidJobState", f"The job is {job.state} and cannot be enabled.")
            job.set_state("active")
            self.emu.store.changed.notify_all()
            return self.done(job, 202)

    def task_counts(self, req: Request) -> Response:
        with self.emu.store.lock:
            tasks = list(self.job(req.params[0]).tasks.values())
            counts = {k: 0 for k in ("active", "running", "completed", "succeeded", "failed")}
            slots = dict(counts)
            for task in tasks:
                keys = [task.state]
                if task.state == "completed":
                    keys.append("succeeded" if task.succeeded else "failed")
                for key in keys:
                    counts[key] += 1
                    slots[key] += task.required_slots
        return Response(200, {"odata.metadata": f"{self.emu.url}/$metadata#taskcounts/@Element",
                              "taskCounts": counts, "taskSlotCounts": slots})
