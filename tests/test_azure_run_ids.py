"""A later run's Batch job (``<job id>-r<N>``) and a user's job of the same name never mix, on the
azure backend against the Batch emulator (real SDK over HTTP, Azurite): the run takes the next
number, a job named like a run is refused, and a record left pointing at another job's Batch job
is not read as the job's own (backends/azure/runs.py)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends import get_backend
from batchyard.backends.azure.runs import BatchRun
from batchyard.core.errors import BackendError, JobNotFoundError
from batchyard.core.job import job_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from conformance.test_azure_emulator import create_empty_pool, raw_client, resize
from test_azure_backend import azure_config

pytestmark = pytest.mark.timeout(240)
BY_NAME = "sh -c 'case \"$INPUT_NAME\" in bad*) exit 3;; esac'"


def _job(project: Any, job_id: str, container: str) -> Any:
    return job_from_dict({"id": job_id, "command": BY_NAME, "inputs": {"container": container}},
                         source="test", base_dir=project.dir)


def _owner(client: Any, batch_job_id: str) -> str | None:
    return next((m.value for m in client.get_job(batch_job_id).metadata or [] if m.name == "batchyard-job"), None)


def test_a_run_never_takes_another_jobs_batch_job(project: Any, batch_emulator: Any) -> None:
    client = raw_client(batch_emulator)
    pool_id = f"ids-{project.uid}"
    create_empty_pool(client, pool_id, slots=2)
    resize(client, pool_id, 1)
    config = azure_config(project, batch_emulator, pool_id=pool_id)
    mine, theirs = project.container("inputs"), project.container("others")
    project.put_inputs(mine, {"ok.txt": b"1", "bad.txt": b"2"})
    project.put_inputs(theirs, {"their.txt": b"3"})
    job_id = f"ids{uuid.uuid4().hex[:6]}"
    with get_backend(None, config) as be:
        be.submit(_job(project, job_id, mine))
        assert (be.wait(job_id, timeout=180, poll_interval=0.2).failed, _owner(client, job_id)) == (1, job_id)
        # Another job, named as this one's second run would be.
        be.submit(_job(project, f"{job_id}-r2", theirs))
        assert be.wait(f"{job_id}-r2", timeout=180, poll_interval=0.2).succeeded == 1

        project.put_inputs(mine, {"bad.txt": b"fixed"})  # (the command looks at the name: it fails again)
        rerun = be.submit(_job(project, job_id, mine))
        assert rerun.enqueued == 1
        assert _owner(client, f"{job_id}-r3") == job_id  # the run took the next free number
        counts = be.wait(job_id, timeout=180, poll_interval=0.2)
        assert (counts.succeeded, counts.failed, counts.total) == (1, 1, 2), counts
        assert sorted(r.label for r in be.list_task_results(job_id)) == ["bad.txt", "ok.txt"]
        assert [r.label for r in be.list_task_results(f"{job_id}-r2")] == ["their.txt"]

        # A job named as an existing run: refused before anything is written for it.
        with pytest.raises(BackendError, match="later run of another job"):
            be.submit(_job(project, f"{job_id}-r3", theirs))
        assert not be.documents.has_job(f"{job_id}-r3")
        assert [t.id for t in client.list_tasks(f"{job_id}-r3")] == [next(
            r.task_id for r in be.list_task_results(job_id) if r.label == "bad.txt")]

        # A run's Batch job asked about by its id (as the portal shows it): the job it belongs to is named,
        # not that run's tasks shown as if they were a job; a user's job of such a name is found as usual.
        with pytest.raises(JobNotFoundError, match=f"later run of job '{job_id}'.*batchyard status {job_id}"):
            be.resolve_job_id(f"{job_id.upper()}-R3")
        assert be.resolve_job_id(f"{job_id}-R2") == f"{job_id}-r2"

        # A record pointing at another job's Batch job (left by an older batchyard) is not read as its own.
        chain = be.runs.load(job_id)
        chain.runs.append(BatchRun(batch_job_id=f"{job_id}-r2", number=chain.current.number + 1))
        be.runs.save(chain)
        with get_backend(None, config) as fresh:
            assert sorted(r.label for r in fresh.list_task_results(job_id)) == ["bad.txt", "ok.txt"]
            assert fresh.task_counts(job_id).total == 2
            assert {v.job_id for v in fresh.list_jobs()} >= {job_id, f"{job_id}-r2"}
            assert f"{job_id}-r3" not in {v.job_id for v in fresh.list_jobs()}  # a run, not a job
            fresh.delete(job_id)
    assert client.get_job(f"{job_id}-r2").id == f"{job_id}-r2"  # the other job's Batch job survives
    for gone in (job_id, f"{job_id}-r3"):
        with pytest.raises(ResourceNotFoundError):
            client.get_job(gone)
