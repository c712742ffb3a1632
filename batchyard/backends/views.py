"""What ``batchyard pool list`` and ``status`` show of a backend's pools (re-exported by
:mod:`batchyard.backends.base`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PoolView:
    """A pool a backend created, as ``batchyard pool list`` shows it."""

    pool_id: str
    job_id: str | None  # set for a per-job pool (deleted with its job); None for a shared one
    created_at: str
    state: str  # the pool's state on the service, or "missing" when only batchyard's record is left
    nodes: int | None  # None when the pool is missing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PoolSummary:
    """The pool a job runs on (or last ran on), as ``status`` shows it, with its node-hours so far."""

    pool_id: str
    state: str  # the pool's state on the service; "deleted" or "kept" once batchyard released it at a run's end
    vm_size: str
    nodes: int  # nodes now (at release, for a released pool)
    target_nodes: int
    slots_per_node: int
    node_states: dict[str, int]
    dedicated_hours: float
    spot_hours: float
    per_job: bool  # batchyard made it for this job alone (so a run's end deletes it)
    run_started_at: str = ""  # ISO 8601: when the job's run on it began (the report's wall time starts there)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
