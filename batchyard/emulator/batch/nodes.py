"""Emulated compute nodes: allocation, removal, the pool start task.

A node is a directory ``data_dir/nodes/<pool>/<node>`` laid out like a Batch node's
``$AZ_BATCH_NODE_ROOT_DIR`` plus ``taskSlotsPerNode`` slots; every task (and the start
task) runs through the shared runner, so commands see the same world as under the local
backend. Nodes join and leave at once, but the pool shows Azure's transitional states for a
short while (``resizing``, ``stopping``, ``deleting``; a new node ``starting``): see
:mod:`batchyard.emulator.batch.transitions`.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchyard.core.batch_semantics import batch_failure, staging_code
from batchyard.core.errors import BatchyardError
from batchyard.emulator.batch.common import iso, utcnow
from batchyard.emulator.batch.faults import FaultState
from batchyard.emulator.batch.state import Node, Pool, Store, Task
from batchyard.emulator.batch.transitions import Timing, settle_at, settled
from batchyard.emulator.batch.translate import StagingError, exit_code, expand_resource_files, failure_info, task_spec
from batchyard.node.runner import run_task
from batchyard.node.taskspec import NodeContext
from batchyard.storage.account import Storage
from batchyard.storage.transfer import BlobTransfer

log = logging.getLogger("batchyard.emulator.batch")
# Azure's resizeErrors after a stop-resize, one per node kind the stopped resize was changing.
RESIZE_STOPPED = {
    "targetDedicatedNodes": "Desired number of dedicated nodes could not be allocated due to a stop resize operation",
    "targetLowPriorityNodes": "Desired number of low priority nodes could not be allocated due to a stop resize "
                              "operation",
}


@dataclass(frozen=True)
class StartTaskNode(NodeContext):
    """Batch runs the start task in ``$AZ_BATCH_NODE_STARTUP_DIR`` (cwd ``startup/wd``)."""

    def task_dir(self, job_id: str, task_id: str) -> Path:
        return self.root / "startup"


class NodeManager:
    """Pool sizing and node lifecycle; the scheduler (a subclass) adds task execution."""

    def __init__(self, store: Store, *, data_dir: Path, account_name: str, account_url: str,
                 storage: Storage | None, transfer: BlobTransfer, faults: FaultState,
                 timing: Timing | None = None) -> None:
        self.store = store
        self.timing = timing or Timing()
        self.data_dir = data_dir
        self.account_name = account_name
        self.account_url = account_url
        self.storage = storage
        self.transfer = transfer
        self.faults = faults
        self.stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()

    # --- threads ----------------------------------------------------------------------------------
    def spawn(self, name: str, target: Any, *args: Any) -> None:
        def body() -> None:
            try:
                target(*args)
            except Exception:  # a bug here must not kill the emulator silently
                log.exception("emulator thread %s failed", name)
            finally:
                with self._threads_lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=body, name=name, daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()

    def join_threads(self, timeout: float) -> None:
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def node_context(self, node: Node) -> NodeContext:
        return NodeContext(root=node.root, node_id=node.id, pool_id=node.pool_id, account_name=self.account_name,
                           account_url=self.account_url, is_dedicated=node.is_dedicated)

    # --- sizing -----------------------------------------------------------------------------------
    def resize(self, pool: Pool) -> None:
        """Bring the pool's live nodes to its targets (caller holds the lock); ``resizing`` for a while."""
        changing = []
        for dedicated, key in ((True, "targetDedicatedNodes"), (False, "targetLowPriorityNodes")):
            target = int(pool.spec.get(key) or 0)
            live = [n for n in pool.nodes.values() if not n.removed and n.is_dedicated == dedicated]
            if target != len(live):
                changing.append(key)
            for _ in range(target - len(live)):
                self.add_node(pool, dedicated)
            if len(live) > target:
                # Idle nodes go first; busy ones requeue their tasks (nodeDeallocationOption requeue).
                live.sort(key=lambda n: (len(n.running), n.id))
                for node in live[: len(live) - target]:
                    self.remove_node(pool, node, reason="requeue")
        self.begin_allocation(pool, tuple(changing))
        pool.touch()
        self.store.changed.notify_all()

    def begin_allocation(self, pool: Pool, changing: tuple[str, ...]) -> None:
        """``resizing`` until the resize settles (a new resize clears the last one's errors, as on Azure)."""
        pool.resize_errors, pool.resizing = [], changing
        self._allocation(pool, "resizing", settle_at(self.timing.resize_s))

    def stop_resize(self, pool: Pool) -> None:
        """``stopping``, then ``steady`` with a ``ResizeStopped`` error per node kind the resize was changing."""
        if pool.allocation_state == "resizing":
            self._allocation(pool, "stopping", settle_at(self.timing.stop_resize_s))

    def _allocation(self, pool: Pool, state: str, until: float | None) -> None:
        if until is None:
            self._settle_allocation(pool, state)
            return
        pool.allocation_state, pool.allocation_time, pool.settle_at = state, utcnow(), until

    def _settle_allocation(self, pool: Pool, state: str) -> None:
        if state == "stopping":
            pool.resize_errors = [{"code": "ResizeStopped", "message": RESIZE_STOPPED[key]} for key in pool.resizing]
        pool.allocation_state, pool.allocation_time, pool.settle_at, pool.resizing = "steady", utcnow(), None, ()

    def settle_pools(self) -> None:
        """End the pools' and nodes' transitional states whose time is up (caller holds the lock)."""
        for pool in list(self.store.pools.values()):
            if pool.allocation_state in ("resizing", "stopping") and settled(pool.settle_at):
                self._settle_allocation(pool, pool.allocation_state)
            if pool.state == "deleting" and settled(pool.gone_at) and self.store.pools.get(pool.id.lower()) is pool:
                del self.store.pools[pool.id.lower()]
            for node in list(pool.nodes.values()):
                if node.state == "starting" and node.ready_at is not None and settled(node.ready_at):
                    node.ready_at = None
                    self._boot(pool, node)

    def finish_transitions(self, kinds: tuple[str, ...]) -> None:
        """End at once the pending transitions of these kinds (``pools``, ``nodes``): for tests."""
        for pool in self.store.pools.values():
            if "pools" in kinds:
                pool.settle_at = 0.0 if pool.settle_at is not None else None
                pool.gone_at = 0.0 if pool.gone_at is not None else None
            for node in pool.nodes.values() if "nodes" in kinds else ():
                node.ready_at = 0.0 if node.ready_at is not None else None
        self.settle_pools()
        self.store.changed.notify_all()

    def add_node(self, pool: Pool, dedicated: bool) -> Node:
        n = next(pool.node_seq)
        node_id = f"tvm-{secrets.randbelow(10**10):010d}_{n + 1}-{utcnow():%Y%m%dt%H%M%Sz}"
        root = self.data_dir / "nodes" / pool.id / node_id
        for sub in ("shared", "startup", "workitems"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        node = Node(id=node_id, pool_id=pool.id, root=root, is_dedicated=dedicated,
                    slots=int(pool.spec.get("taskSlotsPerNode") or 1), index=n)
        pool.nodes[node_id.lower()] = node
        node.ready_at = settle_at(self.timing.node_start_s)
        if node.ready_at is None:
            self._boot(pool, node)
        return node

    def _boot(self, pool: Pool, node: Node) -> None:
        """The node has booted: it runs the pool's start task, or is idle."""
        start = pool.spec.get("startTask")
        if start:
            wait = bool(start.get("waitForSuccess", True))
            node.set_state("waitingforstarttask" if wait else "idle")
            node.start_task_info = {"state": "running", "startTime": iso(utcnow()), "retryCount": 0}
            self.spawn(f"starttask-{node.id}", self._run_start_task, pool, node, dict(start), wait)
        else:
            node.set_state("idle")
        self.store.changed.notify_all()

    def remove_node(self, pool: Pool, node: Node, *, reason: str) -> None:
        """Take a node out of the pool; its running tasks are killed and requeued."""
        node.removed = True
        node.set_state("leavingpool")
        for task in list(node.running.values()):
            self.cancel_task(task, reason)
        if not node.running:
            self._forget_node(pool, node)

    def _forget_node(self, pool: Pool, node: Node) -> None:
        pool.nodes.pop(node.id.lower(), None)
        shutil.rmtree(node.root, ignore_errors=True)

    def cancel_task(self, task: Task, reason: str) -> None:
        if task.cancel is not None and task.cancel_reason is None:
            task.cancel_reason = reason
            task.cancel.set()

    def delete_pool(self, pool: Pool) -> None:
        """``deleting`` for a while (its nodes leave at once), then gone."""
        pool.set_state("deleting")
        for node in list(pool.nodes.values()):
            self.remove_node(pool, node, reason="requeue")
        pool.gone_at = settle_at(self.timing.delete_s)
        if pool.gone_at is None:
            self.store.pools.pop(pool.id.lower(), None)
        self.store.changed.notify_all()

    # --- start task -------------------------------------------------------------------------------
    def _run_start_task(self, pool: Pool, node: Node, start: dict[str, Any], wait: bool) -> None:
        info: dict[str, Any] = {"state": "completed", "retryCount": 0}
        try:
            body = {**start, "id": "starttask", "constraints": {"maxTaskRetryCount": start.get("maxTaskRetryCount", 0)}}
            files = expand_resource_files(body, self.transfer, self.storage)
            spec = task_spec("", body, files)
            ctx = StartTaskNode(root=node.root, node_id=node.id, pool_id=pool.id, account_name=self.account_name,
                                account_url=self.account_url, is_dedicated=node.is_dedicated)
            outcome = run_task(spec, node=ctx, transfer=self.transfer, cancel=self.stopping)
            last = outcome.last
            info.update(retryCount=len(outcome.attempts) - 1, exitCode=exit_code(last),
                        result="success" if outcome.succeeded else "failure", failureInfo=failure_info(last))
        except StagingError as exc:
            info.update(result="failure", failureInfo=exc.failure.to_json())
        except BatchyardError as exc:  # the start task's files could not be staged: as for a task
            failure = batch_failure("staging_failed", code=staging_code(exc), detail=str(exc))
            info.update(result="failure", failureInfo=failure.to_json())
        with self.store.lock:
            node.start_task_info = {**(node.start_task_info or {}), **{k: v for k, v in info.items() if v is not None},
                                    "endTime": iso(utcnow())}
            if node.removed:
                return
            if wait and info["result"] != "success":
                node.set_state("starttaskfailed")
            elif node.state == "waitingforstarttask":
                node.set_state("idle")
            self.store.changed.notify_all()
