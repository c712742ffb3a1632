"""Private container registries on the emulator: accepted and validated like Batch, never pulled from,
and their passwords never echoed (real Batch omits them from every GET)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from .test_sdk_tutorial import IMAGE, client_for

pytestmark = pytest.mark.timeout(240)  # a hang guard: generous, so a busy machine never trips it
SERVER = "myregistry.azurecr.io"
PASSWORD = "emulator-registry-" + "Zq8w" * 8
IDENTITY = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull"


def raw(client: BatchClient, path: str) -> str:
    response = client.send_request(HttpRequest("GET", f"{path}?api-version=2025-06-01"))
    assert response.status_code == 200, response.text()
    return response.text()


def containers(*registries: bm.ContainerRegistryReference) -> bm.VirtualMachineConfiguration:
    return bm.VirtualMachineConfiguration(
        image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04",
        container_configuration=bm.BatchContainerConfiguration(
            type=bm.ContainerType.DOCKER_COMPATIBLE, container_image_names=[f"{SERVER}/app:1"],
            container_registries=list(registries)))


def keyed() -> bm.ContainerRegistryReference:
    return bm.ContainerRegistryReference(registry_server=SERVER, username="puller", password=PASSWORD)


def test_registries_are_accepted_and_passwords_never_echoed(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    uid = uuid.uuid4().hex[:6]
    identity = bm.ContainerRegistryReference(registry_server="byid.azurecr.io",
                                             identity_reference=bm.BatchNodeIdentityReference(resource_id=IDENTITY))
    pool_id, job_id, auto_job = f"reg-pool-{uid}", f"reg-job-{uid}", f"reg-auto-{uid}"
    client.create_pool(bm.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=0,
                                                 virtual_machine_configuration=containers(keyed(), identity)))
    client.create_job(bm.BatchJobCreateOptions(id=auto_job, pool_info=bm.BatchPoolInfo(
        auto_pool_specification=bm.BatchAutoPoolSpecification(
            pool_lifetime_option=bm.BatchPoolLifetimeOption.JOB,
            pool=bm.BatchPoolSpecification(vm_size="standard_d2s_v3", target_dedicated_nodes=0,
                                           virtual_machine_configuration=containers(keyed()))))))
    client.create_job(bm.BatchJobCreateOptions(id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id)))
    settings = bm.BatchTaskContainerSettings(image_name=f"{SERVER}/app:1", registry=keyed())
    client.create_task(job_id, bm.BatchTaskCreateOptions(id="one", command_line="true", container_settings=settings))
    client.create_tasks(job_id, [bm.BatchTaskCreateOptions(id=f"c{i}", command_line="true",
                                                            container_settings=settings) for i in range(3)])

    pool = client.get_pool(pool_id).virtual_machine_configuration.container_configuration
    assert [(r.registry_server, r.username, r.password) for r in pool.container_registries] == [
        (SERVER, "puller", None), ("byid.azurecr.io", None, None)]
    assert pool.container_registries[1].identity_reference.resource_id == IDENTITY
    registry = client.get_task(job_id, "one").container_settings.registry
    assert (registry.registry_server, registry.username, registry.password) == (SERVER, "puller", None)
    auto_pool = client.get_job(auto_job).execution_info.pool_id
    texts = [raw(client, p) for p in (f"/pools/{pool_id}", "/pools", f"/pools/{auto_pool}", f"/jobs/{auto_job}",
                                      "/jobs", f"/jobs/{job_id}/tasks/one", f"/jobs/{job_id}/tasks")]
    assert all(SERVER in text for text in texts)
    for text in texts:
        assert PASSWORD not in text and '"password"' not in text


def test_bad_registry_references_are_refused_naming_the_property(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    uid = uuid.uuid4().hex[:6]
    no_user = bm.ContainerRegistryReference(registry_server=SERVER, password=PASSWORD)
    with pytest.raises(HttpResponseError) as refused:
        client.create_pool(bm.BatchPoolCreateOptions(id=f"bad-{uid}", vm_size="standard_d2s_v3",
                                                     virtual_machine_configuration=containers(keyed(), no_user)))
    assert refused.value.status_code == 400
    assert "containerConfiguration.containerRegistries[1].username" in str(refused.value)
    assert PASSWORD not in str(refused.value)

    client.create_pool(bm.BatchPoolCreateOptions(id=f"ok-{uid}", vm_size="standard_d2s_v3",
                                                 virtual_machine_configuration=containers()))
    client.create_job(bm.BatchJobCreateOptions(id=f"bad-{uid}", pool_info=bm.BatchPoolInfo(pool_id=f"ok-{uid}")))
    no_password = bm.ContainerRegistryReference(registry_server=SERVER, username="puller")
    with pytest.raises(HttpResponseError) as task_refused:
        client.create_task(f"bad-{uid}", bm.BatchTaskCreateOptions(
            id="t", command_line="true",
            container_settings=bm.BatchTaskContainerSettings(image_name="app:1", registry=no_password)))
    assert "containerSettings.registry.password" in str(task_refused.value)
    with pytest.raises(HttpResponseError, match=r"containerSettings\.imageName"):
        client.create_task(f"bad-{uid}", bm.BatchTaskCreateOptions(
            id="t", command_line="true", container_settings=bm.BatchTaskContainerSettings({"registry": {}})))
