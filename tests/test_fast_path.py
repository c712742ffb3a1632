"""The seam between the hand-signed storage path (fast_rest) and the Azure SDK pipeline.

One place (``batchyard/storage/fast_path.py``) decides: hand-signed REST only to loopback
endpoints and only while ``[storage] fast_path`` / ``BATCHYARD_FAST_PATH`` is not ``off``. The
decisive test runs a real local job through a relay that records every request the workers send to
Azurite: with the fast path off, their per-task requests carry the SDKs' User-Agent and current API
versions; on (loopback), fast_rest's.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from batchyard.backends import get_backend
from batchyard.backends.base import TaskState
from batchyard.core.config import ENV_FAST_PATH, load_config
from batchyard.core.errors import ConfigError
from batchyard.core.job import job_from_dict
from batchyard.storage.account import Storage, StorageAccount
from batchyard.storage.fast_path import FastPath, is_loopback
from batchyard.storage.fast_rest import BLOB_API_VERSION, QUEUE_API_VERSION, TABLE_API_VERSION, USER_AGENT
from batchyard.storage.transfer import BlobTransfer

LOOPBACK = ["http://127.0.0.1:10000/devstoreaccount1", "http://127.8.9.10/x", "https://[::1]:443/a",
            "http://localhost:10002/acct", "http://LOCALHOST./acct"]
ELSEWHERE = ["https://myaccount.blob.core.windows.net", "https://myaccount.table.core.windows.net/t",
             "http://10.0.0.4:10000/devstoreaccount1", "http://192.168.1.20/x", "http://azurite:10000/devstoreaccount1",
             "http://localhost.example.com/x", "http://127.0.0.1.example.com/x", "http://[fe80::1]/x"]


def _account(endpoint: str) -> StorageAccount:
    return StorageAccount(account_name="acct", account_key="a2V5", blob_endpoint=f"{endpoint}/blob",
                          queue_endpoint=f"{endpoint}/queue", table_endpoint=f"{endpoint}/table")


def test_only_loopback_endpoints_are_on_the_fast_path() -> None:
    assert [is_loopback(url) for url in LOOPBACK] == [True] * len(LOOPBACK)
    assert [is_loopback(url) for url in ELSEWHERE] == [False] * len(ELSEWHERE)
    auto, off = FastPath(lambda: pytest.fail("no client for a refused request"), "auto"), FastPath(
        lambda: pytest.fail("no client when off"), "off")
    assert [auto.client_for(url) for url in ELSEWHERE] == [None] * len(ELSEWHERE)
    assert [off.client_for(url) for url in LOOPBACK] == [None] * len(LOOPBACK)
    assert auto.client_for(LOOPBACK[0], ELSEWHERE[0]) is None  # every endpoint of the call must be loopback


def test_a_real_account_goes_through_the_sdk(project: Any, tmp_path: Path) -> None:
    # Nothing is sent: the decision is made before any request.
    real = Storage(_account("https://myaccount.core.windows.net"), fast_path="auto")
    assert real.fast is None
    transfer = BlobTransfer(real)
    blob = transfer.blob_client(container="inputs", name="a.txt")
    assert transfer._small_address(blob.url, "inputs/a.txt", by_account=True) is None
    sas_blob = BlobTransfer(None).blob_client(url="https://myaccount.blob.core.windows.net/c/a.txt?sv=1&sig=abc")
    assert BlobTransfer(None)._small_address(sas_blob.url, "c/a.txt", by_account=False) is None
    # The same account on loopback is on the fast path unless turned off.
    local = project.storage.account
    assert Storage(local, fast_path="auto").fast is not None
    assert Storage(local, fast_path="off").fast is None
    assert Storage(replace(local, table_endpoint="https://myaccount.table.core.windows.net")).fast is None


def test_the_setting_comes_from_the_file_or_the_environment(project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = project.dir / "batchyard.toml"
    text = re.sub(r'fast_path = "\w+"', 'fast_path = "off"', toml.read_text(encoding="utf-8"))
    toml.write_text(text, encoding="utf-8")
    without_env = {k: v for k, v in project.env.items() if k != ENV_FAST_PATH}
    assert load_config(toml, env=without_env).storage.fast_path == "off"
    assert load_config(toml, env={**without_env, ENV_FAST_PATH: "AUTO"}).storage.fast_path == "auto"  # env wins
    toml.write_text(text.replace('fast_path = "off"', ""), encoding="utf-8")
    assert load_config(toml, env=without_env).storage.fast_path == "auto"  # the default
    with pytest.raises(ConfigError, match=f"{ENV_FAST_PATH}='fast': expected one of auto, off"):
        load_config(toml, env={**without_env, ENV_FAST_PATH: "fast"})
    monkeypatch.setenv(ENV_FAST_PATH, "fast")  # a Storage made without a config reads the variable
    with pytest.raises(ConfigError, match=ENV_FAST_PATH):
        Storage(project.storage.account)


def test_a_bad_setting_is_a_clear_error_from_the_cli(project: Any) -> None:
    bad_env = project.cli("status", "x", env={ENV_FAST_PATH: "on"})
    assert bad_env.returncode == 2 and f"{ENV_FAST_PATH}='on'" in bad_env.stderr + bad_env.stdout
    toml = project.dir / "batchyard.toml"
    toml.write_text(re.sub(r'fast_path = "\w+"', 'fast_path = "fastest"', toml.read_text(encoding="utf-8")),
                    encoding="utf-8")
    bad_file = project.cli("status", "x", env={ENV_FAST_PATH: ""})
    assert bad_file.returncode == 2 and "storage.fast_path" in bad_file.stderr + bad_file.stdout
    assert "Traceback" not in bad_env.stderr + bad_file.stderr


# --- what the workers send, seen on the wire --------------------------------------------------------

_REQUEST = re.compile(rb"(GET|PUT|POST|PATCH|HEAD|DELETE|MERGE|OPTIONS) (/\S*) HTTP/1\.1\r\n((?:[^\r\n]+\r\n)*)\r\n")


class RecordingRelay:
    """A TCP relay on 127.0.0.1 to one Azurite port that keeps every byte clients send through it."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}{parts.path}"
        self._sent: list[bytearray] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            record = bytearray()
            with self._lock:
                self._sent.append(record)
            threading.Thread(target=self._relay, args=(conn, record), daemon=True).start()

    def _relay(self, conn: socket.socket, record: bytearray) -> None:
        with conn, socket.create_connection(self.target) as upstream:
            def back() -> None:
                with contextlib.suppress(OSError):
                    while data := upstream.recv(65536):
                        conn.sendall(data)
                with contextlib.suppress(OSError):  # Azurite closed an idle connection: so does the relay
                    conn.shutdown(socket.SHUT_RDWR)
            answers = threading.Thread(target=back, daemon=True)
            answers.start()
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    with self._lock:
                        record.extend(data)
                    upstream.sendall(data)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)
            answers.join(timeout=60)

    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        """(method, unquoted path, headers in lower case) of each request received so far."""
        with self._lock:
            streams = [bytes(record) for record in self._sent]
        found = []
        for stream in streams:
            for match in _REQUEST.finditer(stream):
                headers = dict(line.split(":", 1) for line in match.group(3).decode("latin-1").split("\r\n") if line)
                found.append((match.group(1).decode(), unquote(match.group(2).decode().partition("?")[0]),
                              {k.strip().lower(): v.strip() for k, v in headers.items()}))
        return found

    def close(self) -> None:
        self.listener.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_a_workers_per_task_traffic_goes_where_the_seam_says(project: Any, mode: str) -> None:
    # One worker and 32 tasks: two tasks per queue message, so claims and results go in table
    # transactions (a task's result with the next one's claim), the third per-task call.
    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("workers = 2", "workers = 1"), encoding="utf-8")
    inputs, outputs = project.container("inputs"), project.container("outputs")
    names = [f"f{i:02d}" for i in range(32)]
    project.put_inputs(inputs, {f"{name}.txt": f"payload {name}\n".encode() for name in names})
    account = project.storage.account
    blob_relay, table_relay = RecordingRelay(account.blob_endpoint), RecordingRelay(account.table_endpoint)
    try:
        relayed = replace(account, blob_endpoint=blob_relay.url, table_endpoint=table_relay.url)
        config = load_config(toml, env={
            **project.env, "AZURE_STORAGE_CONNECTION_STRING": relayed.connection_string(), ENV_FAST_PATH: mode})
        job = job_from_dict({"id": f"seam-{mode}", "command": "cp {input} {input_stem}.out",
                             "inputs": {"container": inputs},
                             "outputs": [{"pattern": "*.out", "container": outputs, "path": "out/"}]},
                            source="test", base_dir=project.dir)
        with get_backend("local", config) as be:
            be.submit(job)
            be.run_to_end(job, workers=1, timeout=180, poll_interval=0.3)
            results = list(be.list_task_results(job.id))
        blobs, tables = blob_relay.requests(), table_relay.requests()
    finally:
        blob_relay.close()
        table_relay.close()
    assert sorted(r.state for r in results) == [TaskState.SUCCEEDED] * len(names)
    for name in names:
        assert project.storage.download_bytes(outputs, f"out/{name}.out") == f"payload {name}\n".encode()

    gets = [h for m, path, h in blobs if m == "GET" and f"/{inputs}/" in path]
    puts = [h for m, path, h in blobs if m == "PUT" and f"/{outputs}/out/" in path]
    batches = [h for m, path, h in tables if m == "POST" and path.endswith("/$batch")]
    assert len(gets) >= len(names) and len(puts) >= len(names) and batches, (len(gets), len(puts), len(batches))
    if mode == "off":
        sdk_blob, sdk_table = project.storage.blob_service.api_version, project.storage.table_service.api_version
        assert sdk_blob > BLOB_API_VERSION  # the SDK's current version, not the pin (tables: both 2019-02-02)
        every = [h for _, _, h in blobs + tables]
        assert all(h["user-agent"].startswith("azsdk-python-") for h in every)
        assert {h["x-ms-version"] for h in gets + puts} == {sdk_blob}
        assert {h["x-ms-version"] for h in batches} == {sdk_table}
    else:
        assert all(h["user-agent"] == USER_AGENT for h in gets + puts + batches)
        assert {h["x-ms-version"] for h in gets + puts} == {BLOB_API_VERSION}
        assert {h["x-ms-version"] for h in batches} == {TABLE_API_VERSION}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_a_submits_queue_puts_go_where_the_seam_says_and_read_back_as_sent(project: Any, mode: str) -> None:
    from batchyard.backends.local.admission import job_message_key
    from batchyard.backends.local.messages import TaskMessage, decode_text

    keys = [f"k{i:04d}" for i in range(3000)]  # a job big enough for messages of many tasks
    (project.dir / "rows.csv").write_text("KEY\n" + "".join(f"{k}\n" for k in keys), encoding="utf-8")
    account = project.storage.account
    relay = RecordingRelay(account.queue_endpoint)
    try:
        relayed = replace(account, queue_endpoint=relay.url)
        config = load_config(project.dir / "batchyard.toml", env={
            **project.env, "AZURE_STORAGE_CONNECTION_STRING": relayed.connection_string(), ENV_FAST_PATH: mode})
        job = job_from_dict({"id": f"puts-{mode}", "command": "echo {KEY}", "tasks": "rows.csv"},
                            source="test", base_dir=project.dir)
        with get_backend("local", config) as be:
            be.submit(job)
            key = job_message_key(be.store, job.id)
            raw = be.store.queue_client(be.store.get_job_entity(job.id)["queue"], decode=False)
            received = []
            while batch := list(raw.receive_messages(max_messages=32, visibility_timeout=60)):
                received += [TaskMessage.decode(decode_text(m.content)) for m in batch]
        puts = [h for m, path, h in relay.requests() if m == "POST" and path.endswith("/messages")]
    finally:
        relay.close()
    assert len(puts) == len(received) and 1 < len(received) < len(keys) // 32, (len(puts), len(received))
    assert all(m.forged(key) is None for m in received), "a worker would refuse a message"
    assert sorted(t for m in received for t in m.task_ids) == sorted(t.task_id for t in be.fan_out(job))
    if mode == "off":
        assert all(h["user-agent"].startswith("azsdk-python-") for h in puts)
    else:
        assert all(h["user-agent"] == USER_AGENT and h["x-ms-version"] == QUEUE_API_VERSION for h in puts)


def test_a_put_to_a_missing_queue_fails_alike_on_both_paths(project: Any) -> None:
    from batchyard.backends.local.messages import TaskMessage
    from batchyard.backends.local.store import JobStore
    from batchyard.core.errors import StorageError

    errors = {}
    for mode in ("auto", "off"):
        storage = Storage(project.storage.account, fast_path=mode)
        assert (storage.fast_queue is not None) == (mode == "auto")
        store = JobStore(storage, project.config())
        with pytest.raises(StorageError) as caught:
            store.send(TaskMessage("job-x", ("t-1",)), queue=f"gone-{project.uid}")
        errors[mode] = str(caught.value)
    assert all(e.startswith("queueing tasks of job 'job-x': QueueNotFound") for e in errors.values()), errors
    assert project.storage.account.account_key not in "".join(errors.values())
