"""The conformance scenarios on the azure backend, against the Batch API emulator over HTTP.

The harness pre-creates a pool with no nodes (raw SDK), points ``[azure] pool_id`` at it,
submits, runs ``before_start`` while nothing can run yet, then gives the pool 2 nodes of
1 slot each: the same "queue first, then workers" order as the local harness.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
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

IMAGE = bm.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server", version="latest")


def raw_client(emu: Any) -> BatchClient:
    return BatchClient(emu.url, AzureNamedKeyCredential(emu.account_name, emu.account_key), retry_total=2)


def create_empty_pool(client: BatchClient, pool_id: str, *, slots: int = 1) -> None:
    client.create_pool(bm.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=0, task_slots_per_node=slots,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04"),
    ))


def resize(client: BatchClient, pool_id: str, nodes: int) -> None:
    client.begin_resize_pool(pool_id, bm.BatchPoolResizeOptions(target_dedicated_nodes=nodes),
                             polling_interval=1).wait(30)


def azure_env(project: Any, emu: Any) -> dict[str, str]:
    return {**project.env, "BATCHYARD_BATCH_URL": emu.url, "BATCHYARD_BATCH_ACCOUNT": emu.account_name,
            "BATCHYARD_BATCH_KEY": emu.account_key}


class AzureEmulatorHarness(Harness):
    name = "azure-emulator"

    def __init__(self, project: Any, emu: Any) -> None:
        super().__init__(project)
        self.emu = emu
        self.client = raw_client(emu)
        self.pool_id = f"conf-{uuid.uuid4().hex[:8]}"
        create_empty_pool(self.client, self.pool_id)
        toml = project.dir / "batchyard.toml"
        toml.write_text(toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
                        + f'[azure]\npool_id = "{self.pool_id}"\npoll_interval = 0.3\n', encoding="utf-8")

    def backend(self) -> Backend:
        config = load_config(self.project.dir / "batchyard.toml", env=azure_env(self.project, self.emu))
        return get_backend("azure", config)

    def execute(self, be: Backend, job: Job, before_start: Callable[[], None] | None, timeout: float) -> None:
        resize(self.client, self.pool_id, 0)  # nothing may start before before_start
        self.last_submit = be.submit(job)
        if before_start is not None:
            before_start()
        resize(self.client, self.pool_id, 2)
        be.start_execution(job)
        try:
            be.wait(job.id, timeout=timeout, poll_interval=0.3)
        finally:
            be.stop_execution()


class TestAzureEmulator(BackendScenarios):
    @pytest.fixture
    def harness(self, project: Any, batch_emulator: Any) -> Harness:
        return AzureEmulatorHarness(project, batch_emulator)
