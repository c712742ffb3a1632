"""The scheduler: active tasks -> free slots, one thread per running task, Batch's state machine.

Task life: ``active`` -> ``running`` -> ``completed``. A failed attempt with retries left
goes back to ``active`` (``retryCount`` + 1) and may run on another node, as in Batch; a
task killed by node loss or pool shrink goes back to ``active`` with ``requeueCount`` + 1.
Each attempt runs through :func:`batchyard.node.runner.run_attempt` in its own thread (the
command itself is a subprocess). The loop wakes on every change and at least every 0.2 s
(job deadlines, injected node loss).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from batchyard.core.batch_semantics import ENDED_BY_USER, batch_failure, staging_code
from batchyard.core.errors import BatchyardError
from batchyard.emulator.batch.common import iso, parse_duration, utcnow
from batchyard.emulator.batch.jobprep import PrepRelease
from batchyard.emulator.batch.state import Job, Node, Pool, Task
from batchyard.emulator.batch.transitions import settle_at, settled
from batchyard.emulator.batch.translate import StagingError, exit_code, expand_resource_files, failure_info, task_spec
from batchyard.node.runner import AttemptRecord, run_attempt, should_retry

log = logging.getLogger("batchyard.emulator.batch")
TICK_S = 0.2


def _exit_options(task: Task, failure: dict[str, Any] | None, code: int | None) -> dict[str, Any]:
    """The task's exitConditions entry that applies to this outcome (Batch's lookup order)."""
    cond = task.spec.get("exitConditions") or {}
    if failure is not None and code is None:
        upload = failure.get("code", "").startswith("FileUpload")
        chosen = cond.get("fileUploadError" if upload else "preProcessingError")
        return chosen or cond.get("default") or {}
    for entry in cond.get("exitCodes") or []:
        if entry.get("code") == code:
            return entry.get("exitOptions") or {}
    for rng in cond.get("exitCodeRanges") or []:
        if code is not None and rng.get("start", 0) <= code <= rng.get("end", -1):
            return rng.get("exitOptions") or {}
    return {} if failure is None else cond.get("default") or {}


class Engine(PrepRelease):
    """Node manager + scheduler + the job/task state transitions they cause (jobs' preparation and
    release tasks: :mod:`batchyard.emulator.batch.jobprep`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Work on a clock (autoscale evaluations, job schedules): called every tick, lock held.
        self.periodic: list[Callable[[], None]] = []

    def start(self) -> None:
        self.spawn("batch-scheduler", self._loop)

    def stop(self) -> None:
        self.stopping.set()
        with self.store.lock:
            for job in self.store.jobs.values():
                for task in job.tasks.values():
                    self.cancel_task(task, "stop")
            self.store.changed.notify_all()
        self.join_threads(timeout=10)

    # --- loop -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        with self.store.lock:
            while not self.stopping.is_set():
                self._check_deadlines_and_faults()
                self._settle()
                for work in self.periodic:
                    try:
                        work()
                    except Exception:  # one failing feature must not stop the scheduler
                        log.exception("batch emulator: periodic %s failed", getattr(work, "__qualname__", work))
                self._schedule()
                self.store.changed.wait(TICK_S)

    def _check_deadlines_and_faults(self) -> None:
        now = time.monotonic()
        for job in list(self.store.jobs.values()):
            if job.deadline is not None and job.state in ("active", "disabled") and now >= job.deadline:
                self.terminate_job(job, "MaxWallClockTimeExpiry")
        for pool in list(self.store.pools.values()):
            for node in list(pool.nodes.values()):
                if node.removed or not node.running:
                    continue
                longest = max(now - t.started_mono for t in node.running.values())
                if self.faults.take_node_loss(longest):
                    log.info("fault injection: node %s lost; its tasks are requeued", node.id)
                    self.remove_node(pool, node, reason="requeue")
                    self.add_node(pool, node.is_dedicated)  # Azure allocates a replacement

    def _settle(self) -> None:
        """Move on the pools, nodes and jobs whose transitional state has lasted long enough."""
        self.settle_pools()
        for job in list(self.store.jobs.values()):
            if job.state in ("terminating", "deleting"):
                self._after_task_change(job)

    def finish_transitions(self, kinds: tuple[str, ...]) -> None:
        """End at once the pending transitions of these kinds (``pools``, ``nodes``, ``jobs``): for tests."""
        if "jobs" in kinds:
            for job in self.store.jobs.values():
                job.settle_at = 0.0 if job.settle_at is not None else None
        super().finish_transitions(kinds)
        self._settle()

    def _dependencies_met(self, job: Job, task: Task) -> bool:
        deps = task.spec.get("dependsOn") or {}
        ids = [str(i) for i in deps.get("taskIds") or []]
        for rng in deps.get("taskIdRanges") or []:
            ids += [str(i) for i in range(int(rng["start"]), int(rng["end"]) + 1)]
        for dep_id in ids:
            dep = job.tasks.get(dep_id.lower())
            if dep is None or dep.state != "completed" or not dep.execution.get("_satisfies", False):
                return False
        return True

    def _schedule(self) -> None:
        jobs = sorted((j for j in self.store.jobs.values() if j.state == "active"),
                      key=lambda j: (-int(j.spec.get("priority") or 0), j.seq))
        for job in jobs:
            pool = self.store.pools.get(job.pool_id.lower())
            if pool is None or pool.state != "active":
                continue
            nodes = [n for n in pool.nodes.values() if n.schedulable and n.free_slots > 0]
            if not nodes:
                continue
            limit = int(job.spec.get("maxParallelTasks", -1))
            running = sum(1 for t in job.tasks.values() if t.state == "running")
            pack = (pool.spec.get("taskSchedulingPolicy") or {}).get("nodeFillType", "spread") == "pack"
            for task in sorted((t for t in job.tasks.values() if t.state == "active"), key=lambda t: t.seq):
                if limit >= 0 and running >= limit:
                    break
                fits = [n for n in nodes if n.schedulable and n.free_slots >= task.required_slots]
                if not fits or not self._dependencies_met(job, task):
                    continue
                fits = [n for n in fits if self.prep_ready(job, pool, n)]
                if not fits:
                    continue
                fits.sort(key=lambda n: (n.free_slots if pack else -n.free_slots, n.id))
                self._start_task(pool, fits[0], job, task)
                running += 1

    # --- one attempt ------------------------------------------------------------------------------
    def _start_task(self, pool: Pool, node: Node, job: Job, task: Task) -> None:
        slot = node.used_slots
        node.used_slots += task.required_slots
        node.running[(job.id.lower(), task.id.lower())] = task
        node.refresh_state()
        task.set_state("running")
        task.cancel, task.cancel_reason = threading.Event(), None
        task.started_mono = time.monotonic()
        task.node_id, task.pool_id = node.id, pool.id
        rel = f"workitems/{job.id}/job-1/{task.id}"
        node_url = f"{self.account_url}/pools/{pool.id}/nodes/{node.id}"
        task.node_info = {"affinityId": f"TVM:{node.id}", "nodeUrl": node_url, "poolId": pool.id,
                          "nodeId": node.id, "taskRootDirectory": rel,
                          "taskRootDirectoryUrl": f"{node_url}/files/{rel}"}
        task.execution.update(startTime=iso(utcnow()), endTime=None, exitCode=None, result=None,
                              failureInfo=None)
        if task.retry_count == 0 and task.requeue_count == 0:
            job.execution.setdefault("startTime", iso(utcnow()))
        retry_default = int((job.spec.get("constraints") or {}).get("maxTaskRetryCount", 0))
        body = dict(task.spec)
        # The job's commonEnvironmentSettings apply to every task; the task's own win.
        body["environmentSettings"] = [*(job.spec.get("commonEnvironmentSettings") or []),
                                       *(task.spec.get("environmentSettings") or [])]
        self.spawn(f"task-{job.id}-{task.id}", self._run, pool, node, job, task, body,
                   task.retry_count + 1, slot, retry_default)

    def _run(self, pool: Pool, node: Node, job: Job, task: Task, body: dict[str, Any], number: int,
             slot: int, retry_default: int) -> None:
        record: AttemptRecord | None = None
        failure: dict[str, Any] | None = None
        retry = False
        try:
            files = expand_resource_files(body, self.transfer, self.storage)
            spec = task_spec(job.id, body, files, retry_default)
            assert task.cancel is not None
            record, _ = run_attempt(spec, node=self.node_context(node), transfer=self.transfer, number=number,
                                    slot=slot, cancel=task.cancel)
            retry = should_retry(record, spec)
        except StagingError as exc:
            failure = exc.failure.to_json()
        except BatchyardError as exc:  # the task's files could not be staged: as the runner reports it
            failure = batch_failure("staging_failed", code=staging_code(exc), detail=str(exc)).to_json()
        with self.store.lock:
            self._finish(pool, node, job, task, record, failure, retry)

    def _finish(self, pool: Pool, node: Node, job: Job, task: Task, record: AttemptRecord | None,
                failure: dict[str, Any] | None, retry: bool) -> None:
        node.running.pop((job.id.lower(), task.id.lower()), None)
        node.used_slots -= task.required_slots
        node.total_run += 1
        node.refresh_state()
        reason, task.cancel, task.cancel_reason = task.cancel_reason, None, None
        now = iso(utcnow())
        if record is not None and reason is None:
            failure, code = failure_info(record), exit_code(record)
        else:
            code = None
        if record is not None and record.succeeded:
            node.total_succeeded += 1
        if task.deleted or reason == "stop":
            pass
        elif reason == "requeue":
            task.requeue_count += 1
            task.execution.update(lastRequeueTime=now, startTime=None)
            task.set_state("active")
        elif reason in ("terminate", "delete"):
            task.execution.update(endTime=now, exitCode=code, result="failure", failureInfo=ENDED_BY_USER.to_json())
            task.set_state("completed")
        elif retry:
            task.retry_count += 1
            task.execution.update(lastRetryTime=now, exitCode=code, failureInfo=failure)
            task.set_state("active")
        else:
            task.execution.update(endTime=now, exitCode=code, failureInfo=failure,
                                  result="success" if failure is None else "failure")
            options = _exit_options(task, failure, code)
            default_dep = "satisfy" if failure is None else "block"
            task.execution["_satisfies"] = options.get("dependencyAction", default_dep) == "satisfy"
            task.set_state("completed")
            self._job_action(job, failure, options)
        node.recent.append({"taskUrl": f"{self.account_url}/jobs/{job.id}/tasks/{task.id}", "jobId": job.id,
                            "taskId": task.id, "taskState": task.state,
                            "executionInfo": {k: v for k, v in task.execution.items()
                                              if v is not None and not k.startswith("_")}})
        if node.removed and not node.running:
            self._forget_node(pool, node)
        self._after_task_change(job)
        self.store.changed.notify_all()

    # --- jobs -------------------------------------------------------------------------------------
    def _job_action(self, job: Job, failure: dict[str, Any] | None, options: dict[str, Any]) -> None:
        action = options.get("jobAction")
        if failure is not None and job.spec.get("onTaskFailure") == "performexitoptionsjobaction":
            action = action or "terminate"
        if action == "terminate" and job.state == "active":
            self.terminate_job(job, "TaskFailed")
        elif action == "disable" and job.state == "active":
            job.set_state("disabled")

    def _after_task_change(self, job: Job) -> None:
        """Finish a terminating/deleting job once its tasks are dead; onAllTasksComplete."""
        if job.state in ("terminating", "deleting"):
            # Asked only of a job that is ending: an active job's check would walk all its tasks on every add.
            if any(t.state == "running" for t in job.tasks.values()) or self.releasing(job):
                return  # the job ends once its tasks are dead and its release tasks have run
            if settled(job.settle_at):
                if job.state == "terminating":
                    self._complete_job(job)
                else:
                    self._forget_job(job)
        elif (job.state == "active" and job.spec.get("onAllTasksComplete") == "terminatejob" and job.tasks
              and all(t.state == "completed" for t in job.tasks.values())):
            # A job with no tasks stays active, as on Azure (its recorded answers show it).
            self.terminate_job(job, "AllTasksComplete")

    def job_settings_changed(self, job: Job) -> None:
        max_wall = parse_duration((job.spec.get("constraints") or {}).get("maxWallClockTime"),
                                  "constraints.maxWallClockTime")
        job.deadline = None if max_wall is None else job.created.timestamp() - time.time() + time.monotonic() + max_wall
        self._after_task_change(job)
        self.store.changed.notify_all()

    def terminate_job(self, job: Job, reason: str) -> None:
        job.execution["terminateReason"] = reason
        job.set_state("terminating")
        job.settle_at = settle_at(self.timing.terminate_s)
        for task in job.tasks.values():
            if task.state == "running":
                self.cancel_task(task, "terminate")
        self._after_task_change(job)

    def _complete_job(self, job: Job) -> None:
        job.settle_at = None
        job.execution["endTime"] = iso(utcnow())
        job.set_state("completed")
        self._release_auto_pool(job)

    def delete_job(self, job: Job) -> None:
        job.set_state("deleting")
        job.settle_at = settle_at(self.timing.delete_s)
        for task in job.tasks.values():
            if task.state == "running":
                self.cancel_task(task, "delete")
        self._after_task_change(job)

    def _forget_job(self, job: Job) -> None:
        if self.store.jobs.get(job.id.lower()) is job:
            del self.store.jobs[job.id.lower()]
        for task in job.tasks.values():
            task.deleted = True
        pool = self.store.pools.get(job.pool_id.lower())
        for node in list(pool.nodes.values()) if pool else []:
            shutil.rmtree(node.root / "workitems" / job.id, ignore_errors=True)
        self._release_auto_pool(job)

    def _release_auto_pool(self, job: Job) -> None:
        spec = (job.spec.get("poolInfo") or {}).get("autoPoolSpecification")
        pool = self.store.pools.get(job.pool_id.lower())
        if spec and pool is not None and pool.auto_for_job == job.id and not spec.get("keepAlive", False):
            self.delete_pool(pool)

    def delete_task(self, job: Job, task: Task) -> None:
        task.deleted = True
        job.tasks.pop(task.id.lower(), None)
        if task.state == "running":
            self.cancel_task(task, "delete")
        elif task.node_id:
            pool = self.store.pools.get((task.pool_id or "").lower())
            node = pool.nodes.get(task.node_id.lower()) if pool else None
            if node is not None:
                shutil.rmtree(self.node_context(node).task_dir(job.id, task.id), ignore_errors=True)
        self._after_task_change(job)

    def terminate_task(self, job: Job, task: Task) -> None:
        if task.state == "running":
            self.cancel_task(task, "terminate")
        elif task.state == "active":
            task.execution.update(endTime=iso(utcnow()), result="failure", failureInfo=ENDED_BY_USER.to_json())
            task.set_state("completed")
            self._after_task_change(job)
