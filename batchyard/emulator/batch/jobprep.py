"""Running a job's preparation and release tasks on the emulated nodes, as Batch does.

From the REST reference (Add Job, ``jobPreparationTask`` / ``jobReleaseTask``): the preparation
task runs on a node before the first task of the job there (in ``workitems/<job>/job-1/<id>``),
retried up to its ``maxTaskRetryCount``; with ``waitForSuccess`` (the default) the job's tasks
start on that node only once it succeeded, and never if it failed for good; it runs again after a
reboot when ``rerunOnNodeRebootAfterSuccess`` (the default) or when it was cut short. The release
task runs when the job is terminated or deleted, on every node where the preparation task ran and
completed, in the background (no slot), once, not retried; the job completes (or disappears) only
when every release task has ended. Neither task takes a task slot.
"""

from __future__ import annotations

import threading
from typing import Any

from batchyard.core.batch_semantics import batch_failure, staging_code
from batchyard.core.errors import BatchyardError
from batchyard.emulator.batch.common import iso, utcnow
from batchyard.emulator.batch.jobprep_spec import PREP, RELEASE
from batchyard.emulator.batch.nodes import NodeManager
from batchyard.emulator.batch.state import Job, Node, Pool
from batchyard.emulator.batch.translate import (
    StagingError,
    exit_code,
    expand_resource_files,
    failure_info,
    task_spec,
)
from batchyard.node.runner import run_task


class PrepRelease(NodeManager):
    """The preparation and release tasks of jobs, per node; mixed into the scheduler's engine."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._special_cancel: dict[tuple[str, str, str], threading.Event] = {}  # (job, node, kind) -> cancel

    def _after_task_change(self, job: Job) -> None:  # the engine's: finishes terminating/deleting jobs
        raise NotImplementedError

    def prep_ready(self, job: Job, pool: Pool, node: Node) -> bool:
        """Whether the job's tasks may start on ``node``; starts its preparation task there when due."""
        prep = job.spec.get(PREP)
        if not prep:
            return True
        entry = job.prep_release.get(node.id.lower())
        if entry is None or entry.get("rerun"):
            self._start(job, pool, node, PREP, prep)
            return not prep.get("waitForSuccess", True)
        info = entry["jobPreparationTaskExecutionInfo"]
        if not prep.get("waitForSuccess", True):
            return True
        return info["state"] == "completed" and info.get("result") == "success"

    def releasing(self, job: Job) -> bool:
        """For a job being terminated or deleted: cut preparation tasks short, start the release tasks
        that are due; True while any of them still runs (the job must wait)."""
        for (job_key, _, kind), cancel in self._special_cancel.items():
            if job_key == job.id.lower() and kind == PREP:
                cancel.set()
        release = job.spec.get(RELEASE)
        pool = self.store.pools.get(job.pool_id.lower())
        for key, entry in job.prep_release.items():
            done = entry["jobPreparationTaskExecutionInfo"]["state"] == "completed"
            if release and done and "jobReleaseTaskExecutionInfo" not in entry:
                node = pool.nodes.get(key) if pool is not None else None
                if node is not None and not node.removed:
                    self._start(job, pool, node, RELEASE, release)  # type: ignore[arg-type]
        return any(job_key == job.id.lower() for job_key, _, _ in self._special_cancel)

    def rerun_after_reboot(self, node: Node) -> None:
        """A node reboots: what runs there is cut short, and preparation tasks that must run again there
        will, before the job's next task on it (a new run replaces the node's entry)."""
        for (_, node_key, _), cancel in self._special_cancel.items():
            if node_key == node.id.lower():
                cancel.set()
        for job in self.store.jobs.values():
            entry = job.prep_release.get(node.id.lower())
            prep = job.spec.get(PREP) or {}
            if entry is None:
                continue
            info = entry["jobPreparationTaskExecutionInfo"]
            if info["state"] == "running" or prep.get("rerunOnNodeRebootAfterSuccess", True):
                entry["rerun"] = True

    # --- one run ----------------------------------------------------------------------------------
    def _start(self, job: Job, pool: Pool, node: Node, kind: str, body: dict[str, Any]) -> None:
        task_id = body["id"]
        rel = f"workitems/{job.id}/job-1/{task_id}"
        node_url = f"{self.account_url}/pools/{pool.id}/nodes/{node.id}"
        info: dict[str, Any] = {"state": "running", "startTime": iso(utcnow()), "taskRootDirectory": rel,
                                "taskRootDirectoryUrl": f"{node_url}/files/{rel}"}
        if kind == PREP:
            info["retryCount"] = 0
            job.prep_release[node.id.lower()] = {"poolId": pool.id, "nodeId": node.id, "nodeUrl": node_url,
                                                 "jobPreparationTaskExecutionInfo": info}
        else:
            job.prep_release[node.id.lower()]["jobReleaseTaskExecutionInfo"] = info
        cancel = threading.Event()
        self._special_cancel[(job.id.lower(), node.id.lower(), kind)] = cancel
        run = dict(body)
        run["environmentSettings"] = [*(job.spec.get("commonEnvironmentSettings") or []),
                                      *(body.get("environmentSettings") or [])]
        if kind == RELEASE:  # a release task is never retried and has its own time limit
            run["constraints"] = {"maxWallClockTime": body.get("maxWallClockTime"), "maxTaskRetryCount": 0}
        self.spawn(f"{kind}-{job.id}-{node.id}", self._run_special, job, node, kind, run, cancel, info)

    def _run_special(self, job: Job, node: Node, kind: str, body: dict[str, Any], cancel: threading.Event,
                     info: dict[str, Any]) -> None:
        result: dict[str, Any]
        try:
            files = expand_resource_files(body, self.transfer, self.storage)
            spec = task_spec(job.id, body, files)
            outcome = run_task(spec, node=self.node_context(node), transfer=self.transfer, cancel=cancel)
            last = outcome.last
            result = {"exitCode": exit_code(last), "failureInfo": failure_info(last),
                      "result": "success" if outcome.succeeded else "failure"}
            if kind == PREP:
                result["retryCount"] = len(outcome.attempts) - 1
                if len(outcome.attempts) > 1:
                    result["lastRetryTime"] = outcome.attempts[-1].started_at
        except StagingError as exc:
            result = {"result": "failure", "failureInfo": exc.failure.to_json()}
        except BatchyardError as exc:  # its files could not be staged: as the runner reports it for a task
            result = {"result": "failure",
                      "failureInfo": batch_failure("staging_failed", code=staging_code(exc), detail=str(exc)).to_json()}
        with self.store.lock:
            self._special_cancel.pop((job.id.lower(), node.id.lower(), kind), None)
            info.update({k: v for k, v in result.items() if v is not None}, state="completed", endTime=iso(utcnow()))
            if job.state in ("terminating", "deleting"):
                self._after_task_change(job)
            self.store.changed.notify_all()


def status_view(job: Job) -> list[dict[str, Any]]:
    """The job's preparation and release task status list, one entry per node, as Batch lists it."""
    return [{k: v for k, v in entry.items() if k != "rerun"} for entry in job.prep_release.values()]
