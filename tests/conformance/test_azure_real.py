"""The conformance scenarios on real Azure Batch (opt-in: slow, and it costs money).

Runs only with ``BATCHYARD_TEST_AZURE=1`` and real credentials in the environment:
``BATCHYARD_BATCH_URL``, ``BATCHYARD_BATCH_ACCOUNT``, ``BATCHYARD_BATCH_KEY`` and
``AZURE_STORAGE_CONNECTION_STRING`` (a real storage account: Batch nodes must reach it).
``BATCHYARD_TEST_AZURE_VM_SIZE`` (default standard_d2s_v3) sizes the session's pool,
which is created with no nodes, grown to 2 for the run and deleted at the end.

Scenarios that inspect files the command wrote on the node's own disk (pid files, marker
folders) cannot see a remote node and are skipped here; everything observable through
blobs and Batch runs unchanged.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential

from batchyard.backends import get_backend
from batchyard.backends.base import Backend
from batchyard.core.config import load_config
from batchyard.core.job import Job

from .scenarios import BackendScenarios, Harness
from .test_azure_emulator import IMAGE

REQUIRED = ("BATCHYARD_BATCH_URL", "BATCHYARD_BATCH_ACCOUNT", "BATCHYARD_BATCH_KEY", "AZURE_STORAGE_CONNECTION_STRING")
pytestmark = [
    pytest.mark.azure,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.environ.get("BATCHYARD_TEST_AZURE") != "1" or not all(os.environ.get(v) for v in REQUIRED),
                       reason="real Azure: set BATCHYARD_TEST_AZURE=1 and " + ", ".join(REQUIRED)),
]
NODE_LOCAL = "reads files the command wrote on the node's disk, which a remote Batch node does not share"


@pytest.fixture(scope="session")
def real_pool() -> Iterator[tuple[BatchClient, str]]:
    client = BatchClient(os.environ["BATCHYARD_BATCH_URL"], AzureNamedKeyCredential(
        os.environ["BATCHYARD_BATCH_ACCOUNT"], os.environ["BATCHYARD_BATCH_KEY"]))
    pool_id = f"batchyard-conformance-{uuid.uuid4().hex[:8]}"
    client.create_pool(bm.BatchPoolCreateOptions(
        id=pool_id, vm_size=os.environ.get("BATCHYARD_TEST_AZURE_VM_SIZE", "standard_d2s_v3"),
        target_dedicated_nodes=0, task_slots_per_node=1,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04")))
    try:
        yield client, pool_id
    finally:
        client.begin_delete_pool(pool_id)
        client.close()


class RealAzureHarness(Harness):
    name = "azure-real"

    def __init__(self, project: Any, client: BatchClient, pool_id: str) -> None:
        super().__init__(project)
        self.client, self.pool_id = client, pool_id
        toml = project.dir / "batchyard.toml"
        toml.write_text(toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
                        + f'[azure]\npool_id = "{pool_id}"\npoll_interval = 5\n', encoding="utf-8")

    def backend(self) -> Backend:
        return get_backend("azure", load_config(self.project.dir / "batchyard.toml", env=dict(os.environ)))

    def _nodes(self, count: int) -> None:
        pool = self.client.get_pool(self.pool_id)
        if pool.target_dedicated_nodes != count:
            self.client.begin_resize_pool(self.pool_id, bm.BatchPoolResizeOptions(target_dedicated_nodes=count),
                                          polling_interval=15).result(timeout=1800)

    def execute(self, be: Backend, job: Job, before_start: Callable[[], None] | None, timeout: float) -> None:
        if before_start is not None:
            self._nodes(0)  # only this scenario pays for a shrink: nothing may start before before_start
        self.last_submit = be.submit(job)
        if before_start is not None:
            before_start()
        self._nodes(2)
        be.wait(job.id, timeout=max(timeout, 900), poll_interval=5)


class TestAzureReal(BackendScenarios):
    @pytest.fixture
    def harness(self, project: Any, real_pool: tuple[BatchClient, str]) -> Harness:
        return RealAzureHarness(project, *real_pool)

    @pytest.mark.skip(reason=NODE_LOCAL)
    def test_retry_then_success(self) -> None: ...

    @pytest.mark.skip(reason=NODE_LOCAL)
    def test_timeout_kills_the_whole_tree(self) -> None: ...

    @pytest.mark.skip(reason=NODE_LOCAL)
    def test_resubmit_runs_only_failed(self) -> None: ...
