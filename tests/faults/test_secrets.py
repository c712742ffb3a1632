"""Promise 14: no account key, connection-string key or SAS signature in logs, reprs, records, errors,
``status --json``, or a task's environment."""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from batchyard.backends import get_backend
from batchyard.backends.local.worker import Worker, WorkerOptions
from batchyard.core.errors import BatchyardError
from batchyard.emulator.azurite import WELL_KNOWN_KEY
from batchyard.node.runner import NodeContext, OutputFile, ResourceFile, TaskSpec, run_task
from batchyard.storage.account import StorageAccount, translate_error
from batchyard.storage.transfer import BlobTransfer

from .support import PY, TOOL, job_queue, table_job, tool_command


def _secrets(conn: str, *sas_urls: str) -> list[str]:
    account = StorageAccount.from_connection_string(conn)
    found = [account.account_key, quote(account.account_key, safe=""), conn]
    for url in sas_urls:
        (sig,) = parse_qs(urlsplit(url).query)["sig"]
        found += [sig, quote(sig, safe="")]
    assert WELL_KNOWN_KEY in found
    return found


def _assert_clean(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{where} shows a secret ({secret[:6]}...)"


def test_no_secret_in_logs_records_errors_or_reprs(project: Any, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A full run in this process (worker included) with every logger at DEBUG, plus SAS transfers."""
    for name in ("", "azure", "batchyard", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    conn = project.env["AZURE_STORAGE_CONNECTION_STRING"]
    ins, outs = project.container("inputs"), project.container("outputs")
    project.put_inputs(ins, {"a.txt": b"a", "b.txt": b"b"})
    out_dir = tmp_path / "argv"
    out_dir.mkdir()
    job = table_job(project, "secrets", tool_command("fail", str(tmp_path / "runs"), "{KEY}", "{KEY}"), ["0", "3"],
                    constraints={"max_task_retry_count": 1}, environment={"BY_VISIBLE": "yes"})
    with get_backend("local", project.config()) as be:
        be.preflight()
        be.submit(job)
        Worker(be.storage, be.config, work_dir=tmp_path / "work",
               options=WorkerOptions(lease_s=2, idle_exit_s=1.5)).serve(threading.Event())
        results = {r.label: r for r in be.list_task_results(job.id)}
        assert results["KEY=3"].failure_category == "exit_code" and results["KEY=0"].state == "succeeded"

        # SAS transfers through the runner (the Batch backends' way): a read SAS for the input, a missing
        # blob's SAS (an error message), a create/write container SAS for the output.
        storage = be.storage
        read_sas = storage.blob_sas_url(ins, "a.txt", expiry=timedelta(minutes=10), permission="r")
        gone_sas = storage.blob_sas_url(ins, "gone.txt", expiry=timedelta(minutes=10), permission="r")
        write_sas = storage.container_sas_url(outs, expiry=timedelta(minutes=10), permission="cw")
        secrets = _secrets(conn, read_sas, gone_sas, write_sas)
        spec = TaskSpec(job_id="sas", task_id="t1", argv=(PY, str(TOOL), "argv", str(out_dir / "x.json"), "{}"),
                        resource_files=(ResourceFile(file_path="in.txt", http_url=read_sas, is_input=True),),
                        output_files=(OutputFile(pattern="in.txt", path="sas/in.txt", container_url=write_sas),))
        ok = run_task(spec, node=NodeContext(root=tmp_path / "node"), transfer=BlobTransfer(storage))
        assert ok.succeeded, ok
        assert storage.download_bytes(outs, "sas/in.txt") == b"a"
        missing = run_task(
            TaskSpec(job_id="sas", task_id="t2", argv=("true",),
                     resource_files=(ResourceFile(file_path="in.txt", http_url=gone_sas, is_input=True),)),
            node=NodeContext(root=tmp_path / "node"), transfer=BlobTransfer(storage))
        assert missing.last.failure_category == "input_missing"
        assert "gone.txt" in (missing.last.failure_message or "")
        _assert_clean(repr(spec) + repr(spec.resource_files) + repr(spec.output_files), secrets, "TaskSpec repr")
        _assert_clean(json.dumps([a.to_dict() for a in ok.attempts + missing.attempts]), secrets, "attempts")

        # error messages: a refused call and an SDK error carrying the URL
        with pytest.raises(BatchyardError) as refused:
            BlobTransfer(storage).download(tmp_path / "x", url=gone_sas.replace("sig=", "sig=AAAA"))
        _assert_clean(str(refused.value), secrets, "error message")
        try:
            storage.container("no-such-container-zz").get_blob_client("b").download_blob().readall()
        except Exception as exc:
            _assert_clean(str(translate_error(exc, "reading")), secrets, "translated error")

        # reprs
        config = project.config()
        nodes_transfer = BlobTransfer(None, fast_path="auto")  # the one-request path's view of a SAS URL
        address = nodes_transfer._small_address(read_sas, "a.txt", by_account=False)
        assert address is not None and address.sas
        for obj in (storage, storage.account, config, config.storage, be, job, be.store, storage.fast, address):
            _assert_clean(repr(obj) + str(obj), secrets, f"repr of {type(obj).__name__}")

        # raw records: every table entity, the job document, every queue message (incl. poison), log blobs
        raw = [json.dumps(dict(e), default=str) for e in be.store.tasks.list_entities()]
        raw += [json.dumps(dict(e), default=str) for e in be.store.jobs.list_entities()]
        raw += [m.content for m in job_queue(be, job.id).peek_messages(max_messages=32)]
        raw += [m.content for m in be.store.poison_queue.peek_messages(max_messages=32)]
        for container in (be.store.system_container, be.store.log_container):
            for name in storage.list_blob_names(container):
                raw.append(storage.download_bytes(container, name).decode(errors="replace"))
        assert len(raw) >= 6
        _assert_clean("\n".join(raw), secrets, "raw records")

    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert any(r.name.startswith("azure") for r in caplog.records), "the Azure SDK loggers were not captured"
    _assert_clean(logged, secrets, "the log")
    _assert_clean(caplog.text, secrets, "the formatted log")


def test_cli_run_status_and_task_environment_hold_no_secret(project: Any, tmp_path: Path) -> None:
    """`run -vv` stderr/stdout, `status --json`, and what the command itself sees in its environment,
    also with the connection string in a custom variable (connection_string_env) and a container
    registry's password in the environment (password_env)."""
    conn = project.env["AZURE_STORAGE_CONNECTION_STRING"]
    registry_password = "registry-Pa55-" + "k3Yv" * 8
    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text().replace("[storage]\n", '[storage]\nconnection_string_env = "BY_MY_CONN"\n')
                    + '[[azure.container_registries]]\nserver = "myregistry.azurecr.io"\nusername = "me"\n'
                    'password_env = "MYREGISTRY_PASSWORD"\n')
    env_out = tmp_path / "env.json"
    (project.dir / "t.csv").write_text("KEY\nonly\n")
    (project.dir / "job.toml").write_text(
        f'id = "clisecrets"\ncommand = {tool_command("env", str(env_out))!r}\ntasks = "t.csv"\n', encoding="utf-8")
    extra = {"BY_MY_CONN": conn, "AZURE_STORAGE_KEY": WELL_KNOWN_KEY, "MYREGISTRY_PASSWORD": registry_password}
    secrets = [*_secrets(conn), registry_password]
    proc = project.cli("run", "job.toml", "-vv", "--workers", "1", env=extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HTTP" in proc.stderr or "Request" in proc.stderr, "expected the Azure SDK's -vv request log"
    _assert_clean(proc.stdout + proc.stderr, secrets, "batchyard run -vv")
    status = project.cli("status", "clisecrets", "--json", "-vv", env=extra)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["succeeded"] == 1
    _assert_clean(status.stdout + status.stderr, secrets, "status --json")
    seen = json.loads(env_out.read_text())
    assert "AZ_BATCH_TASK_ID" in seen
    _assert_clean(json.dumps(seen), secrets, "the task's environment")
    assert not {"BY_MY_CONN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING", "MYREGISTRY_PASSWORD"} & set(seen)
