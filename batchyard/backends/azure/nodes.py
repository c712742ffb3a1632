"""Whether a pool has a node that can take tasks, and why not: what ``run`` watches while it waits.

Batch schedules tasks only on nodes that are ``idle`` or ``running``. A start task that fails
(with ``waitForSuccess``, batchyard's setting) leaves its node in ``starttaskfailed`` for good;
``unusable`` nodes stay so until someone reboots or removes them. When every node of the pool
is in one of those two states, nothing will ever run: the watch says so at once, with the start
task's exit code and the tail of its ``stderr.txt`` read through the node files API
(``GET /pools/{pool}/nodes/{node}/files/startup/stderr.txt``, with a byte range).

A pool with no node at all (or only preempted, offline or deallocated ones) may still get
some: that is only a problem once it lasts longer than the pool's resize timeout (or
``[azure] steady_timeout`` when shorter), counted from when this process first saw it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batchyard.backends.azure.tasks import batch_error, enum_text
from batchyard.core.batch_semantics import tail_offset, tail_text
from batchyard.core.redact import redact

log = logging.getLogger(__name__)

USABLE = frozenset({"idle", "running"})
FAILED = frozenset({"starttaskfailed", "unusable"})
# States a node leaves on its own, towards idle (or towards starttaskfailed).
COMING = frozenset({"creating", "starting", "waitingforstarttask", "rebooting", "reimaging", "upgradingos",
                    "unknown"})
START_TASK_STDERR = "startup/stderr.txt"
NODE_SELECT = ["id", "state", "startTaskInfo", "isDedicated", "allocationTime"]
STDERR_TAIL_LINES = 12


@dataclass
class NodeWatch:
    """Reads a pool's nodes; :meth:`problem` answers why none can take tasks (None while some can)."""

    client: Any
    _empty_since: dict[str, float] = field(default_factory=dict)
    _warned: set[str] = field(default_factory=set)

    def nodes(self, pool_id: str) -> list[Any]:
        try:
            return list(self.client.list_nodes(pool_id, select=NODE_SELECT))
        except Exception as exc:
            raise batch_error(exc, f"listing the nodes of pool {pool_id!r}") from None

    def problem(self, pool: Any, *, grace_s: float) -> str | None:
        """Why no node of ``pool`` can take tasks, or None; an empty pool is a problem after ``grace_s``."""
        nodes = self.nodes(pool.id)
        states = Counter(enum_text(n.state) for n in nodes)
        if any(states[s] for s in USABLE):
            self._empty_since.pop(pool.id, None)
            self._warn_failed_nodes(pool.id, nodes)
            return None
        failed = [n for n in nodes if enum_text(n.state) in FAILED]
        if nodes and failed and not any(states[s] for s in COMING):
            return self._failed_message(pool, nodes, failed, states)
        if any(states[s] for s in COMING) or enum_text(pool.allocation_state) != "steady":
            self._empty_since.pop(pool.id, None)
            return None
        since = self._empty_since.setdefault(pool.id, time.monotonic())
        waited = time.monotonic() - since
        if waited < grace_s:
            return None
        listed = ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "none"
        return (f"pool {pool.id!r} has had no node that can take tasks for {waited:.0f} s (nodes: {listed}; "
                f"target {pool.target_dedicated_nodes or 0} dedicated + {pool.target_low_priority_nodes or 0} spot): "
                "nothing will run; check the pool's size and the account's core quota")

    def _failed_message(self, pool: Any, nodes: list[Any], failed: list[Any], states: Counter[str]) -> str:
        listed = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        first = next((n for n in failed if enum_text(n.state) == "starttaskfailed"), failed[0])
        text = (f"pool {pool.id!r}: no node can take tasks ({len(nodes)} node(s): {listed}); "
                f"node {first.id} is {enum_text(first.state)}")
        if enum_text(first.state) == "starttaskfailed":
            info = first.start_task_info
            exit_code = getattr(info, "exit_code", None)
            failure = getattr(info, "failure_info", None)
            if exit_code is not None:
                text += f": its start task exited with code {exit_code}"
            elif failure is not None:
                text += f": its start task failed ({failure.code}: {failure.message})"
            tail = self.start_task_stderr(pool.id, first.id)
            text += (f"; the start task's stderr ends with:\n{tail}" if tail
                     else "; its start task wrote nothing to stderr")
        else:
            text += " (Batch marks a node unusable after errors it cannot recover from; reboot or remove it)"
        return redact(text)

    def start_task_stderr(self, pool_id: str, node_id: str) -> str:
        """The last lines of the node's start task stderr ("" when the node has none)."""
        try:
            props = self.client.get_node_file_properties(pool_id, node_id, START_TASK_STDERR)
            size = int(props.content_length or 0)
            if not size:
                return ""
            start = tail_offset(size)
            data = b"".join(self.client.download_node_file(pool_id, node_id, START_TASK_STDERR,
                                                           ocp_range=f"bytes={start}-{size - 1}"))
        except Exception as exc:  # the message stays useful without the tail
            log.info("could not read the start task stderr of node %s: %s", node_id, type(exc).__name__)
            return ""
        lines = tail_text(data).rstrip("\n").splitlines()[-STDERR_TAIL_LINES:]
        return "\n".join(f"  {line}" for line in lines)

    def _warn_failed_nodes(self, pool_id: str, nodes: list[Any]) -> None:
        for node in nodes:
            if enum_text(node.state) in FAILED and node.id not in self._warned:
                self._warned.add(node.id)
                log.warning("pool %s: node %s is %s (the other nodes keep running tasks)", pool_id, node.id,
                            enum_text(node.state))


def node_hours(nodes: list[Any], now: float) -> tuple[float, float]:
    """(dedicated, spot) node-hours of the nodes listed, from each one's allocation time to ``now``."""
    dedicated = spot = 0.0
    for node in nodes:
        allocated = getattr(node, "allocation_time", None)
        if allocated is None:
            continue
        hours = max(0.0, now - allocated.timestamp()) / 3600
        if getattr(node, "is_dedicated", True) is False:
            spot += hours
        else:
            dedicated += hours
    return dedicated, spot


__all__ = ["NodeWatch", "node_hours"]
