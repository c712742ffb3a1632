"""Promise 15: Batch faults injected by the emulator, seen through the azure backend.

The emulator injects them by configuration (FaultConfig); the backend, its SDK client and
the real HTTP in between are all the production code paths. Transient faults are survived,
permanent ones reported clearly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.core.errors import BackendError
from batchyard.core.job import job_from_dict
from batchyard.emulator.batch import FaultConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conformance.test_azure_emulator import azure_env

pytestmark = pytest.mark.timeout(240)  # a hang guard: generous, so a busy machine never trips it


def _config(project: Any, emu: Any, **azure: Any) -> Any:
    from batchyard.core.config import load_config

    toml = project.dir / "batchyard.toml"
    text = toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in azure.items())
    toml.write_text(text + "[azure]\npoll_interval = 0.3\n" + extra + "[azure.pool]\ndedicated_nodes = 2\n",
                    encoding="utf-8")
    return load_config(toml, env=azure_env(project, emu))


def _job(project: Any, job_id: str, container: str, command: str = "cat {input}") -> Any:
    return job_from_dict({"id": job_id, "command": command, "inputs": {"container": container},
                          "constraints": {"max_task_retry_count": 0}}, source="test", base_dir=project.dir)


def _run(be: Any, job: Any) -> dict[str, Any]:
    be.preflight()
    be.submit(job)
    counts = be.wait(job.id, timeout=200, poll_interval=0.3)
    assert counts.finished, counts
    return {r.label: r for r in be.list_task_results(job.id)}


def test_node_lost_mid_task_is_requeued_and_the_job_completes(project: Any, batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig(node_lost_after_s=0.4, node_lost_count=1))
    container = project.container("inputs")
    project.put_inputs(container, {f"f{i}.txt": b"x" for i in range(4)})
    # Each task outlives the injected node loss, so one of them is running when its node goes.
    job = _job(project, "nodelost", container, command="python3 -c 'import time; time.sleep(1.0)' {input}")
    with get_backend(None, _config(project, emu)) as be:
        results = _run(be, job)
    assert {r.state for r in results.values()} == {"succeeded"}, results
    # A requeue is not a retry (as Azure on preemption): max_task_retry_count = 0 was enough.
    assert all(r.exit_code == 0 for r in results.values())


def test_transient_500s_and_503s_are_survived(project: Any, batch_emulator_factory: Any) -> None:
    # At most two failures in a row (requests 1-2 answer 503, then every 5th 500): within the retries.
    emu = batch_emulator_factory(FaultConfig(http_500_every=5, http_503_count=2))
    container = project.container("inputs")
    project.put_inputs(container, {f"g{i}.txt": b"y" for i in range(5)})
    with get_backend(None, _config(project, emu)) as be:
        results = _run(be, _job(project, "flaky5xx", container))
    assert len(results) == 5 and {r.state for r in results.values()} == {"succeeded"}


def test_active_job_quota_is_reported_clearly(project: Any, batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(FaultConfig(job_quota=1))
    container = project.container("inputs")
    project.put_inputs(container, {"h.txt": b"z"})
    with get_backend(None, _config(project, emu, keep_auto_pool=True)) as be:
        be.preflight()
        be.submit(_job(project, "first", container, command="python3 -c 'import time; time.sleep(30)' {input}"))
        with pytest.raises(BackendError) as info:
            be.submit(_job(project, "second", container))
        be.cancel("first")
    message = str(info.value)
    assert "ActiveJobAndScheduleQuotaReached" in message or "quota" in message.lower(), message
    assert emu.account_key not in message
