"""Tasks listed as Batch's JSON (backends/azure/task_views.py) read as the SDK's models do: through
the real SDK client and the emulator over HTTP, every state a task ends in, paged."""

from __future__ import annotations

from typing import Any

import pytest
from azure.batch import models as bm
from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.azure import task_views
from batchyard.backends.azure.reruns import RECORD_SELECT
from batchyard.backends.azure.results import TASK_SELECT
from batchyard.backends.azure.task_views import BATCH_API_VERSION, list_task_views
from batchyard.backends.azure.tasks import FINGERPRINT_ENV, JobFacts, fingerprint_of, task_result

from .sdk_helpers import uid, wait_for
from .test_sdk_tutorial import client_for, make_job, make_pool, sh


@pytest.mark.timeout(240)
def test_a_task_read_from_its_json_is_the_sdks_task(batch_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = client_for(batch_emulator)
    assert client._config.api_version == BATCH_API_VERSION  # an SDK speaking another version: noticed here
    pool_id, job_id = uid("views"), uid("views")
    make_pool(client, pool_id, nodes=1, slots=4)
    make_job(client, job_id, pool_id)
    print_ = bm.EnvironmentSetting(name=FINGERPRINT_ENV, value="fp-1")
    client.create_tasks(job_id, [
        bm.BatchTaskCreateOptions(id="ok", display_name="ok.txt", command_line="true", environment_settings=[print_]),
        bm.BatchTaskCreateOptions(id="bad", display_name="bad.txt", command_line=sh("echo no >&2; exit 3")),
        bm.BatchTaskCreateOptions(id="again", command_line="false",
                                  constraints=bm.BatchTaskConstraints(max_task_retry_count=1)),
        bm.BatchTaskCreateOptions(id="missing", command_line="true", resource_files=[
            bm.ResourceFile(http_url="http://127.0.0.1:9/nope.txt", file_path="nope.txt")]),
        bm.BatchTaskCreateOptions(id="runs", command_line="sleep 300"),
    ])
    done = ("ok", "bad", "again", "missing")
    wait_for(lambda: {t.id for t in client.list_tasks(job_id, filter="state eq 'completed'")} >= set(done)
             and any(t.id == "runs" and t.state == bm.BatchTaskState.RUNNING for t in client.list_tasks(job_id)),
             timeout=180, what="four tasks to end and one to run")
    client.create_tasks(job_id, [bm.BatchTaskCreateOptions(id="waits", command_line="true",
                                                           required_slots=4)])  # active: no free slots
    monkeypatch.setattr(task_views, "PAGE_SIZE", 2)  # three pages: the next link followed
    facts = JobFacts(resource_names=("nope.txt",))
    for select in (TASK_SELECT, RECORD_SELECT):
        sdk = {t.id: t for t in client.list_tasks(job_id, select=select)}
        views = {t.id: t for t in list_task_views(client, job_id, select=select)}
        assert sorted(views) == sorted(sdk) == sorted([*done, "runs", "waits"])
        for task_id, task in sdk.items():
            assert task_result(job_id, views[task_id], facts) == task_result(job_id, task, facts), task_id
            assert fingerprint_of(views[task_id]) == fingerprint_of(task), task_id
    completed = {t.id for t in list_task_views(client, job_id, select=["id"], filter="state eq 'completed'")}
    assert completed == set(done)
    results = {t.id: task_result(job_id, t, facts) for t in list_task_views(client, job_id, select=TASK_SELECT)}
    assert (results["again"].attempts, results["bad"].exit_code, fingerprint_of(views["ok"])) == (2, 3, "fp-1")
    assert results["missing"].failure_category == "staging_failed" and results["runs"].state == "running"
    client.begin_delete_job(job_id, polling_interval=0.2).wait(60)  # its running task stopped

    with pytest.raises(ResourceNotFoundError) as missing:  # as the SDK raises it, Batch's code in it
        list(list_task_views(client, uid("no-such-job"), select=["id"]))
    assert missing.value.error.code == "JobNotFound"
