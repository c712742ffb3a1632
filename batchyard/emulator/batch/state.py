"""In-memory pools, nodes, jobs and tasks, and their JSON views.

Each resource keeps the body the client sent (``spec``, camelCase, as Batch echoes it
back) next to the fields the service owns (state, times, ETag...). Views merge the two.
Ids are case-preserving but unique case-insensitively, as in Batch, so every map is
keyed by ``id.lower()``. One re-entrant lock (``Store.lock``) guards everything: the
emulator is small and correctness beats concurrency here.
"""

from __future__ import annotations

import collections
import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from batchyard.emulator.batch import defaults
from batchyard.emulator.batch.common import INFINITE_DURATION, iso, new_etag, utcnow

RECENT_TASKS = 5


@dataclass
class Resource:
    id: str
    spec: dict[str, Any]
    state: str
    created: datetime = field(default_factory=utcnow)
    last_modified: datetime = field(default_factory=utcnow)
    etag: str = field(default_factory=new_etag)
    state_time: datetime = field(default_factory=utcnow)
    previous_state: str | None = None
    previous_state_time: datetime | None = None

    def touch(self) -> None:
        self.last_modified, self.etag = utcnow(), new_etag()

    def set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.previous_state, self.previous_state_time = self.state, self.state_time
        self.state, self.state_time = state, utcnow()
        self.touch()

    def common_view(self, url: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "url": url, "eTag": self.etag, "lastModified": iso(self.last_modified),
            "creationTime": iso(self.created), "state": self.state, "stateTransitionTime": iso(self.state_time),
        }
        if self.previous_state:
            out["previousState"] = self.previous_state
            out["previousStateTransitionTime"] = iso(self.previous_state_time)
        return out


@dataclass
class Node:
    id: str
    pool_id: str
    root: Path
    slots: int
    is_dedicated: bool = True
    state: str = "starting"
    state_time: datetime = field(default_factory=utcnow)
    allocated: datetime = field(default_factory=utcnow)
    running: dict[tuple[str, str], Task] = field(default_factory=dict)  # (job key, task key) -> task
    used_slots: int = 0
    total_run: int = 0
    total_succeeded: int = 0
    start_task_info: dict[str, Any] | None = None
    recent: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=RECENT_TASKS))
    removed: bool = False
    scheduling_enabled: bool = True  # disablescheduling: the node keeps running what it has, takes nothing new
    booted: datetime = field(default_factory=utcnow)  # lastBootTime: allocation, then each reboot
    index: int = 0  # the node's place in its pool: its inbound endpoints' names and ports follow it
    ready_at: float | None = None  # monotonic end of its boot (``starting``) or reboot, see transitions.py

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.state_time = state, utcnow()

    @property
    def free_slots(self) -> int:
        return self.slots - self.used_slots

    @property
    def schedulable(self) -> bool:
        return not self.removed and self.scheduling_enabled and self.state in ("idle", "running")

    def refresh_state(self) -> None:
        if self.state in ("idle", "running"):
            self.set_state("running" if self.running else "idle")

    def view(self, base: str, pool: Pool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "url": f"{base}/pools/{pool.id}/nodes/{self.id}", "state": self.state,
            "schedulingState": "enabled" if self.scheduling_enabled else "disabled",
            "stateTransitionTime": iso(self.state_time), "lastBootTime": iso(self.booted),
            "allocationTime": iso(self.allocated),
            "ipAddress": "127.0.0.1", "affinityId": f"TVM:{self.id}", "vmSize": pool.spec.get("vmSize", ""),
            "totalTasksRun": self.total_run, "totalTasksSucceeded": self.total_succeeded,
            "runningTasksCount": len(self.running), "runningTaskSlotsCount": self.used_slots,
            "isDedicated": self.is_dedicated,
            "nodeAgentInfo": {"version": "batchyard-emulator", "lastUpdateTime": iso(self.allocated)},
        }
        if self.recent:
            out["recentTasks"] = list(self.recent)
        if "startTask" in pool.spec:
            out["startTask"] = pool.spec["startTask"]
        if self.start_task_info is not None:
            out["startTaskInfo"] = dict(self.start_task_info)
        return defaults.node_view(out, pool.spec, self.index)


@dataclass
class Pool(Resource):
    allocation_state: str = "steady"
    allocation_time: datetime = field(default_factory=utcnow)
    nodes: dict[str, Node] = field(default_factory=dict)
    node_seq: itertools.count[int] = field(default_factory=lambda: itertools.count(0))
    auto_for_job: str | None = None  # id of the job that owns this auto pool
    resize_errors: list[dict[str, Any]] = field(default_factory=list)
    autoscale_run: dict[str, Any] | None = None  # the last evaluation of the autoscale formula (ops_autoscale)
    settle_at: float | None = None  # monotonic end of ``resizing``/``stopping`` (transitions.py)
    gone_at: float | None = None  # monotonic end of ``deleting``
    resizing: tuple[str, ...] = ()  # the targets the resize under way changes (for ResizeStopped)

    def view(self, base: str) -> dict[str, Any]:
        out = dict(self.spec)
        out.update(self.common_view(f"{base}/pools/{self.id}"))
        live = [n for n in self.nodes.values() if not n.removed]
        out.update({
            "allocationState": self.allocation_state,
            "allocationStateTransitionTime": iso(self.allocation_time),
            "currentDedicatedNodes": sum(1 for n in live if n.is_dedicated),
            "currentLowPriorityNodes": sum(1 for n in live if not n.is_dedicated),
            "targetDedicatedNodes": int(self.spec.get("targetDedicatedNodes") or 0),
            "targetLowPriorityNodes": int(self.spec.get("targetLowPriorityNodes") or 0),
            "enableAutoScale": bool(self.spec.get("enableAutoScale", False)),
            "enableInterNodeCommunication": bool(self.spec.get("enableInterNodeCommunication", False)),
            "taskSlotsPerNode": int(self.spec.get("taskSlotsPerNode") or 1),
            "taskSchedulingPolicy": self.spec.get("taskSchedulingPolicy") or {"nodeFillType": "spread"},
            "resizeTimeout": self.spec.get("resizeTimeout", "PT15M"),
        })
        if self.resize_errors:
            out["resizeErrors"] = self.resize_errors
        if self.autoscale_run is not None:
            out["autoScaleRun"] = self.autoscale_run
        return defaults.pool_view(out)


@dataclass
class Task(Resource):
    job_id: str = ""
    seq: int = 0
    retry_count: int = 0
    requeue_count: int = 0
    execution: dict[str, Any] = field(default_factory=dict)
    node_info: dict[str, Any] | None = None
    node_id: str | None = None  # node of the current / last attempt
    pool_id: str | None = None
    cancel: threading.Event | None = None
    cancel_reason: str | None = None  # "terminate" | "delete" | "requeue" | "stop"
    started_mono: float = 0.0
    deleted: bool = False

    @property
    def required_slots(self) -> int:
        return int(self.spec.get("requiredSlots") or 1)

    @property
    def succeeded(self) -> bool:
        return self.state == "completed" and self.execution.get("result") == "success"

    def view(self, base: str) -> dict[str, Any]:
        out = dict(self.spec)
        out.update(self.common_view(f"{base}/jobs/{self.job_id}/tasks/{self.id}"))
        constraints = dict(self.spec.get("constraints") or {})
        constraints.setdefault("maxWallClockTime", INFINITE_DURATION)
        constraints.setdefault("retentionTime", "P7D")
        constraints.setdefault("maxTaskRetryCount", 0)
        out["constraints"] = constraints
        out["requiredSlots"] = self.required_slots
        out.setdefault("userIdentity", {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}})
        execution = {k: v for k, v in self.execution.items() if v is not None and not k.startswith("_")}
        execution.update({"retryCount": self.retry_count, "requeueCount": self.requeue_count})
        out["executionInfo"] = execution
        if self.node_info is not None:
            out["nodeInfo"] = self.node_info
        return out


@dataclass
class Job(Resource):
    pool_id: str = ""
    tasks: dict[str, Task] = field(default_factory=dict)
    task_seq: itertools.count[int] = field(default_factory=lambda: itertools.count(0))
    seq: int = 0
    execution: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # monotonic time of the job's maxWallClockTime
    # Per node (key: node id, lower case) where its preparation task ran: pool/node ids and the
    # preparation and release tasks' execution info (jobprep.py).
    prep_release: dict[str, dict[str, Any]] = field(default_factory=dict)
    settle_at: float | None = None  # monotonic end of ``terminating``/``deleting`` (transitions.py)

    def view(self, base: str) -> dict[str, Any]:
        out = dict(self.spec)
        out.update(self.common_view(f"{base}/jobs/{self.id}"))
        constraints = dict(self.spec.get("constraints") or {})
        constraints.setdefault("maxWallClockTime", INFINITE_DURATION)
        constraints.setdefault("maxTaskRetryCount", 0)
        out.update({
            "priority": int(self.spec.get("priority") or 0),
            "maxParallelTasks": int(self.spec.get("maxParallelTasks", -1)),
            "allowTaskPreemption": bool(self.spec.get("allowTaskPreemption", False)),
            "usesTaskDependencies": bool(self.spec.get("usesTaskDependencies", False)),
            "onAllTasksComplete": self.spec.get("onAllTasksComplete", "noaction"),
            "onTaskFailure": self.spec.get("onTaskFailure", "noaction"),
            "constraints": constraints,
            "executionInfo": {k: v for k, v in self.execution.items() if v is not None},
        })
        return defaults.job_view(out)


@dataclass
class JobSchedule(Resource):
    """A schedule's own fields; its clock is :mod:`batchyard.emulator.batch.schedules`."""

    job_ids: list[str] = field(default_factory=list)  # the jobs it made, oldest first
    job_seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    next_run: datetime | None = None  # when the next job is due (None: no more jobs)
    last_run: datetime | None = None  # when it last made a job
    end_time: datetime | None = None


class Store:
    """Everything the emulator knows; lost on restart."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # wakes the scheduler
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self.job_seq = itertools.count(0)
        self.job_schedules: dict[str, JobSchedule] = {}
