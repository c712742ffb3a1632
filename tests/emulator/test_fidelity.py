"""Issue #19: the emulator answers as Azure Batch does (transitional states, defaults, the recorded mismatches).

Transitional states are held (``timing=hold()``) and ended with ``finish_transitions``: what a test
sees never depends on how fast this machine is.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError
from azure.core.rest import HttpRequest

from batchyard.core.errors import EmulatorError
from batchyard.emulator.batch import BatchEmulator
from batchyard.emulator.batch.transitions import Timing, hold

pytestmark = pytest.mark.timeout(120)
IMAGE = bm.BatchVmImageReference(publisher="Canonical", offer="ubuntu-24_04-lts", sku="server")
VM = bm.VirtualMachineConfiguration(image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04")


def client_for(emu: Any) -> BatchClient:
    return BatchClient(emu.url, AzureNamedKeyCredential(emu.account_name, emu.account_key), retry_total=0)


def raw(client: BatchClient, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request through the SDK's pipeline (the SDK's begin_* calls would poll held states forever)."""
    headers = {"Content-Type": "application/json; odata=minimalmetadata"} if body is not None else {}
    answer = client.send_request(HttpRequest(method, f"{path}?api-version=2025-06-01", headers=headers,
                                             content=None if body is None else json.dumps(body)))
    assert answer.status_code < 300, answer.text()
    return answer


def eventually(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)
    return value


@pytest.fixture
def held(batch_emulator_factory: Any) -> Any:
    """An emulator whose transitional states last until the test ends them."""
    return batch_emulator_factory(timing=hold())


def make_pool(client: BatchClient, pool_id: str, nodes: int = 0, **kw: Any) -> None:
    client.create_pool(bm.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=nodes,
                                                 virtual_machine_configuration=kw.pop("vm", VM), **kw))


# --- time as on Azure, faster -----------------------------------------------------------------------
def test_pool_resizes_stops_and_reports_resize_stopped(held: Any) -> None:
    client = client_for(held)
    make_pool(client, "rs-pool")
    assert client.get_pool("rs-pool").allocation_state == bm.AllocationState.RESIZING
    held.finish_transitions("pools")
    assert client.get_pool("rs-pool").allocation_state == bm.AllocationState.STEADY
    raw(client, "POST", "/pools/rs-pool/resize", {"targetDedicatedNodes": 0, "targetLowPriorityNodes": 2})
    assert client.get_pool("rs-pool").allocation_state == bm.AllocationState.RESIZING
    raw(client, "POST", "/pools/rs-pool/stopresize")
    pool = client.get_pool("rs-pool")
    assert pool.allocation_state == bm.AllocationState.STOPPING and not pool.resize_errors
    held.finish_transitions("pools")
    pool = client.get_pool("rs-pool")
    assert pool.allocation_state == bm.AllocationState.STEADY
    assert [e.code for e in pool.resize_errors] == ["ResizeStopped"]
    assert "low priority" in pool.resize_errors[0].message
    raw(client, "POST", "/pools/rs-pool/resize", {"targetDedicatedNodes": 1})
    assert not client.get_pool("rs-pool").resize_errors  # a new resize clears the last one's errors


def test_deleted_pool_and_job_are_deleting_then_gone(held: Any) -> None:
    client = client_for(held)
    make_pool(client, "del-pool")
    client.create_job(bm.BatchJobCreateOptions(id="del-job", pool_info=bm.BatchPoolInfo(pool_id="del-pool")))
    raw(client, "DELETE", "/jobs/del-job")
    raw(client, "DELETE", "/pools/del-pool")
    assert client.get_job("del-job").state == bm.BatchJobState.DELETING
    assert client.get_pool("del-pool").state == bm.BatchPoolState.DELETING
    with pytest.raises(Exception, match="PoolBeingDeleted"):
        make_pool(client, "del-pool")
    held.finish_transitions("jobs")
    with pytest.raises(ResourceNotFoundError):
        client.get_job("del-job")
    assert client.get_pool("del-pool").state == bm.BatchPoolState.DELETING
    held.finish_transitions("pools")
    with pytest.raises(ResourceNotFoundError):
        client.get_pool("del-pool")


def test_terminated_job_is_terminating_then_completed(held: Any) -> None:
    client = client_for(held)
    client.create_job(bm.BatchJobCreateOptions(id="term-job", pool_info=bm.BatchPoolInfo(pool_id="nowhere")))
    raw(client, "POST", "/jobs/term-job/terminate", {})
    job = client.get_job("term-job")
    assert job.state == bm.BatchJobState.TERMINATING and job.execution_info.termination_reason == "UserTerminate"
    held.finish_transitions("jobs")
    job = client.get_job("term-job")
    assert job.state == bm.BatchJobState.COMPLETED and job.execution_info.end_time is not None


def test_new_node_is_starting_without_boot_keys_until_it_boots(held: Any) -> None:
    client = client_for(held)
    make_pool(client, "boot-pool", nodes=1)
    held.finish_transitions("pools")
    body = raw(client, "GET", "/pools/boot-pool/nodes").json()["value"][0]
    assert body["state"] == "starting" and "lastBootTime" not in body and "nodeAgentInfo" not in body
    held.finish_transitions("nodes")
    body = raw(client, "GET", "/pools/boot-pool/nodes").json()["value"][0]
    assert body["state"] == "idle" and "lastBootTime" in body and "nodeAgentInfo" in body


def test_default_timing_is_short_and_moves_on_by_itself(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    make_pool(client, "quick-pool", nodes=1)
    eventually(lambda: client.get_pool("quick-pool").allocation_state == bm.AllocationState.STEADY)
    eventually(lambda: [n.state for n in client.list_nodes("quick-pool")] == [bm.BatchNodeState.IDLE])
    raw(client, "DELETE", "/pools/quick-pool")
    eventually(lambda: all(p.id != "quick-pool" for p in client.list_pools()))


def test_timing_setting_is_checked(monkeypatch: pytest.MonkeyPatch, azurite_connection_string: str,
                                   tmp_path: Any) -> None:
    assert Timing.from_json('{"delete_s": 0, "resize_s": 2.5}') == Timing(delete_s=0, resize_s=2.5)
    with pytest.raises(ValueError, match="unknown field"):
        Timing.from_json('{"reimage_s": 1}')
    with pytest.raises(ValueError, match=">= 0"):
        Timing(terminate_s=-1)
    monkeypatch.setenv("BATCHYARD_EMULATOR_TIMING", "[1]")
    with pytest.raises(EmulatorError, match="JSON object"):
        BatchEmulator(storage_connection_string=azurite_connection_string, data_dir=tmp_path)


def test_empty_job_with_terminatejob_stays_active(held: Any) -> None:
    client = client_for(held)
    make_pool(client, "tj-pool", nodes=1)
    client.create_job(bm.BatchJobCreateOptions(
        id="tj-job", pool_info=bm.BatchPoolInfo(pool_id="tj-pool"),
        all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.TERMINATE_JOB))
    held.finish_transitions()
    assert client.get_job("tj-job").state == bm.BatchJobState.ACTIVE
    client.create_task("tj-job", bm.BatchTaskCreateOptions(id="t", command_line="true"))
    eventually(lambda: client.get_job("tj-job").state == bm.BatchJobState.TERMINATING)
    held.finish_transitions("jobs")
    job = client.get_job("tj-job")
    assert job.state == bm.BatchJobState.COMPLETED and job.execution_info.termination_reason == "AllTasksComplete"


# --- the defaults Azure fills in --------------------------------------------------------------------
def test_pool_defaults_as_azure_fills_them(held: Any) -> None:
    client = client_for(held)
    make_pool(client, "def-pool", task_scheduling_policy=bm.BatchTaskSchedulingPolicy(
        node_fill_type=bm.BatchNodeFillType.PACK), vm=bm.VirtualMachineConfiguration(
        image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04",
        data_disks=[bm.DataDisk(logical_unit_number=1, disk_size_gb=50)]),
        network_configuration=bm.NetworkConfiguration(endpoint_configuration=bm.BatchPoolEndpointConfiguration(
            inbound_nat_pools=[bm.BatchInboundNatPool(
                name="ssh", protocol=bm.InboundEndpointProtocol.TCP, backend_port=22,
                frontend_port_range_start=15000, frontend_port_range_end=15100,
                network_security_group_rules=[bm.NetworkSecurityGroupRule(
                    priority=150, access=bm.NetworkSecurityGroupRuleAccess.ALLOW, source_address_prefix="*")])])))
    body = raw(client, "GET", "/pools/def-pool").json()
    assert body["taskSchedulingPolicy"] == {"nodeFillType": "Pack", "jobDefaultOrder": "none"}
    vm = body["virtualMachineConfiguration"]
    assert vm["imageReference"]["version"] == "latest"
    assert vm["dataDisks"] == [{"lun": 1, "diskSizeGB": 50, "caching": "none",
                                "managedDisk": {"storageAccountType": "standard_lrs"}}]
    network = body["networkConfiguration"]
    assert network["dynamicVNetAssignmentScope"] == "none" and network["enableAcceleratedNetworking"] is False
    assert network["endpointConfiguration"]["inboundNATPools"][0]["networkSecurityGroupRules"][0][
        "sourcePortRanges"] == ["*"]
    assert "previousState" not in body


def test_job_defaults_auto_pool_and_start_time(held: Any) -> None:
    client = client_for(held)
    client.create_job(bm.BatchJobCreateOptions(id="auto-def", pool_info=bm.BatchPoolInfo(
        auto_pool_specification=bm.BatchAutoPoolSpecification(
            pool_lifetime_option=bm.BatchPoolLifetimeOption.JOB,
            pool=bm.BatchPoolSpecification(vm_size="standard_d2s_v3", virtual_machine_configuration=VM)))))
    body = raw(client, "GET", "/jobs/auto-def").json()
    auto = body["poolInfo"]["autoPoolSpecification"]
    assert auto["keepAlive"] is False
    pool = auto["pool"]
    assert (pool["taskSlotsPerNode"], pool["resizeTimeout"], pool["targetDedicatedNodes"],
            pool["enableAutoScale"]) == (1, "PT15M", 0, False)
    assert pool["taskSchedulingPolicy"] == {"nodeFillType": "Spread", "jobDefaultOrder": "none"}
    assert body["executionInfo"]["startTime"] == body["creationTime"]


def test_pools_are_listed_by_id(held: Any) -> None:
    client = client_for(held)
    for pool_id in ("b-pool", "C-pool", "a-pool"):
        make_pool(client, pool_id)
    assert [p.id for p in client.list_pools()] == ["a-pool", "b-pool", "C-pool"]


# --- the recorded mismatches ------------------------------------------------------------------------
def test_node_image_endpoints_and_ipv6(held: Any) -> None:
    client = client_for(held)
    make_pool(client, "net-pool", nodes=2, network_configuration=bm.NetworkConfiguration(
        endpoint_configuration=bm.BatchPoolEndpointConfiguration(inbound_nat_pools=[bm.BatchInboundNatPool(
            name="TestEndpointConfig", protocol=bm.InboundEndpointProtocol.TCP, backend_port=3389,
            frontend_port_range_start=15000, frontend_port_range_end=15100)]),
        public_ip_address_configuration=bm.BatchPublicIpAddressConfiguration(
            ip_families=[bm.IPFamily.IPV4, bm.IPFamily.IPV6])))
    make_pool(client, "plain-pool", nodes=1)
    nodes = sorted(raw(client, "GET", "/pools/net-pool/nodes").json()["value"], key=lambda n: n["id"])
    endpoints = sorted(e["name"] for n in nodes for e in n["endpointConfiguration"]["inboundEndpoints"])
    assert endpoints == ["TestEndpointConfig-ipv6.0", "TestEndpointConfig-ipv6.1", "TestEndpointConfig.0",
                         "TestEndpointConfig.1"]
    ports = {e["frontendPort"] for n in nodes for e in n["endpointConfiguration"]["inboundEndpoints"]}
    assert ports == {15000, 15001}
    assert all(n["ipv6Address"] for n in nodes)
    image = nodes[0]["virtualMachineInfo"]["imageReference"]
    assert (image["offer"], image["version"], image["exactVersion"]) == ("ubuntu-24_04-lts", "latest", "latest")
    plain = raw(client, "GET", "/pools/plain-pool/nodes").json()["value"][0]
    assert "ipv6Address" not in plain and "endpointConfiguration" not in plain and "virtualMachineInfo" in plain
    node = client.get_node("net-pool", nodes[0]["id"])  # the SDK reads them into its models
    assert node.virtual_machine_info.image_reference.exact_version == "latest"
    assert node.endpoint_configuration.inbound_endpoints[0].backend_port == 3389


def test_text_files_are_text_plain_urls_encoded_node_files_deletable(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    make_pool(client, "file-pool", nodes=1)
    client.create_job(bm.BatchJobCreateOptions(id="file-job", pool_info=bm.BatchPoolInfo(pool_id="file-pool")))
    client.create_task("file-job", bm.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c 'echo hello'"))
    task = eventually(lambda: (t := client.get_task("file-job", "t")).state == bm.BatchTaskState.COMPLETED and t)
    for path in ("/jobs/file-job/tasks/t/files/stdout.txt",
                 f"/pools/file-pool/nodes/{task.node_info.node_id}/files/workitems/file-job/job-1/t/stdout.txt"):
        for method in ("GET", "HEAD"):
            answer = raw(client, method, path)
            assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/plain"
            assert answer.headers["ocp-batch-file-url"] == quote(f"{batch_emulator.url}{path}", safe="")
    listing = raw(client, "GET", "/jobs/file-job/tasks/t/files").json()["value"]
    assert {e["name"]: e.get("properties", {}).get("contentType") for e in listing} == {
        "stderr.txt": "text/plain", "stdout.txt": "text/plain", "wd": None}
    node_file = f"/pools/file-pool/nodes/{task.node_info.node_id}/files/workitems/file-job/job-1/t/stderr.txt"
    assert raw(client, "DELETE", node_file).status_code == 200
    with pytest.raises(ResourceNotFoundError):
        client.get_task_file_properties("file-job", "t", "stderr.txt")
