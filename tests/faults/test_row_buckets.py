"""A job's task rows are spread over partitions of ROWS_PER_PARTITION (issue #20): Azurite looks a row
up by filtering every row of its partition, so one partition per job made each claim and result of
a big job cost more as it filled. The bucket size is lowered here so 35 tasks take four partitions;
every command must still see the job whole, each message must keep to one partition (its claims
and results share transactions), and a re-run must find each row where it is."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.local import backend as local_backend
from batchyard.backends.local import enqueue as local_enqueue
from batchyard.backends.local import rows as task_rows
from batchyard.backends.local.messages import TaskMessage, pack
from batchyard.core.job import TaskDef

from .support import job_queue, runs_of, serve_until_idle, table_job, tool_command

pytestmark = pytest.mark.timeout(240)
KEYS = [f"k{i:03d}" for i in range(35)]


@pytest.fixture
def small_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buckets of 10 rows; messages of up to 8 tasks, so some start just before a bucket's edge."""
    monkeypatch.setattr(task_rows, "ROWS_PER_PARTITION", 10)
    monkeypatch.setattr(local_enqueue, "chunk_size_for", lambda n_tasks, workers: 8)


def _partitions(be: Any, job_id: str) -> dict[str, str]:
    """Every row of the job, read straight from the table: task id -> its partition."""
    found: dict[str, str] = {}
    for entity in be.store.tasks.query_entities("RowKey ne ''", select=["PartitionKey", "RowKey"]):
        if task_rows.job_of(entity["PartitionKey"]) == job_id:
            assert entity["RowKey"] not in found, f"task {entity['RowKey']} has two rows"
            found[entity["RowKey"]] = entity["PartitionKey"]
    return found


def test_a_big_jobs_rows_spread_over_buckets_and_every_command_sees_them_all(
        project: Any, tmp_path: Path, small_buckets: None) -> None:
    runs = tmp_path / "runs.txt"
    job_id = f"buckets-{project.uid}"
    job = table_job(project, job_id, tool_command("count", str(runs), "{KEY}", "0", "-", "0"), KEYS)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        order = [task_id for task_id, _ in be.store.load_manifest(job_id)]
        bodies = [json.loads(m.content) for m in job_queue(be, job_id).peek_messages(max_messages=32)]
        assert sum(len(body["tasks"]) for body in bodies) == 35
        where: dict[str, str] = {}
        for body in bodies:  # one bucket per message: its first task's position's
            assert body["bucket"] == str(order.index(body["tasks"][0]) // 10), body
            where.update(dict.fromkeys(body["tasks"], f"{job_id}~{body['bucket']}"))
        assert len(set(where.values())) >= 3
        assert max(list(where.values()).count(p) for p in where.values()) <= 10 + 8  # a bucket and a message

        serve_until_idle(be, tmp_path)
        assert sorted(runs_of(runs)) == KEYS
        assert _partitions(be, job_id) == where
        counts = be.task_counts(job_id)
        assert (counts.succeeded, counts.total) == (35, 35)
        assert sorted(r.task_id for r in be.list_task_results(job_id)) == sorted(order)
        last = order[-1]  # in bucket 3: found with no message to say where
        assert be.read_task_log(job_id, last, stream="stdout") is not None

        # A re-run of tasks in three buckets: each row set back to pending where it is, none added.
        named = [order[1], order[22], order[34]]
        assert len({where[t] for t in named}) == 3
        again = be.submit(job, rerun=named)
        assert (again.enqueued, again.already_succeeded) == (3, 32)
        assert _partitions(be, job_id) == where
        be.cancel(job_id)  # their pending rows, in three partitions, cancelled in a transaction each
        counts = be.task_counts(job_id)
        assert (counts.cancelled, counts.succeeded) == (3, 32)
        assert {r.task_id for r in be.list_task_results(job_id) if r.state == "cancelled"} == set(named)

        be.delete(job_id)
        assert _partitions(be, job_id) == {}


def test_rows_of_a_job_kept_in_one_partition_are_found_and_stay_there(
        project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job recorded before buckets keeps its rows in the partition named by its id alone: its
    messages carry no bucket; status, logs and a re-run still find every row, and add none elsewhere."""
    runs = tmp_path / "runs.txt"
    job_id = f"onepart-{project.uid}"
    job = table_job(project, job_id, tool_command("count", str(runs), "{KEY}", "0", "-", "0"), KEYS[:6])
    with get_backend("local", project.config()) as be:
        with monkeypatch.context() as older:
            older.setattr(local_backend, "bucket_of", lambda position: None)
            be.submit(job)
            bodies = [json.loads(m.content) for m in job_queue(be, job_id).peek_messages(max_messages=32)]
            assert bodies and all("bucket" not in body for body in bodies)
        serve_until_idle(be, tmp_path)
        order = [task_id for task_id, _ in be.store.load_manifest(job_id)]
        assert _partitions(be, job_id) == dict.fromkeys(order, job_id)
        assert be.task_counts(job_id).succeeded == 6
        assert be.read_task_log(job_id, order[0], stream="stdout") is not None
        be.submit(job, rerun=[order[2]])  # today's submit, an older job: the row stays where it is
        serve_until_idle(be, tmp_path)
        assert _partitions(be, job_id) == dict.fromkeys(order, job_id)
        assert sorted(runs_of(runs)) == sorted([*KEYS[:6], KEYS[2]])


def test_a_messages_bucket_is_under_its_mac_and_must_be_digits() -> None:
    key = b"k" * 32
    task = TaskDef(task_id="t-1", argv=("echo", "1"), params=(("KEY", "1"),), fingerprint="f")
    [message] = list(pack("job-1", [task], 4, key=key, bucket="3"))
    assert isinstance(message, TaskMessage) and message.partition == "job-1~3"
    decoded = TaskMessage.decode(message.encode())
    assert decoded.bucket == "3" and decoded.forged(key) is None
    for moved in ("4", None):  # sent to another partition, the task would run a second time there
        why = replace(decoded, bucket=moved).forged(key) or ""
        assert "wrong MAC" in why, moved
    body = json.loads(message.encode())
    for bad in ("x", "", "1" * 9, "../0", 5, "\u0663"):
        with pytest.raises(ValueError, match="bucket"):
            TaskMessage.decode(json.dumps({**body, "bucket": bad}))


def test_a_new_messages_copy_runs_nothing_twice(project: Any, tmp_path: Path, small_buckets: None) -> None:
    """A first submit's messages say their tasks had no row ("new"), so a worker creates the rows
    without asking for them. A second copy of every message, delivered for the first time too,
    finds each create refused and reads the row: every task still runs once. A re-run's message,
    whose tasks have rows, does not say so."""
    runs = tmp_path / "runs.txt"
    job_id = f"newcopy-{project.uid}"
    job = table_job(project, job_id, tool_command("count", str(runs), "{KEY}", "0", "-", "0"), KEYS[:20])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        queue = job_queue(be, job_id)
        texts = [m.content for m in queue.peek_messages(max_messages=32)]
        assert texts and all(json.loads(text)["new"] is True for text in texts)
        for text in texts:
            queue.send_message(text)
        serve_until_idle(be, tmp_path)
        assert sorted(runs_of(runs)) == KEYS[:20]
        assert be.task_counts(job_id).succeeded == 20

        order = [task_id for task_id, _ in be.store.load_manifest(job_id)]
        be.submit(job, rerun=[order[3]])
        [again] = [json.loads(m.content) for m in queue.peek_messages(max_messages=32)]
        assert again["tasks"] == [order[3]] and "new" not in again


def test_jobs_whose_ids_begin_alike_keep_to_their_own_rows(project: Any, tmp_path: Path, small_buckets: None) -> None:
    """A job's rows are read as a range of partitions (`<job>~...`): a job whose id begins with another's
    (`x` and `x-2`, `x_b`) must never be counted, cancelled or deleted with it."""
    runs = tmp_path / "runs.txt"
    base = f"pre-{project.uid}"
    ids = [base, f"{base}-2", f"{base}_b"]
    jobs = [table_job(project, job_id, tool_command("count", str(runs), "{KEY}", "0", "-", "0"), KEYS[:25])
            for job_id in ids]
    with get_backend("local", project.config()) as be:
        for job in jobs:
            be.submit(job)
        serve_until_idle(be, tmp_path)
        for job_id in ids:
            counts = be.task_counts(job_id)
            assert (counts.succeeded, counts.total) == (25, 25), job_id
            assert len(_partitions(be, job_id)) == 25
            assert len(list(be.list_task_results(job_id))) == 25
        be.submit(jobs[0], rerun="all")
        be.cancel(ids[0])
        be.delete(ids[0])
        assert _partitions(be, ids[0]) == {}
        for job_id in ids[1:]:  # untouched by the other's re-run, cancel and delete
            assert be.task_counts(job_id).succeeded == 25, job_id
            assert len(_partitions(be, job_id)) == 25
