"""Issue #23, point 1: only the work a job's owner submitted runs.

Messages are put on the task queue the way an attacker with queue access would (the queue client
batchyard uses, or a raw one), and real workers serve it. A definition whose MAC is missing or
wrong, a valid message pointed at another job or given another argv, an ids-only message naming a
made-up task: none runs, none appears in the job's status, each is poisoned with its reason. A
finished job's tasks never run again. The emulator's nodes run only tasks added through the
authenticated Batch API.
"""

from __future__ import annotations

import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.documents import _checked_ids
from batchyard.backends.local.messages import TaskMessage, check_id, decode_text, definition_mac
from batchyard.core.errors import JobValidationError
from batchyard.core.job import TaskDef

from .support import TOOL, drain_queue, job_queue, queued, runs_of, serve_until_idle, table_job, tool_command

pytestmark = pytest.mark.timeout(240)
PY = sys.executable


def _evil(marker: Path, key: str = "evil") -> list[str]:
    """The argv of a command nobody submitted: it leaves ``marker`` if it ever runs."""
    return [PY, str(TOOL), "count", str(marker), key, "0", "-", "0"]


def _put(be: Any, body: dict[str, Any], on: str | None = None) -> None:
    """Put a message on the queue of job ``on`` (default: the job it names) the way batchyard's queue
    client does (anyone holding a queue SAS can)."""
    job_queue(be, on or body["job"]).send_message(json.dumps(body))


def _counted_job(project: Any, job_id: str, runs: Path, keys: list[str]) -> Any:
    return table_job(project, job_id, tool_command("count", str(runs), "{KEY}", "0", "-", "0"), keys)


# --------------------------------------------------------------------------- the format, no storage
def test_a_definition_mac_binds_the_job_the_task_and_every_field() -> None:
    key = b"k" * 43
    task = TaskDef(task_id="t-1", argv=("prog", "in.txt"), input_container="ins", input_blob="a/in.txt",
                   input_path="in.txt", params=(("A", "1"),))
    good = TaskMessage("job-1", ("t-1",), (task,), (definition_mac(key, "job-1", task),))
    assert good.forged(key) is None
    assert TaskMessage.decode(good.encode()).forged(key) is None  # survives the trip through JSON
    changed = [
        TaskMessage("job-2", ("t-1",), (task,), good.macs),  # another job
        TaskMessage("job-1", ("t-1",), (task,), good.macs),  # another key (below)
        *(TaskMessage("job-1", ("t-1",), (other,), good.macs) for other in (
            TaskDef(task_id="t-1", argv=("prog", "other.txt"), input_container="ins", input_blob="a/in.txt",
                    input_path="in.txt", params=(("A", "1"),)),
            TaskDef(task_id="t-1", argv=task.argv, input_container="sys", input_blob="jobs/x/job.json",
                    input_path="in.txt", params=(("A", "1"),)),
            TaskDef(task_id="t-1", argv=task.argv, input_container="ins", input_blob="a/in.txt",
                    input_path="in.txt", params=(("A", "2"),)),
            TaskDef(task_id="t-2", argv=task.argv, input_container="ins", input_blob="a/in.txt",
                    input_path="in.txt", params=(("A", "1"),)),
        )),
    ]
    keys = [key, b"x" * 43, key, key, key, key]
    for message, used in zip(changed, keys, strict=True):
        assert "wrong MAC" in (message.forged(used) or ""), message
    assert "carries no MAC" in (TaskMessage("job-1", ("t-1",), (task,)).forged(key) or "")
    assert "wrong MAC" in (TaskMessage("job-1", ("t-1",), (task,), ("\u00e9" * 64,)).forged(key) or "")


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "a\\b", "", "x" * 65, "a b", "t\n", "\u00e9t\u00e9"])
def test_ids_follow_batchs_rule_both_ways(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid id"):
        check_id(bad, "task id")
    with pytest.raises(ValueError, match=r"not a valid id|non-empty list of task ids"):
        TaskMessage.decode(json.dumps({"v": 1, "job": "j", "tasks": [bad]}))
    with pytest.raises(ValueError, match="not a valid id"):
        TaskMessage("j", (bad,)).encode()
    with pytest.raises(JobValidationError, match="is not a valid id"):
        _checked_ids(_job_stub(), [TaskDef(task_id="fine-1", argv=("x",)), TaskDef(task_id=bad, argv=("x",))])
    assert check_id("Ok_id-09" + "x" * 56, "task id")


def test_a_job_id_with_a_trailing_newline_is_refused_before_anything_is_queued() -> None:
    from batchyard.core.job import job_from_dict

    with pytest.raises(JobValidationError, match="not a valid job id"):
        job_from_dict({"id": "j\n", "command": "true", "inputs": {"container": "ins"}}, base_dir=Path.cwd())
    # And submit checks again, whatever built the job.
    job = _job_stub().model_copy(update={"id": "j\n"})
    with pytest.raises(JobValidationError, match="not a valid id"):
        _checked_ids(job, [TaskDef(task_id="fine-1", argv=("x",))])


def _job_stub() -> Any:
    from batchyard.core.job import job_from_dict

    return job_from_dict({"id": "j", "command": "true", "inputs": {"container": "ins"}}, base_dir=Path.cwd())


@pytest.mark.parametrize("content", ['{"v":1,"job":"j","tasks":["t"]}', "@@@@", "//79", "\u00e9"])
def test_a_message_not_base64_of_utf8_is_refused(content: str) -> None:
    with pytest.raises(ValueError, match="not base64-encoded UTF-8"):
        decode_text(content)


# --------------------------------------------------------------------------- end to end on the local backend
def test_forged_definitions_never_run_nor_appear_in_status(project: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    runs, marks = tmp_path / "runs.txt", tmp_path / "marks"
    marks.mkdir()
    mine = _counted_job(project, "secjob", runs, ["real"])
    theirs = _counted_job(project, "otherjob", runs, ["theirs"])
    with get_backend("local", project.config()) as be:
        be.submit(theirs)
        (captured,) = drain_queue(job_queue(be, "otherjob"))  # its one message, as an eavesdropper gets it
        be.submit(mine)
        forged = {
            "carries no MAC": {"v": 2, "job": "secjob", "tasks": ["evil-000000000001"],
                               "defs": [{"argv": _evil(marks / "plain.txt")}]},
            "wrong MAC": [
                {"v": 2, "job": "secjob", "tasks": ["evil-000000000002"],
                 "defs": [{"argv": _evil(marks / "made-up-mac.txt"), "mac": "0" * 64}]},
                # another job's document as the input
                {"v": 2, "job": "secjob", "tasks": ["evil-000000000003"],
                 "defs": [{"argv": _evil(marks / "doc.txt"), "c": be.store.system_container,
                           "b": "jobs/otherjob/job.json", "p": "doc.json", "mac": "f" * 64}]},
                {**captured, "job": "secjob"},  # a valid message of otherjob, re-addressed
                {**captured, "defs": [{**captured["defs"][0], "argv": _evil(marks / "argv.txt")}]},
            ],
            "was on the queue of job 'secjob'": {**captured, "queue": "secjob"},  # otherjob's, on secjob's queue
            "have no record": {"v": 1, "job": "secjob", "tasks": ["evil-000000000006"]},
        }
        sent = 0
        for bodies in forged.values():
            for body in bodies if isinstance(bodies, list) else [bodies]:
                _put(be, {k: v for k, v in body.items() if k != "queue"}, on=body.get("queue"))
                sent += 1
        caplog.set_level(logging.INFO, logger="batchyard")
        serve_until_idle(be, tmp_path)
        poisoned = drain_queue(be.store.poison_queue)
        _put(be, captured)  # the genuine message, as it was: it runs
        serve_until_idle(be, tmp_path)
        listed = {job.id: {r.task_id for r in be.list_task_results(job.id)} for job in (mine, theirs)}
        submitted = {job.id: {t.task_id for t in be.fan_out(job)} for job in (mine, theirs)}
        assert queued(be, "secjob") == queued(be, "otherjob") == 0
    assert not list(marks.iterdir()), "a command nobody submitted ran"
    assert sorted(runs_of(runs)) == ["real", "theirs"]
    assert listed == submitted, "a made-up task is in a job's status"
    assert len(poisoned) == sent, [p["reason"] for p in poisoned]
    reasons = [p["reason"] for p in poisoned]
    for why, bodies in forged.items():
        count = len(bodies) if isinstance(bodies, list) else 1
        assert sum(why in r for r in reasons) == count, (why, reasons)
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "poison queue" in r.getMessage()]
    assert len(warned) <= 2, "a warning per forged message (once per job is enough)"


def test_a_finished_jobs_tasks_never_run_again(project: Any, tmp_path: Path) -> None:
    runs, marks = tmp_path / "runs.txt", tmp_path / "marks"
    marks.mkdir()
    job = _counted_job(project, "donejob", runs, ["once", "twice"])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        captured = drain_queue(job_queue(be, job.id))
        for body in captured:
            _put(be, body)
        serve_until_idle(be, tmp_path)
        before = {r.task_id: (r.state, r.ended_at, r.attempts) for r in be.list_task_results(job.id)}
        assert {state for state, _, _ in before.values()} == {"succeeded"}
        for body in captured:  # the genuine messages, replayed
            _put(be, body)
        _put(be, {"v": 2, "job": "donejob", "tasks": ["late-000000000001"], "defs": [{"argv": _evil(marks / "late")}]})
        worker = serve_until_idle(be, tmp_path)
        after = {r.task_id: (r.state, r.ended_at, r.attempts) for r in be.list_task_results(job.id)}
        assert queued(be, job.id) == 0
    assert worker.tasks_run == 0 and after == before
    assert sorted(runs_of(runs)) == ["once", "twice"] and not list(marks.iterdir())


def test_a_task_id_dot_dot_is_refused_and_logs_says_so(project: Any, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    job = _counted_job(project, "dotjob", tmp_path / "runs.txt", ["ok"])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        _put(be, {"v": 2, "job": "dotjob", "tasks": [".."], "defs": [{"argv": _evil(marks / "dots.txt")}]})
        serve_until_idle(be, tmp_path)
        poisoned = drain_queue(be.store.poison_queue)
    assert [p["reason"] for p in poisoned] == [
        "malformed message: task id '..' is not a valid id (1-64 letters, digits, '-' or '_')"]
    assert not list(marks.iterdir())
    shown = project.cli("logs", "dotjob", "..")
    assert shown.returncode == 2 and "Traceback" not in shown.stderr, shown.stderr
    assert "Invalid value for 'TASK_ID': '..' is not an id" in shown.stderr, shown.stderr


@pytest.mark.parametrize("job_id", ["x/y", "x[/red]y", "..", "a" * 65])
def test_a_job_id_off_batchs_rule_is_a_usage_error_in_every_command(project: Any, tmp_path: Path,
                                                                     job_id: str) -> None:
    """Before any storage is asked: such an id would become part of a row key, a queue name or a path
    (Azurite answered 500 to ``x/y``, which ended as a traceback)."""
    commands = [("status", job_id), ("status", job_id, "--json"), ("logs", job_id, "some-task"),
                ("cancel", job_id), ("delete", job_id), ("download", job_id, str(tmp_path / "out")),
                ("report", job_id, "--json"), ("debug", job_id, "some-task")]
    for command in commands:
        shown = project.cli(*command)
        assert shown.returncode == 2, (command, shown.stderr)
        assert f"Invalid value for 'JOB_ID': {job_id!r} is not an id" in shown.stderr, (command, shown.stderr)
        assert "Traceback" not in shown.stderr, (command, shown.stderr)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the emulator's nodes
def test_emulator_nodes_run_only_tasks_added_with_the_account_key(batch_emulator: Any, tmp_path: Path) -> None:
    import base64
    import os

    from azure.batch import BatchClient
    from azure.batch import models as bm
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.exceptions import HttpResponseError

    def client(key: str) -> BatchClient:
        return BatchClient(batch_emulator.url, AzureNamedKeyCredential(batch_emulator.account_name, key),
                           retry_total=0)

    owner = client(batch_emulator.account_key)
    image = bm.BatchVmImageReference(publisher="Canonical", offer="ubuntu-24_04-lts", sku="server", version="latest")
    owner.create_pool(bm.BatchPoolCreateOptions(
        id="signed-pool", vm_size="standard_d2s_v3", target_dedicated_nodes=1, task_slots_per_node=2,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=image, node_agent_sku_id="batch.node.ubuntu 24.04")))
    owner.create_job(bm.BatchJobCreateOptions(id="signed-job", pool_info=bm.BatchPoolInfo(pool_id="signed-pool")))
    forged = bm.BatchTaskCreateOptions(id="forged", command_line=" ".join(_evil(tmp_path / "forged.txt")))
    with pytest.raises(HttpResponseError) as refused:
        client(base64.b64encode(os.urandom(64)).decode()).create_task("signed-job", forged)
    assert refused.value.status_code == 403
    unsigned = urllib.request.Request(
        f"{batch_emulator.url}/jobs/signed-job/tasks?api-version=2025-06-01", method="POST",
        data=json.dumps({"id": "unsigned", "commandLine": " ".join(_evil(tmp_path / "unsigned.txt"))}).encode(),
        headers={"Content-Type": "application/json; odata=minimalmetadata"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(unsigned, timeout=30)  # the emulator, on loopback
    assert answer.value.code == 403
    owner.create_task("signed-job", bm.BatchTaskCreateOptions(
        id="signed", command_line=" ".join(_evil(tmp_path / "signed.txt", "signed"))))
    from .support import wait_for

    wait_for(lambda: owner.get_task("signed-job", "signed").state == bm.BatchTaskState.COMPLETED,
             timeout=60, what="the signed task to complete", interval=0.2)
    assert [t.id for t in owner.list_tasks("signed-job")] == ["signed"]
    assert runs_of(tmp_path / "signed.txt") == ["signed"]
    assert not (tmp_path / "forged.txt").exists() and not (tmp_path / "unsigned.txt").exists()


def test_the_message_key_is_in_no_message_record_log_or_status(project: Any, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The job's message key lives in its document only: not in a queue or poison message, a row, a
    log blob, a log record at DEBUG, ``status --json``, an error or a repr."""
    from batchyard.backends.local.admission import job_message_key
    from batchyard.core.redact import MASK, redact

    runs = tmp_path / "runs.txt"
    job = table_job(project, "keyjob", tool_command("fail", str(runs), "{KEY}", "3"), ["k1", "k2"])
    caplog.set_level(logging.DEBUG)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        key = job_message_key(be.store, job.id).decode()
        texts = [m.content for m in job_queue(be, job.id).peek_messages(max_messages=32)]
        texts += [m.content for m in job_queue(be, job.id, raw=True).peek_messages(max_messages=32)]
        _put(be, {"v": 2, "job": "keyjob", "tasks": ["evil-000000000009"], "defs": [{"argv": ["true"], "mac": "1"}]})
        worker = serve_until_idle(be, tmp_path)
        texts += [json.dumps(p) for p in drain_queue(be.store.poison_queue)]
        texts += [json.dumps(dict(e), default=str) for e in be.store.tasks.list_entities()]
        texts += [json.dumps(dict(e), default=str) for e in be.store.jobs.list_entities()]
        texts += [be.storage.download_bytes(be.store.log_container, name).decode(errors="replace")
                  for name in be.storage.list_blob_names(be.store.log_container)]
        texts += [repr(obj) for obj in (be, be.store, worker, worker.admission)]
        assert {r.state for r in be.list_task_results(job.id)} == {"failed"}
    status = project.cli("status", "keyjob", "--json")
    assert status.returncode == 0, status.stderr
    texts += [status.stdout, status.stderr, caplog.text]
    assert len(texts) >= 8
    for text in texts:
        assert key not in text and key[:12] not in text
    assert redact(f"a {key} b") == f"a {MASK} b"  # registered: any place that slips would be masked
