"""Node operations beyond listing: reboot, scheduling on/off, remote login settings, uploading the
node's service log, pool node counts, and a job's preparation/release task status per node.

Shapes and statuses as Azure answered the SDK's recorded tests (``test_batch_compute_nodes``,
``test_batch_compute_node_user``, ``test_batch_create_pools``, ``test_batch_jobs``): reboot 202
(the node is ``rebooting`` until its tasks are gone, then boots again and reruns its start task),
disable/enable scheduling 200 (409 ``NodeAlreadyInTargetSchedulingState`` when already so), remote
login settings ``{remoteLoginIPAddress, remoteLoginPort}``, upload logs
``{virtualDirectoryName, numberOfFilesUploaded}``, node counts per pool and state.
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchyard.core.errors import BatchyardError
from batchyard.emulator.batch.common import BatchApiError, invalid, iso, not_found, require, unsupported, utcnow
from batchyard.emulator.batch.defaults import NODE_IPV6, ip_families
from batchyard.emulator.batch.intervals import parse_time
from batchyard.emulator.batch.jobprep import status_view
from batchyard.emulator.batch.jobprep_spec import PREP
from batchyard.emulator.batch.odata import page
from batchyard.emulator.batch.protocol import Request, Response, Router
from batchyard.emulator.batch.state import Node, Pool
from batchyard.emulator.batch.transitions import settle_at, settled

if TYPE_CHECKING:
    from batchyard.emulator.batch.service import BatchService

REBOOT_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
SCHEDULING_OPTIONS = ("requeue", "terminate", "taskcompletion")
# BatchNodeCounts field per node state (the SDK's names; every field is present, zero or not).
COUNTED = {"creating": "creating", "idle": "idle", "offline": "offline", "preempted": "preempted",
           "rebooting": "rebooting", "reimaging": "reimaging", "running": "running", "starting": "starting",
           "starttaskfailed": "startTaskFailed", "leavingpool": "leavingPool", "unknown": "unknown",
           "unusable": "unusable", "waitingforstarttask": "waitingForStartTask", "deallocated": "deallocated",
           "deallocating": "deallocating", "upgradingos": "upgradingOS"}
REMOTE_LOGIN_FIRST_PORT = 50000  # Batch's default inbound NAT range for SSH starts here
_BUSY_NODE = {"rebooting": "NodeBeingRebooted", "starting": "NodeBeingStarted", "creating": "NodeBeingCreated",
              "reimaging": "NodeBeingReimaged", "unusable": "NodeStateUnusable"}


def _option(body: Any, prop: str, allowed: tuple[str, ...]) -> str:
    """The option a reboot / disable-scheduling body gives (an empty body means requeue)."""
    if not isinstance(body, dict):
        raise invalid("The body must be a JSON object.", "body")
    value = body.get(prop) or "requeue"
    if not isinstance(value, str) or value.lower() not in allowed:
        raise invalid(f"{prop} must be one of {', '.join(allowed)}", prop)
    return value.lower()


class NodeOps:
    def __init__(self, emu: BatchService) -> None:
        self.emu = emu
        self._events: dict[str, list[tuple[datetime, str]]] = {}  # node key -> what its agent would log

    def register(self, r: Router) -> None:
        r.add("POST", "pools/{}/nodes/{}/reboot", self.reboot)
        r.add("POST", "pools/{}/nodes/{}/disablescheduling", self.disable_scheduling)
        r.add("POST", "pools/{}/nodes/{}/enablescheduling", self.enable_scheduling)
        r.add("GET", "pools/{}/nodes/{}/remoteloginsettings", self.remote_login_settings)
        r.add("POST", "pools/{}/nodes/{}/uploadbatchservicelogs", self.upload_logs)
        r.add("GET", "nodecounts", self.node_counts)
        r.add("GET", "jobs/{}/jobpreparationandreleasetaskstatus", self.prep_release_status)

    # --- helpers ----------------------------------------------------------------------------------
    def _node(self, req: Request) -> tuple[Pool, Node]:
        pool = self.emu.store.pools.get(req.params[0].lower())
        if pool is None:
            raise not_found("Pool", req.params[0])
        node = pool.nodes.get(req.params[1].lower())
        if node is None or node.removed:
            raise not_found("Node", req.params[1])
        return pool, node

    def _note(self, node: Node, text: str) -> None:
        self._events.setdefault(node.id.lower(), []).append((utcnow(), text))

    def _done(self, pool: Pool, node: Node, action: str, status: int = 200) -> Response:
        return Response(status, None, {"DataServiceId": f"{self.emu.url}/pools/{pool.id}/nodes/{node.id}/{action}"})

    def _stop_tasks(self, node: Node, option: str) -> None:
        """What a reboot or disable-scheduling does to the tasks running there."""
        if option in ("requeue", "terminate"):
            for task in list(node.running.values()):
                self.emu.engine.cancel_task(task, option)

    # --- reboot -----------------------------------------------------------------------------------
    def reboot(self, req: Request) -> Response:
        body = req.json(required=False) or {}
        option = _option(body, "nodeRebootOption", REBOOT_OPTIONS)
        with self.emu.store.lock:
            pool, node = self._node(req)
            if node.state not in ("idle", "running"):
                raise BatchApiError(409, _BUSY_NODE.get(node.state, "OperationNotValidOnNode"),
                                    f"The node is {node.state}: only an idle or running node can be rebooted.")
            node.set_state("rebooting")
            node.ready_at = settle_at(self.emu.engine.timing.reboot_s)
            self._note(node, f"reboot requested (nodeRebootOption {option})")
            self._stop_tasks(node, option)
            self.emu.engine.rerun_after_reboot(node)
            self.emu.store.changed.notify_all()
            return self._done(pool, node, "reboot", 202)

    def tick(self) -> None:
        """Boot the rebooting nodes that no longer run anything (lock held)."""
        engine = self.emu.engine
        for pool in list(self.emu.store.pools.values()):
            for node in list(pool.nodes.values()):
                if node.state != "rebooting" or node.running or node.removed or not settled(node.ready_at):
                    continue
                node.ready_at = None
                node.booted = utcnow()
                self._note(node, "rebooted")
                start = pool.spec.get("startTask")
                if not start:
                    node.set_state("idle")
                    continue
                wait = bool(start.get("waitForSuccess", True))  # Batch reruns the start task after a reboot
                node.set_state("waitingforstarttask" if wait else "idle")
                node.start_task_info = {"state": "running", "startTime": iso(utcnow()), "retryCount": 0}
                engine.spawn(f"starttask-{node.id}", engine._run_start_task, pool, node, dict(start), wait)
                self.emu.store.changed.notify_all()

    # --- scheduling -------------------------------------------------------------------------------
    def disable_scheduling(self, req: Request) -> Response:
        body = req.json(required=False) or {}
        option = _option(body, "nodeDisableSchedulingOption", SCHEDULING_OPTIONS)
        with self.emu.store.lock:
            pool, node = self._node(req)
            if not node.scheduling_enabled:
                raise BatchApiError(409, "NodeAlreadyInTargetSchedulingState",
                                    "The specified node is already in the target scheduling state.")
            node.scheduling_enabled = False
            self._note(node, f"scheduling disabled ({option})")
            self._stop_tasks(node, option)
            return self._done(pool, node, "disablescheduling")

    def enable_scheduling(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool, node = self._node(req)
            if node.scheduling_enabled:
                raise BatchApiError(409, "NodeAlreadyInTargetSchedulingState",
                                    "The specified node is already in the target scheduling state.")
            node.scheduling_enabled = True
            self._note(node, "scheduling enabled")
            self.emu.store.changed.notify_all()
            return self._done(pool, node, "enablescheduling")

    # --- remote login and logs --------------------------------------------------------------------
    def remote_login_settings(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool, node = self._node(req)
            ordinal = sorted(pool.nodes).index(node.id.lower())
        metadata = f"{self.emu.url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.RemoteLoginSettings"
        body = {"odata.metadata": metadata, "remoteLoginIPAddress": "127.0.0.1",
                "remoteLoginPort": REMOTE_LOGIN_FIRST_PORT + ordinal}
        if "ipv6" in ip_families(pool.spec):  # Azure adds the IPv6 pair for a pool that asked for IPv6
            body |= {"ipv6RemoteLoginIPAddress": NODE_IPV6, "ipv6RemoteLoginPort": REMOTE_LOGIN_FIRST_PORT + ordinal}
        return Response(200, body, {"DataServiceId": f"{self.emu.url}/pools/{pool.id}/nodes/{node.id}/"
                                                     "remoteloginsettings"})

    def _log_lines(self, node: Node, since: datetime, until: datetime | None) -> list[str]:
        events = [(node.allocated, "allocated"), *self._events.get(node.id.lower(), [])]
        info = node.start_task_info or {}
        for key, what in (("startTime", "start task started"), ("endTime", "start task ended")):
            if info.get(key):
                events.append((datetime.fromisoformat(info[key]), f"{what} (result {info.get('result', '-')})"))
        for recent in node.recent:
            execution = recent.get("executionInfo") or {}
            for key, what in (("startTime", "started"), ("endTime", "ended")):
                if execution.get(key):
                    events.append((datetime.fromisoformat(execution[key]),
                                   f"task {recent['jobId']}/{recent['taskId']} {what}"))
        return [f"{iso(when)} {text}" for when, text in sorted(events)
                if when >= since and (until is None or when <= until)]

    def upload_logs(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise invalid("The body must be a JSON object.", "body")
        container_url = require(body, "containerUrl")
        if body.get("identityReference"):
            raise unsupported("managed identities for log upload", "identityReference")
        since = parse_time(require(body, "startTime"), "startTime")
        until = parse_time(body.get("endTime"), "endTime")
        assert since is not None
        request_id = str(uuid.uuid4())
        with self.emu.store.lock:
            pool, node = self._node(req)
            lines = self._log_lines(node, since, until)
        account = hashlib.sha256(self.emu.url.encode()).hexdigest()[:16].upper()
        directory = f"batch-{account}/{pool.id}/{node.id}/{request_id}"
        with tempfile.TemporaryDirectory(dir=self.emu.engine.data_dir) as tmp:
            log_file = Path(tmp) / "batch-agent.log"
            log_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            try:
                self.emu.engine.transfer.upload(log_file, blob_name=f"{directory}/{log_file.name}",
                                                container_url=container_url)
            except BatchyardError as exc:  # the message names the container without its SAS
                raise BatchApiError(400, "InvalidPropertyValue", "The logs could not be uploaded to the container.",
                                    [("PropertyName", "containerUrl"), ("Reason", str(exc))]) from None
        return Response(200, {"odata.metadata": f"{self.emu.url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities."
                                                "UploadBatchServiceLogsResult",
                              "virtualDirectoryName": directory, "numberOfFilesUploaded": 1})

    # --- counts and statuses ----------------------------------------------------------------------
    def node_counts(self, req: Request) -> Response:
        with self.emu.store.lock:
            rows = []
            for pool in sorted(self.emu.store.pools.values(), key=lambda p: p.id.lower()):
                kinds = {True: dict.fromkeys([*COUNTED.values(), "total"], 0), False: dict.fromkeys(
                    [*COUNTED.values(), "total"], 0)}
                for node in pool.nodes.values():
                    counts = kinds[node.is_dedicated]
                    counts[COUNTED.get(node.state, "unknown")] += 1
                    counts["total"] += 1
                rows.append({"poolId": pool.id, "dedicated": kinds[True], "lowPriority": kinds[False]})
        items, next_link = page(rows, req.query, self.emu.url, "/nodecounts")
        return self.emu.listing("poolnodecounts", items, next_link)

    def prep_release_status(self, req: Request) -> Response:
        with self.emu.store.lock:
            job = self.emu.store.jobs.get(req.params[0].lower())
            if job is None:
                raise not_found("Job", req.params[0])
            if not job.spec.get(PREP):
                raise BatchApiError(409, "JobPreparationTaskNotSpecified",
                                    "The specified job does not have a job preparation task.")
            rows = status_view(job)
        items, next_link = page(rows, req.query, self.emu.url, f"/jobs/{job.id}/jobpreparationandreleasetaskstatus")
        return self.emu.listing("jobpreparationandreleasetaskstatuslist", items, next_link)
