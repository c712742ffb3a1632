"""Task operations: add (single and collection), get/list/update/delete/terminate, files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchyard.emulator.batch.common import (
    BatchApiError,
    forget_passwords,
    invalid,
    iso,
    not_found,
    parse_duration,
    shared_strings,
)
from batchyard.emulator.batch.files import delete_file, file_response, list_files
from batchyard.emulator.batch.jobprep_spec import reserved_task_id
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
from batchyard.emulator.batch.state import Job, Task
from batchyard.emulator.batch.translate import validate_task

if TYPE_CHECKING:
    from pathlib import Path

    from batchyard.emulator.batch.service import BatchService

MAX_TASKS_PER_COLLECTION = 100


class TaskOps:
    def __init__(self, emu: BatchService) -> None:
        self.emu = emu

    def register(self, r: Router) -> None:
        r.add("POST", "jobs/{}/tasks", self.create)
        r.add("POST", "jobs/{}/addtaskcollection", self.create_collection)
        r.add("GET", "jobs/{}/tasks", self.list)
        r.add("GET", "jobs/{}/tasks/{}", self.get)
        r.add("PUT", "jobs/{}/tasks/{}", self.replace)
        r.add("DELETE", "jobs/{}/tasks/{}", self.delete)
        r.add("POST", "jobs/{}/tasks/{}/terminate", self.terminate)
        r.add("POST", "jobs/{}/tasks/{}/reactivate", self.reactivate)
        r.add("GET", "jobs/{}/tasks/{}/subtasksinfo", self.subtasks)
        r.add("GET", "jobs/{}/tasks/{}/files", self.list_files)
        r.add("GET", "jobs/{}/tasks/{}/files/{*}", self.get_file)
        r.add("HEAD", "jobs/{}/tasks/{}/files/{*}", self.get_file)
        r.add("DELETE", "jobs/{}/tasks/{}/files/{*}", self.delete_file)

    # --- helpers ----------------------------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        job = self.emu.store.jobs.get(job_id.lower())
        if job is None or job.state == "deleting":
            raise not_found("Job", job_id)
        return job

    def task(self, job: Job, task_id: str) -> Task:
        task = job.tasks.get(task_id.lower())
        if task is None:
            raise not_found("Task", task_id)
        return task

    def url(self, job: Job, task: Task | str) -> str:
        return f"{self.emu.url}/jobs/{job.id}/tasks/{task if isinstance(task, str) else task.id}"

    def _open_job(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.state in ("completed", "terminating"):
            raise BatchApiError(409, "JobCompleted", "The specified job is already in a completed state.")
        return job

    def _add(self, job: Job, body: Any) -> Task:
        """Validate and insert one task (caller holds the lock); raises BatchApiError per task."""
        spec = validate_task(body, uses_dependencies=bool(job.spec.get("usesTaskDependencies")))
        reserved = reserved_task_id(job.spec, spec["id"])
        if reserved is not None:
            raise reserved
        if spec["id"].lower() in job.tasks:
            raise BatchApiError(409, "TaskExists", "The specified task already exists.", [("Id", spec["id"])])
        # containerSettings.registry may carry a password: dropped (Batch never echoes it). The copy
        # kept shares the strings every task of the job repeats (SAS URLs, patterns, keys).
        stored = shared_strings(forget_passwords(spec) if spec.get("containerSettings") else spec)
        task = Task(id=spec["id"], spec=stored, state="active", job_id=job.id, seq=next(job.task_seq))
        job.tasks[task.id.lower()] = task
        return task

    def task_root(self, job: Job, task: Task) -> Path | None:
        """The task dir on the node that ran it (None before it first ran)."""
        if not task.node_id:
            return None
        pool = self.emu.store.pools.get((task.pool_id or "").lower())
        node = pool.nodes.get(task.node_id.lower()) if pool else None
        return self.emu.engine.node_context(node).task_dir(job.id, task.id) if node else None

    # --- add --------------------------------------------------------------------------------------
    def create(self, req: Request) -> Response:
        body = req.json()
        with self.emu.store.lock:
            job = self._open_job(req.params[0])
            task = self._add(job, body)
            self.emu.engine.job_settings_changed(job)
            return created(self.url(job, task), task.etag, task.last_modified)

    def create_collection(self, req: Request) -> Response:
        body = req.json()
        values = body.get("value") if isinstance(body, dict) else None
        if not isinstance(values, list):
            raise BatchApiError(400, "MissingRequiredProperty", "The task collection needs a 'value' array.",
                                [("PropertyName", "value")])
        if len(values) > MAX_TASKS_PER_COLLECTION or self.emu.faults.collection_too_large(len(values)):
            # The SDK's create_tasks halves its chunk and retries on exactly this code.
            raise BatchApiError(413, "RequestBodyTooLarge",
                                f"The request body is too large: {len(values)} tasks in one collection "
                                f"(at most {MAX_TASKS_PER_COLLECTION}, and under 1 MB).")
        results: list[dict[str, Any]] = []
        with self.emu.store.lock:
            job = self._open_job(req.params[0])
            for raw in values:
                task_id = raw.get("id") if isinstance(raw, dict) else None
                try:
                    task = self._add(job, raw)
                except BatchApiError as exc:
                    error: dict[str, Any] = {"code": exc.code,
                                             "message": {"lang": "en-US", "value": exc.message}}
                    if exc.values:
                        error["values"] = [{"key": k, "value": v} for k, v in exc.values]
                    results.append({"status": "clienterror" if exc.status < 500 else "servererror",
                                    "taskId": task_id or "", "error": error})
                    continue
                results.append({"status": "success", "taskId": task.id, "eTag": task.etag,
                                "lastModified": iso(task.last_modified), "location": self.url(job, task)})
            self.emu.engine.job_settings_changed(job)
        return Response(200, {"odata.metadata": f"{self.emu.url}/$metadata#taskaddresult", "value": results})

    # --- read -------------------------------------------------------------------------------------
    def list(self, req: Request) -> Response:
        with self.emu.store.lock:  # views made under the lock: a task's state changes under it
            job = self.job(req.params[0])
            tasks = sorted(job.tasks.values(), key=lambda t: t.seq)
            items, next_link = page(tasks, req.query, self.emu.url, f"/jobs/{job.id}/tasks",
                                    view=lambda task: task.view(self.emu.url))
        return self.emu.listing("tasks", items, next_link)

    def get(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.job(req.params[0])
            task = self.task(job, req.params[1])
            check_conditions(req, task.etag, task.last_modified)
            view = select(task.view(self.emu.url), req.query.get("$select"))
            return entity(self.emu.url, "tasks", view, task.etag, task.last_modified)

    def subtasks(self, req: Request) -> Response:
        with self.emu.store.lock:
            self.task(self.job(req.params[0]), req.params[1])
        return Response(200, {"odata.metadata": f"{self.emu.url}/$metadata#subtaskinformations", "value": []})

    # --- change -----------------------------------------------------------------------------------
    def replace(self, req: Request) -> Response:
        body = req.json()
        constraints = body.get("constraints") if isinstance(body, dict) else None
        if constraints is not None:
            if not isinstance(constraints, dict):
                raise invalid("constraints must be an object", "constraints")
            parse_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
        with self.emu.store.lock:
            job = self.job(req.params[0])
            task = self.task(job, req.params[1])
            check_conditions(req, task.etag, task.last_modified)
            if task.state == "completed":
                raise BatchApiError(409, "TaskCompleted", "The specified task is already completed.")
            if constraints is not None:
                task.spec["constraints"] = constraints
            task.touch()
            return Response(200, None, resource_headers(self.url(job, task), task.etag, task.last_modified))

    def delete(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.job(req.params[0])
            task = self.task(job, req.params[1])
            check_conditions(req, task.etag, task.last_modified)
            self.emu.engine.delete_task(job, task)
            return Response(200, None, {"DataServiceId": self.url(job, task)})

    def terminate(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.job(req.params[0])
            task = self.task(job, req.params[1])
            check_conditions(req, task.etag, task.last_modified)
            self.emu.engine.terminate_task(job, task)
            return Response(204, None, resource_headers(self.url(job, task), task.etag, task.last_modified))

    def reactivate(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self._open_job(req.params[0])
            task = self.task(job, req.params[1])
            if task.state != "completed" or task.succeeded:
                raise BatchApiError(409, "TaskNotFailed" if task.state == "completed" else "TaskNotCompleted",
                                    "Only a task that completed with a failure can be reactivated.")
            task.retry_count, task.execution = 0, {}
            task.set_state("active")
            self.emu.store.changed.notify_all()
            return Response(204, None, resource_headers(self.url(job, task), task.etag, task.last_modified))

    # --- files ------------------------------------------------------------------------------------
    def list_files(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.job(req.params[0])
            task = self.task(job, req.params[1])
            root = self.task_root(job, task)
        base = f"{self.url(job, task)}/files"
        entries = list_files(root, base, req.flag("recursive")) if root else []
        items, next_link = page(entries, req.query, self.emu.url, f"/jobs/{job.id}/tasks/{task.id}/files")
        return self.emu.listing("files", items, next_link)

    def get_file(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.job(req.params[0])
            task = self.task(job, req.params[1])
            root = self.task_root(job, task)
        return file_response(req, root, req.rest, f"{self.url(job, task)}/files")

    def delete_file(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.job(req.params[0])
            task = self.task(job, req.params[1])
            root = self.task_root(job, task)
        delete_file(root, req.rest, req.flag("recursive"))
        return Response(200)
