"""Pools for the azure backend: use an existing one, create a named one, or a per-job one.

Every pool batchyard creates is recorded as ``<system container>/pools/<pool id>.json`` on the
configured storage account, so ``batchyard pool delete`` can refuse pools it did not create
(someone else's pool may run someone else's work).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from batchyard.backends.azure.registries import ContainerSetup
from batchyard.backends.azure.tasks import WEEK, batch_error, enum_text, error_code
from batchyard.backends.base import PoolView
from batchyard.core.config import Config, PoolSection
from batchyard.core.errors import BackendError, ConfigError
from batchyard.core.job import parse_duration
from batchyard.core.redact import redact
from batchyard.storage.account import Storage

log = logging.getLogger(__name__)

PER_JOB_PREFIX = "by-"
MAX_POOL_ID = 64
CREATED_BY = "batchyard"
# Where a start task's files go in the system container: named by content, so each is uploaded once.
START_FILES_PREFIX = "pool-files/"


def per_job_pool_id(job_id: str) -> str:
    """``by-<job id>``, shortened with a hash of the full id when it would pass 64 characters."""
    plain = f"{PER_JOB_PREFIX}{job_id}"
    if len(plain) <= MAX_POOL_ID:
        return plain
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:10]
    room = MAX_POOL_ID - len(PER_JOB_PREFIX) - len(digest) - 1
    return f"{PER_JOB_PREFIX}{job_id[:room].rstrip('-_')}-{digest}"


@dataclass(frozen=True)
class PoolRecord:
    """What batchyard remembers about a pool it created."""

    pool_id: str
    job_id: str | None  # set for a per-job pool (deleted with its job)
    created_at: str
    batch_url: str

    def to_json(self) -> bytes:
        return json.dumps({"pool_id": self.pool_id, "job_id": self.job_id, "created_at": self.created_at,
                           "batch_url": self.batch_url, "created_by": CREATED_BY}).encode()


def start_task_command(section: PoolSection) -> str | None:
    """The pool start task: the user's command, then ``pip install`` of ``requirements``.

    Runs as the pool's admin auto-user, so it can install pip where the image lacks it; PEP 668
    images (Ubuntu 24.04) need ``--break-system-packages`` for a system-wide install.
    """
    steps: list[str] = []
    if section.start_task:
        steps.append(section.start_task)
    if section.requirements:
        reqs = " ".join(shlex.quote(r) for r in section.requirements)
        steps.append("(python3 -m pip --version >/dev/null 2>&1 || "
                     "(apt-get update -qq && apt-get install -y -qq python3-pip))")
        steps.append(f"python3 -m pip install --quiet --break-system-packages {reqs}")
    if not steps:
        return None
    return shlex.join(["/bin/sh", "-c", "set -e; " + " && ".join(steps)])


def start_file_blob(path: Path, data: bytes) -> str:
    """``pool-files/<sha256 of the content>/<file name>``: the same file is uploaded once, a changed one anew."""
    return f"{START_FILES_PREFIX}{hashlib.sha256(data).hexdigest()}/{path.name}"


def pool_options(pool_id: str, section: PoolSection, *, job_id: str | None,
                 containers: ContainerSetup | None = None,
                 start_files: list[bm.ResourceFile] | None = None) -> bm.BatchPoolCreateOptions:
    command = start_task_command(section)
    start = None
    if command:
        start = bm.BatchStartTask(
            command_line=command, wait_for_success=True, max_task_retry_count=1, resource_files=start_files or None,
            user_identity=bm.UserIdentity(auto_user=bm.AutoUserSpecification(
                scope=bm.AutoUserScope.POOL, elevation_level=bm.ElevationLevel.ADMIN)),
        )
    autoscale = bool(section.autoscale_formula)
    metadata = [bm.BatchMetadataItem(name="created-by", value=CREATED_BY)]
    if job_id:
        metadata.append(bm.BatchMetadataItem(name="batchyard-job", value=job_id))
    return bm.BatchPoolCreateOptions(
        id=pool_id, vm_size=section.vm_size,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(
                publisher=section.image_publisher, offer=section.image_offer, sku=section.image_sku,
                version=section.image_version),
            node_agent_sku_id=section.node_agent_sku_id,
            # Container tasks need a container-enabled pool; listing the image prefetches it on each node,
            # which for a private image needs the registry's credentials here too.
            container_configuration=bm.BatchContainerConfiguration(
                type=bm.ContainerType.DOCKER_COMPATIBLE, container_image_names=[containers.image],
                container_registries=list(containers.pool_registries) or None,
            ) if containers else None),
        # Batch refuses target node counts together with an autoscale formula.
        target_dedicated_nodes=None if autoscale else section.dedicated_nodes,
        target_low_priority_nodes=None if autoscale else section.spot_nodes,
        enable_auto_scale=autoscale or None,
        auto_scale_formula=section.autoscale_formula if autoscale else None,
        auto_scale_evaluation_interval=timedelta(seconds=parse_duration(section.autoscale_evaluation_interval))
        if autoscale else None,
        resize_timeout=None if autoscale else timedelta(seconds=parse_duration(section.resize_timeout)),
        task_slots_per_node=section.task_slots_per_node, start_task=start, metadata=metadata,
    )


class PoolManager:
    """Pool lifecycle on one Batch account, with records on the configured storage account."""

    def __init__(self, client: Any, storage: Storage, config: Config) -> None:
        self.client = client
        self.storage = storage
        self.config = config
        self.container = config.storage.system_container

    # --- records -----------------------------------------------------------------------------------
    @staticmethod
    def record_blob(pool_id: str) -> str:
        return f"pools/{pool_id.lower()}.json"  # Batch pool ids are case-insensitive

    def record(self, pool_id: str, *, job_id: str | None) -> None:
        self.storage.ensure_container(self.container)
        rec = PoolRecord(pool_id=pool_id, job_id=job_id, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                         batch_url=self.config.azure.batch_url or "")
        self.storage.upload_bytes(self.container, self.record_blob(pool_id), rec.to_json())

    def get_record(self, pool_id: str) -> PoolRecord | None:
        try:
            data = json.loads(self.storage.download_bytes(self.container, self.record_blob(pool_id)))
        except ResourceNotFoundError:
            return None
        return PoolRecord(pool_id=data["pool_id"], job_id=data.get("job_id"), created_at=data.get("created_at", ""),
                          batch_url=data.get("batch_url", ""))

    def records(self) -> Iterator[PoolRecord]:
        try:
            names = list(self.storage.list_blob_names(self.container, "pools/"))
        except BackendError:
            return
        except Exception:  # no system container yet: batchyard never created anything here
            return
        for name in names:
            rec = self.get_record(name.removeprefix("pools/").removesuffix(".json"))
            if rec is not None:
                yield rec

    def views(self) -> list[PoolView]:
        """Every pool batchyard recorded, with its state on Batch ("missing" if the pool is gone)."""
        views = []
        for rec in self.records():
            live = self.get(rec.pool_id)
            if live is None:
                state, nodes = "missing", None
            else:
                state = enum_text(live.state)
                nodes = (live.current_dedicated_nodes or 0) + (live.current_low_priority_nodes or 0)
            views.append(PoolView(pool_id=rec.pool_id, job_id=rec.job_id, created_at=rec.created_at,
                                  state=state, nodes=nodes))
        return views

    def delete_created(self, pool_id: str) -> bool:
        """Delete a pool batchyard created (False if it was gone already); refuse any other pool."""
        if self.get_record(pool_id) is None:
            raise BackendError(f"pool {pool_id!r} was not created by batchyard (no record in container "
                               f"{self.container!r}); refusing to delete it. Delete it in the Azure portal or "
                               "with the az CLI if it really is yours.")
        return self.delete(pool_id)

    def forget(self, pool_id: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.storage.container(self.container).delete_blob(self.record_blob(pool_id))

    def stage_start_files(self) -> list[bm.ResourceFile]:
        """The config's pool start files as resource files: each uploaded unless a blob of the same content
        is there already, and given to Batch as a read-only SAS URL to that one blob. The URL lives a week:
        the start task runs again whenever a node joins or restarts, long after the submit."""
        staged = []
        for path in self.config.pool_start_files:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise BackendError(f"pool start file {str(path)!r}: cannot read it ({exc.strerror})") from None
            blob = start_file_blob(Path(path), data)
            self.storage.ensure_container(self.container)
            if self.storage.blob_md5(self.container, blob) is None:
                self.storage.upload_bytes(self.container, blob, data)
            url = self.storage.blob_sas_url(self.container, blob, expiry=WEEK, permission="r")
            staged.append(bm.ResourceFile(http_url=url, file_path=Path(path).name))
        return staged

    # --- Batch -------------------------------------------------------------------------------------
    def exists(self, pool_id: str) -> bool:
        # Not pool_exists(): in azure-batch 15.1.0 it raises ResourceNotFoundError on 404 instead of
        # returning False, and first logs a deserialization traceback for the HEAD answer's empty body,
        # which would reach the user's terminal. A GET's 404 carries a proper error body.
        try:
            self.client.get_pool(pool_id, select=["id"])
            return True
        except ResourceNotFoundError:
            return False
        except Exception as exc:
            raise batch_error(exc, f"checking pool {pool_id!r}") from None

    def get(self, pool_id: str) -> bm.BatchPool | None:
        try:
            return self.client.get_pool(pool_id)
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise batch_error(exc, f"reading pool {pool_id!r}") from None

    def create(self, pool_id: str, section: PoolSection, *, job_id: str | None,
               containers: ContainerSetup | None = None) -> bool:
        """Create the pool (recorded first, so a crash never leaves an unrecorded pool); False if it existed."""
        if containers is not None and containers.pool_refusal:
            raise ConfigError(containers.pool_refusal)
        start_files = self.stage_start_files()
        self.record(pool_id, job_id=job_id)
        try:
            self.client.create_pool(pool_options(pool_id, section, job_id=job_id, containers=containers,
                                                 start_files=start_files))
        except HttpResponseError as exc:
            if error_code(exc) == "PoolExists":
                return False
            self.forget(pool_id)
            raise batch_error(exc, f"creating pool {pool_id!r} ({section.vm_size})") from None
        except Exception as exc:
            self.forget(pool_id)
            raise batch_error(exc, f"creating pool {pool_id!r}") from None
        log.info("created pool %s (%s, %d dedicated + %d spot nodes)", pool_id, section.vm_size,
                 section.dedicated_nodes, section.spot_nodes)
        return True

    def resolve(self, job_id: str, *, containers: ContainerSetup | None = None) -> tuple[str, bool]:
        """The pool the job runs on, creating it if batchyard should; returns (pool id, created now)."""
        azure = self.config.azure
        if azure.pool_id:
            if self.usable(azure.pool_id):
                return azure.pool_id, False
            if azure.pool is None:
                raise BackendError(f"pool {azure.pool_id!r} ([azure] pool_id) does not exist on Azure Batch; "
                                   "create it, or add an [azure.pool] section so batchyard creates it")
            return azure.pool_id, self.create(azure.pool_id, azure.pool, job_id=None, containers=containers)
        pool_id = per_job_pool_id(job_id)
        if self.usable(pool_id):
            return pool_id, False
        return pool_id, self.create(pool_id, azure.pool or PoolSection(), job_id=job_id, containers=containers)

    def usable(self, pool_id: str) -> bool:
        """Whether the pool exists and is not being deleted; a pool being deleted is waited for (a run's end
        deletes the per-job pool, and Batch refuses a new pool with the id of one it still deletes)."""
        deadline = time.monotonic() + parse_duration(self.config.azure.steady_timeout)
        while True:
            pool = self.get(pool_id)
            if pool is None:
                return False
            if enum_text(pool.state) != "deleting":
                return True
            if time.monotonic() >= deadline:
                raise BackendError(f"pool {pool_id!r} is still being deleted after {self.config.azure.steady_timeout} "
                                   "([azure] steady_timeout); run again once it is gone")
            time.sleep(self.config.azure.poll_interval)

    def resize_errors(self, pool: bm.BatchPool) -> str | None:
        errors = pool.resize_errors or []
        if not errors:
            return None
        text = "; ".join(f"{e.code}: {e.message}" for e in errors)
        return redact(f"pool {pool.id!r} could not get its nodes: {text} (quota or capacity: check the Batch "
                      "account's core quota for this VM size, or use another vm_size/region)")

    def wait_steady(self, pool_id: str, *, timeout_s: float, poll_s: float = 2.0) -> bm.BatchPool:
        """Wait until the pool's allocation is steady; raise with its resize errors (quota, capacity)."""
        deadline = time.monotonic() + timeout_s
        while True:
            pool = self.get(pool_id)
            if pool is None:
                raise BackendError(f"pool {pool_id!r} disappeared while waiting for its nodes")
            problem = self.resize_errors(pool)
            if problem:
                raise BackendError(problem)
            if enum_text(pool.allocation_state) == "steady":
                return pool
            if time.monotonic() >= deadline:
                raise BackendError(f"pool {pool_id!r} still resizing after {timeout_s:.0f} s "
                                   "([azure] steady_timeout); its tasks stay queued")
            time.sleep(poll_s)

    def delete(self, pool_id: str, *, wait_s: float = 0.0) -> bool:
        """Delete the pool and its record; False if it was already gone."""
        existed = True
        try:
            poller = self.client.begin_delete_pool(pool_id, polling_interval=1)
            if wait_s:
                poller.wait(wait_s)
        except ResourceNotFoundError:
            existed = False
        except HttpResponseError as exc:
            if error_code(exc) != "PoolBeingDeleted":
                raise batch_error(exc, f"deleting pool {pool_id!r}") from None
        self.forget(pool_id)
        return existed
