"""Each injected fault makes the emulator behave the way Azure Batch does in that situation."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.batch.models._models import BatchJobTerminateOptions  # not exported by 15.1.0
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError

from batchyard.emulator.batch import FaultConfig

from .test_sdk_tutorial import client_for, make_job, make_pool, sh, wait_all_completed

pytestmark = pytest.mark.timeout(240)  # a hang guard: generous, so a busy machine never trips it


def bare_client(emu: Any) -> BatchClient:
    """No client-side retries, so every injected error is visible."""
    return BatchClient(emu.url, AzureNamedKeyCredential(emu.account_name, emu.account_key), retry_total=0)


def _poll(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    """Poll ``check`` until true (its value); the deadline only bounds a failure, so it is generous."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_node_lost_requeues_task(batch_emulator_factory: Any, tmp_path: Path) -> None:
    emu = batch_emulator_factory(FaultConfig(node_lost_after_s=0.3, node_lost_count=1))
    client = client_for(emu)
    make_pool(client, "lost-pool", nodes=1, slots=1)
    make_job(client, "lost-job", "lost-pool")
    (first_node,) = _poll(lambda: [n.id for n in client.list_nodes("lost-pool")], "the pool's node")
    # The task runs until the gate opens, so it is still running when its node is lost, however
    # slowly a busy machine runs it; the gate opens once it has moved to the replacement node.
    gate = tmp_path / "slow.gate"
    client.create_task("lost-job", bm.BatchTaskCreateOptions(
        id="slow", command_line=sh(f"while [ ! -e {gate} ]; do sleep 0.05; done")))
    _poll(lambda: (t := client.get_task("lost-job", "slow")).node_info and t.node_info.node_id != first_node,
          "the task to run again on the replacement node")
    gate.touch()
    (task,) = wait_all_completed(client, "lost-job")
    info = task.execution_info
    assert info.result == bm.BatchTaskExecutionResult.SUCCESS
    assert info.requeue_count == 1 and info.retry_count == 0
    assert task.node_info.node_id != first_node  # ran again on the replacement node
    nodes = list(client.list_nodes("lost-pool"))
    assert len(nodes) == 1 and nodes[0].id != first_node


def test_add_collection_too_large_is_split_by_sdk(batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig(add_collection_too_large_over=30))
    client = client_for(emu)
    make_pool(client, "big-pool", nodes=0)
    make_job(client, "big-job", "big-pool")
    with pytest.raises(HttpResponseError) as info:
        bare_client(emu).create_task_collection("big-job", bm.BatchTaskGroup(task_values=[
            bm.BatchTaskCreateOptions(id=f"x{i}", command_line="true") for i in range(31)]))
    assert info.value.status_code == 413 and info.value.error.code == "RequestBodyTooLarge"
    tasks = [bm.BatchTaskCreateOptions(id=f"t{i}", command_line="true") for i in range(120)]
    result = client.create_tasks("big-job", tasks)
    assert len(result.result_values) == 120
    assert len(list(client.list_tasks("big-job"))) == 120


def test_first_requests_busy_then_served(batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig(http_503_count=2))
    with pytest.raises(HttpResponseError) as info:
        list(bare_client(emu).list_pools())
    assert info.value.status_code == 503 and info.value.error.code == "ServerBusy"
    assert list(client_for(emu).list_pools()) == []  # the SDK's retry rides over the second 503


def test_every_nth_request_fails(batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig(http_500_every=3))
    client = bare_client(emu)
    codes = []
    for _ in range(6):
        try:
            list(client.list_jobs())
            codes.append(200)
        except HttpResponseError as exc:
            codes.append(exc.status_code)
            assert exc.error.code == "InternalServerError"
    assert codes == [200, 200, 500, 200, 200, 500]


def test_job_quota(batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig(job_quota=1))
    client = client_for(emu)
    make_pool(client, "q-pool", nodes=0)
    make_job(client, "q1", "q-pool")
    with pytest.raises(HttpResponseError) as info:
        make_job(client, "q2", "q-pool")
    assert info.value.status_code == 409 and info.value.error.code == "ActiveJobAndScheduleQuotaReached"
    client.begin_terminate_job("q1", BatchJobTerminateOptions(termination_reason="done"),
                               polling_interval=0.1).result()
    assert client.get_job("q1").execution_info.termination_reason == "done"
    make_job(client, "q2", "q-pool")  # a completed job no longer counts


def test_faults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHYARD_EMULATOR_FAULTS", '{"http_503_count": 2, "node_lost_after_s": 0.5}')
    config = FaultConfig.from_env()
    assert config == FaultConfig(http_503_count=2, node_lost_after_s=0.5)
    with pytest.raises(ValueError, match="unknown field"):
        FaultConfig.from_json('{"http_418": 1}')
