"""How a run ends on the azure backend, whatever ends it: no Batch job left active, no per-job pool left billing.

Every task final (succeeded or not), a pool on which nothing can run, Ctrl-C in ``run``, or
``cancel``: each terminates the run's Batch job (its task records stay; a terminated job no longer
counts against the account's active-job quota) and releases the pool batchyard made for the job
(``by-<job id>``): deleted, unless ``[azure] keep_auto_pool = true`` keeps it. A pool named by
``[azure] pool_id`` is shared and left as it is. Before deleting, the pool's shape and node-hours
are kept in the job's run record (:mod:`batchyard.backends.azure.runs`), for ``status`` and the
report once the pool is gone.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from batchyard.backends.azure.nodes import NodeWatch, node_hours
from batchyard.backends.azure.pools import PoolManager, per_job_pool_id
from batchyard.backends.azure.runs import BatchRun, PoolUsage, RunChain, RunRecords, now_iso
from batchyard.backends.azure.tasks import batch_error, enum_text, error_code
from batchyard.backends.base import PoolSummary
from batchyard.backends.documents import JobDocuments
from batchyard.core.config import Config
from batchyard.core.errors import JobNotFoundError

log = logging.getLogger(__name__)
TERMINATE_WAIT_S = 30
# A run's end waits for its Batch job to leave `terminating` (seconds on Azure): asked every quarter
# second, the wait ends that much after it, not up to a second later.
TERMINATE_POLL_S = 0.25


class RunEnds:
    """Terminate a run's Batch job and release its per-job pool; describe the pool for ``status``."""

    def __init__(self, client: Any, pools: PoolManager, nodes: NodeWatch, runs: RunRecords, config: Config) -> None:
        self.client = client
        self.pools = pools
        self.nodes = nodes
        self.runs = runs
        self.config = config

    def terminate(self, batch_job_id: str, reason: str) -> bool:
        """Terminate the Batch job (already ended is fine); False when it does not exist."""
        # azure-batch 15.1.0 sends no Content-Type without options (and the serializer fails on it),
        # so options are always given; the class is not exported from azure.batch.models.
        from azure.batch.models._models import BatchJobTerminateOptions

        try:
            poller = self.client.begin_terminate_job(batch_job_id, BatchJobTerminateOptions(termination_reason=reason),
                                                     polling_interval=TERMINATE_POLL_S)
            poller.wait(TERMINATE_WAIT_S)
        except ResourceNotFoundError:
            return False
        except HttpResponseError as exc:
            if error_code(exc) not in ("JobCompleted", "JobBeingTerminated"):
                raise batch_error(exc, f"terminating job {batch_job_id!r}") from None
        return True

    def end(self, chain: RunChain, reason: str) -> bool:
        """End the chain's current run; False when its Batch job did not exist."""
        found = self.terminate(chain.current.batch_job_id, reason)
        usage = self.release_pool(chain)
        if usage is not None:
            log.info("job %s: %s", chain.job_id, fate_text(usage))
        return found

    def release_pool(self, chain: RunChain) -> PoolUsage | None:
        """Delete (or keep) the job's per-job pool, recording its shape and node-hours first."""
        pool_id = per_job_pool_id(chain.job_id)
        record = self.pools.get_record(pool_id)
        if record is None or record.job_id != chain.job_id:
            return None  # none made for this job, or a shared pool: not batchyard's to release here
        pool = self.pools.get(pool_id)
        if pool is None:
            self.pools.forget(pool_id)
            return None
        nodes = self.nodes.nodes(pool_id)
        dedicated, spot = node_hours(nodes, time.time())
        keep = self.config.azure.keep_auto_pool
        usage = PoolUsage(pool_id=pool_id, vm_size=str(pool.vm_size or ""),
                          nodes=int(pool.target_dedicated_nodes or 0) + int(pool.target_low_priority_nodes or 0),
                          slots_per_node=int(pool.task_slots_per_node or 1), dedicated_hours=round(dedicated, 4),
                          spot_hours=round(spot, 4), ended_at=now_iso(), fate="kept" if keep else "deleted")
        if not keep:
            self.pools.delete(pool_id)
        chain.update_current(pool_id=pool_id, usage=usage)
        self.runs.save(chain)
        return usage

    def run_started(self, run: BatchRun) -> str:
        """When the run's Batch job was created, by Batch's clock (the clock of its tasks' times; this
        machine's may be off by seconds), else when batchyard opened the run."""
        try:
            created = self.client.get_job(run.batch_job_id, select=["creationTime"]).creation_time
        except Exception:  # gone, or unreachable: the run's own record answers
            created = None
        return created.isoformat() if created is not None else run.opened_at

    def summary(self, chain: RunChain, pool_id: str | None) -> PoolSummary | None:
        """The pool of the chain's current run: live from Batch, else as recorded when it was released."""
        run = chain.current
        pool_id = pool_id or run.pool_id
        record = self.pools.get_record(pool_id) if pool_id else None
        per_job = record is not None and record.job_id == chain.job_id
        pool = self.pools.get(pool_id) if pool_id else None
        if pool is not None and enum_text(pool.state) != "deleting":
            nodes = self.nodes.nodes(pool.id)
            dedicated, spot = node_hours(nodes, time.time())
            kept = run.usage is not None and run.usage.fate == "kept"  # the run ended; its pool stays
            return PoolSummary(
                pool_id=pool.id, state="kept" if kept else enum_text(pool.state), vm_size=str(pool.vm_size or ""),
                nodes=len(nodes),
                target_nodes=int(pool.target_dedicated_nodes or 0) + int(pool.target_low_priority_nodes or 0),
                slots_per_node=int(pool.task_slots_per_node or 1),
                node_states=dict(Counter(enum_text(n.state) for n in nodes)),
                dedicated_hours=round(dedicated, 4), spot_hours=round(spot, 4), per_job=per_job,
                run_started_at=self.run_started(run))
        usage = run.usage
        if usage is None:
            return None
        return PoolSummary(pool_id=usage.pool_id, state=usage.fate, vm_size=usage.vm_size, nodes=usage.nodes,
                           target_nodes=usage.nodes, slots_per_node=usage.slots_per_node, node_states={},
                           dedicated_hours=usage.dedicated_hours, spot_hours=usage.spot_hours, per_job=True,
                           run_started_at=self.run_started(run))


def fate_text(usage: PoolUsage) -> str:
    hours = usage.dedicated_hours + usage.spot_hours
    if usage.fate == "kept":
        return (f"pool {usage.pool_id} kept ([azure] keep_auto_pool = true; {hours:.2f} node-hours so far): it bills "
                f"until `batchyard pool delete {usage.pool_id}`")
    return f"pool {usage.pool_id} deleted ({usage.nodes} x {usage.vm_size}, {hours:.2f} node-hours)"


def delete_job(client: Any, pools: PoolManager, documents: JobDocuments, batch_job_ids: list[str],
               job_id: str) -> None:
    """Delete every Batch job of ``job_id``'s chain, the pool batchyard made for it, and its documents."""
    found = False
    for batch_job_id in batch_job_ids:
        try:
            client.begin_delete_job(batch_job_id, polling_interval=1).wait(60)
            found = True
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            if error_code(exc) != "JobBeingDeleted":
                raise batch_error(exc, f"deleting job {batch_job_id!r}") from None
            found = True
    record = pools.get_record(per_job_pool_id(job_id))
    if record is not None and record.job_id == job_id:
        pools.delete(record.pool_id)
    if documents.has_job(job_id):
        found = True
        documents.delete_documents(job_id)
    if not found:
        raise JobNotFoundError(f"job {job_id!r} not found on Azure Batch nor on storage account "
                               f"{documents.storage.account.account_name!r}")


__all__ = ["RunEnds", "delete_job", "fate_text"]
