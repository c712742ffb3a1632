"""Pool autoscale through the unmodified azure-batch SDK: the SDK's own recorded test flow, Azure's
errors, and a formula that grows a pool while tasks wait and shrinks it when they are done.

The emulator runs with a short interval scale, so a 5-minute evaluation interval lasts a few
seconds: tests wait for states (polling with generous deadlines), never for a clock.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError

from .sdk_helpers import VM, wait_for
from .test_sdk_tutorial import client_for, make_job

pytestmark = pytest.mark.timeout(120)
# 5 minutes -> 6 s; a sample every 0.6 s, seen 1.2 s later (well above the scheduler's 0.2 s tick)
SCALE = 0.02


def pool_options(pool_id: str, **kw: Any) -> bm.BatchPoolCreateOptions:
    return bm.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2s_v3", virtual_machine_configuration=VM, **kw)


def error_of(call: Any) -> tuple[int, str, dict[str, str]]:
    with pytest.raises(HttpResponseError) as err:
        call()
    details = {v["key"]: v["value"] for v in err.value.model.get("values") or []}
    return err.value.status_code, err.value.error.code, details


def steady(client: Any, pool_id: str) -> None:
    wait_for(lambda: str(client.get_pool(pool_id).allocation_state) == "AllocationState.STEADY",
             what=f"pool {pool_id} steady")


@pytest.fixture
def emulator(batch_emulator_factory: Any) -> Any:
    return batch_emulator_factory(interval_scale=SCALE)


def test_recorded_scale_pool_flow(emulator: Any) -> None:
    """test_batch_scale_pools as the SDK recorded it against Azure, then the evaluation applied."""
    client = client_for(emulator)
    pool_id = f"scale-{uuid.uuid4().hex[:8]}"
    client.create_pool(pool_options(pool_id))
    steady(client, pool_id)  # a new pool is resizing for a moment; Azure refuses autoscale then
    assert client.enable_pool_auto_scale(pool_id, bm.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes=2", auto_scale_evaluation_interval=timedelta(minutes=6))) is None
    run = client.evaluate_pool_auto_scale(pool_id, bm.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes=3"))
    assert isinstance(run, bm.AutoScaleRun) and run.error is None
    assert run.results == "$TargetDedicatedNodes=3;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"
    pool = client.get_pool(pool_id)
    assert pool.enable_auto_scale and pool.auto_scale_formula == "$TargetDedicatedNodes=2"
    assert pool.auto_scale_evaluation_interval == timedelta(minutes=6)
    # As recorded on Azure: the enable itself evaluated the formula (evaluate changed nothing), so
    # the next GET already shows the target, 2 nodes, not 3; no autoScaleRun is shown for it.
    assert pool.target_dedicated_nodes == 2 and pool.auto_scale_run is None
    pool = wait_for(lambda: (p := client.get_pool(pool_id)).current_dedicated_nodes == 2 and p, what="2 nodes")
    # The first evaluation of the schedule, one interval later, gives the same size: it is reported,
    # and the pool, unchanged, keeps its ETag.
    later = wait_for(lambda: (p := client.get_pool(pool_id)).auto_scale_run is not None and p,
                     what="the first scheduled evaluation")
    assert later.auto_scale_run.results.startswith("$TargetDedicatedNodes=2;")
    assert later.etag == pool.etag and later.current_dedicated_nodes == 2
    status, code, _ = error_of(lambda: client.begin_resize_pool(pool_id, bm.BatchPoolResizeOptions(
        target_dedicated_nodes=1)))
    assert (status, code) == (409, "OperationInvalidForCurrentState")
    assert client.disable_pool_auto_scale(pool_id) is None
    pool = client.get_pool(pool_id)
    assert not pool.enable_auto_scale and pool.auto_scale_formula is None and pool.auto_scale_run is None
    assert pool.target_dedicated_nodes == 2  # disabling keeps the size the formula gave
    client.begin_resize_pool(pool_id, bm.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=1).result()
    assert client.get_pool(pool_id).current_dedicated_nodes == 1


def test_azure_errors(emulator: Any) -> None:
    client = client_for(emulator)
    pool_id = f"err-{uuid.uuid4().hex[:8]}"
    client.create_pool(pool_options(pool_id, target_dedicated_nodes=0))
    steady(client, pool_id)
    evaluate = bm.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes=1")
    assert error_of(lambda: client.evaluate_pool_auto_scale(pool_id, evaluate))[:2] == (409, "AutoScaleNotEnabled")
    status, code, details = error_of(lambda: client.enable_pool_auto_scale(pool_id, bm.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = max(;")))
    assert (status, code) == (400, "AutoScalingFormulaSyntaxError") and "line 1, column" in details["Message"]
    status, code, _ = error_of(lambda: client.enable_pool_auto_scale(pool_id, bm.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="a = 1; //" + "x" * 9000)))
    assert (status, code) == (400, "AutoScalingFormulaTooLong")
    status, code, details = error_of(lambda: client.enable_pool_auto_scale(pool_id, bm.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes=1", auto_scale_evaluation_interval=timedelta(minutes=4))))
    assert (status, code, details["PropertyName"]) == (400, "InvalidPropertyValue", "autoScaleEvaluationInterval")
    client.enable_pool_auto_scale(pool_id, bm.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes=0"))
    assert client.get_pool(pool_id).auto_scale_evaluation_interval == timedelta(minutes=15)  # Azure's default
    # A second enable within 30 (scaled) seconds: Azure's 503, seen here without the SDK's retries.
    impatient = client_for(emulator)
    impatient._config.retry_policy.total_retries = 0  # type: ignore[attr-defined]
    assert error_of(lambda: impatient.enable_pool_auto_scale(pool_id, bm.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes=0")))[:2] == (503, "TooManyEnableAutoScaleRequests")
    # A formula that parses but fails while running: 200 with autoScaleRun.error, nothing applied.
    run = client.evaluate_pool_auto_scale(pool_id, bm.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = avg($CPUPercent.GetSample(TimeInterval_Hour, 90));"))
    assert run.results is None and run.error.code == "AutoScalingFormulaEvaluationError"
    assert "90% required" in run.error.error_values[0].value
    # Creating a pool: the formula is checked first, and targets may not come with it.
    status, code, details = error_of(lambda: client.create_pool(pool_options(
        f"bad-{uuid.uuid4().hex[:8]}", enable_auto_scale=True, auto_scale_formula="$TargetDedicatedNodes = 1",
        target_dedicated_nodes=2)))
    assert (status, code, details["PropertyName"]) == (400, "InvalidPropertyValue", "targetDedicatedNodes")
    status, code, _ = error_of(lambda: client.create_pool(pool_options(
        f"bad-{uuid.uuid4().hex[:8]}", enable_auto_scale=True, auto_scale_formula="$TargetDedicatedNodes = $Nope")))
    assert (status, code) == (400, "AutoScalingFormulaSyntaxError")
    status, code, details = error_of(lambda: client.create_pool(pool_options(
        f"bad-{uuid.uuid4().hex[:8]}", auto_scale_formula="$TargetDedicatedNodes = 1")))
    assert (status, code, details["PropertyName"]) == (400, "InvalidPropertyValue", "autoScaleFormula")


def test_pending_tasks_grow_the_pool_and_completion_shrinks_it(emulator: Any) -> None:
    """A docs-style formula on an autoscale pool: nodes follow the waiting tasks, up to a cap."""
    client = client_for(emulator)
    pool_id, job_id = f"grow-{uuid.uuid4().hex[:8]}", f"grow-job-{uuid.uuid4().hex[:8]}"
    formula = ("percent = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 2);\n"
               "pending = percent < 40 ? 0 : max($PendingTasks.GetSample(TimeInterval_Minute * 2));\n"
               "$TargetDedicatedNodes = min(3, pending);\n"
               "$NodeDeallocationOption = taskcompletion;")
    client.create_pool(pool_options(pool_id, enable_auto_scale=True, auto_scale_formula=formula,
                                    auto_scale_evaluation_interval=timedelta(minutes=5)))
    pool = wait_for(lambda: (p := client.get_pool(pool_id)).auto_scale_run and p, what="a first evaluation")
    assert pool.current_dedicated_nodes == 0 and pool.auto_scale_run.error is None
    make_job(client, job_id, pool_id)
    client.create_tasks(job_id, [bm.BatchTaskCreateOptions(id=f"t{i}", command_line="sleep 3") for i in range(6)])
    wait_for(lambda: client.get_pool(pool_id).current_dedicated_nodes == 3, what="3 nodes for 6 waiting tasks")
    tasks = wait_for(lambda: (ts := list(client.list_tasks(job_id))) and all(
        t.state == bm.BatchTaskState.COMPLETED for t in ts) and ts, what="all tasks completed")
    assert all(t.execution_info.exit_code == 0 for t in tasks)
    assert len({t.node_info.node_id for t in tasks}) > 1  # the tasks ran on the nodes the formula added
    pool = wait_for(lambda: (p := client.get_pool(pool_id)).current_dedicated_nodes == 0 and p, what="shrink to 0")
    assert pool.auto_scale_run.results.startswith("$TargetDedicatedNodes=0;")
