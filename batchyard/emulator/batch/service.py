"""What the operation handlers (``ops_pools``, ``ops_jobs``, ``ops_tasks``) need of the emulator.

:class:`~batchyard.emulator.batch.server.BatchEmulator` builds the handlers and hands itself to
them; they see it through :class:`BatchService` only, so the server imports the handlers and no
handler imports the server (no import circle, type-only imports included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from batchyard.emulator.batch.faults import FaultState
    from batchyard.emulator.batch.protocol import Response
    from batchyard.emulator.batch.scheduler import Engine
    from batchyard.emulator.batch.state import Pool, Store


class PoolCreator(Protocol):
    """Pool creation, which a job with an auto pool needs from the pool handlers."""

    def add_pool(self, body: dict[str, Any], auto_for_job: str | None = None) -> Pool:
        """Create a pool and its nodes from a checked request body; the caller holds the store's lock."""
        ...


class BatchService(Protocol):
    """The emulator as its operation handlers see it."""

    @property
    def url(self) -> str:
        """The account URL (``http://127.0.0.1:<port>``) that resources' ``url`` fields start with."""
        ...

    @property
    def store(self) -> Store:
        """Pools, jobs and tasks, with the lock that guards them."""
        ...

    @property
    def engine(self) -> Engine:
        """The scheduler that runs tasks on the emulated nodes."""
        ...

    @property
    def faults(self) -> FaultState:
        """The injected faults and quotas in force."""
        ...

    @property
    def pools(self) -> PoolCreator:
        """The pool handlers (a job's auto pool is created through them)."""
        ...

    def listing(self, kind: str, items: list[dict[str, Any]], next_link: str | None) -> Response:
        """One page of a list operation, in Batch's OData envelope."""
        ...
