"""Promises 3 and 11: Azurite restarted (or wiped) mid-job, and wrong storage credentials."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.local.worker import WorkerOptions
from batchyard.core.errors import AuthenticationError, BackendError
from batchyard.emulator.azurite import WELL_KNOWN_KEY, Azurite
from batchyard.storage.account import Storage

from .support import runs_of, spawn_worker, table_job, tool_command, wait_for


@dataclasses.dataclass
class OwnAzurite:
    """An Azurite of this test only, with persistent data, that can be restarted on the same ports."""

    root: Path
    azurite: Azurite
    ports: tuple[int, int, int] = (0, 0, 0)

    def start(self, location: str = "data") -> str:
        self.azurite = Azurite(home=self.root / "home", location=self.root / location, blob_port=self.ports[0],
                               queue_port=self.ports[1], table_port=self.ports[2])
        instance = self.azurite.start()
        self.ports = instance.ports
        return instance.connection_string()

    def stop(self) -> None:
        assert self.azurite.stop(), "Azurite was not running"


@pytest.fixture
def own(tmp_path: Path, project: Any) -> Iterator[tuple[OwnAzurite, Any]]:
    """(its Azurite, a project pointing at it)."""
    own = OwnAzurite(tmp_path / "az", Azurite(home=tmp_path / "az" / "home"))
    conn = own.start()
    project.env["AZURE_STORAGE_CONNECTION_STRING"] = conn
    moved = dataclasses.replace(project, storage=Storage.from_connection_string(conn), containers={})
    try:
        yield own, moved
    finally:
        own.azurite.stop()


def _names(storage: Storage) -> tuple[set[str], set[str]]:
    return ({q.name for q in storage.queue_service.list_queues()},
            {t.name for t in storage.table_service.list_tables()})


def test_azurite_restart_mid_job_workers_retry_and_finish(own: tuple[OwnAzurite, Any], tmp_path: Path) -> None:
    """3a. Azurite stops for 3 s while tasks run and upload: workers back off, the job completes, once each."""
    azurite, project = own
    outs = project.container("outputs")
    runs = tmp_path / "runs.txt"
    keys = [f"r{i}" for i in range(6)]
    job = table_job(project, "restart", tool_command("count", str(runs), "{KEY}", "1", "o.bin", "1"), keys,
                    outputs=[{"pattern": "o.bin", "container": outs, "path": "{job_id}/{KEY}.bin"}])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        queues_before, tables_before = _names(be.storage)
        created = be.store.get_job_entity(job.id)["created"]
        be.start_execution(job, workers=2, options=WorkerOptions(lease_s=2))
        try:
            wait_for(lambda: len(runs_of(runs)) >= 2, timeout=120, what="two tasks to start")
            azurite.stop()
            time.sleep(3)
            azurite.start()
            counts = be.wait(job.id, timeout=300, poll_interval=0.3)
        finally:
            be.stop_execution()
        results = list(be.list_task_results(job.id))
        assert counts.succeeded == len(keys), counts
        assert sorted(r.label for r in results) == sorted(f"KEY={k}" for k in keys), "one record per task"
        assert set(runs_of(runs)) == set(keys)
        for key in keys:
            assert project.storage.download_bytes(outs, f"restart/{key}.bin")[:32]
        assert _names(be.storage) == (queues_before, tables_before), "a worker created storage"
        assert be.store.get_job_entity(job.id)["created"] == created


def test_storage_wiped_mid_job_fails_loudly_as_lost(own: tuple[OwnAzurite, Any], tmp_path: Path) -> None:
    """3b. Azurite comes back empty (queue and tables gone): workers exit 3, wait raises, nothing recreated."""
    azurite, project = own
    runs = tmp_path / "runs.txt"
    job = table_job(project, "wiped", tool_command("count", str(runs), "{KEY}", "1", "-", "0"),
                    [f"w{i}" for i in range(4)])
    with get_backend("local", project.config()) as be:
        be.submit(job)
        be.start_execution(job, workers=2, options=WorkerOptions(lease_s=2))
        try:
            wait_for(lambda: runs_of(runs), timeout=120, what="a task to start")
            azurite.stop()
            azurite.start(location="empty-data")  # same ports, no data: the queue and tables are gone
            with pytest.raises(BackendError) as caught:  # raised, not waited out until the timeout
                be.wait(job.id, timeout=240, poll_interval=0.3)
            exit_codes = wait_for(lambda: [p.exitcode for p in be._procs if p.exitcode is not None] or None,
                                  timeout=120, what="a worker to exit")
        finally:
            be.stop_execution()
    message = str(caught.value)
    assert any(word in message for word in ("gone", "does not exist", "lost")), message
    assert 3 in exit_codes, exit_codes
    standalone = spawn_worker(project, index=7, idle_exit=30)
    assert standalone.wait(timeout=120) == 3
    log = (project.dir / "worker-7.log").read_text()
    assert "does not exist on the storage account" in log, log  # its jobs table, which names every job's queue
    assert _names(project.storage) == (set(), set()), "a worker silently re-created the queue or tables"


def test_wrong_storage_key_fails_preflight_before_enqueueing(project: Any) -> None:
    """11. A wrong AccountKey: preflight fails naming the key, shows no secret; nothing is queued or created."""
    good = project.env["AZURE_STORAGE_CONNECTION_STRING"]
    wrong_key = base64.b64encode(b"definitely-not-the-key-" * 3).decode()
    bad = good.replace(WELL_KNOWN_KEY, wrong_key)
    assert bad != good
    project.env["AZURE_STORAGE_CONNECTION_STRING"] = bad
    job = table_job(project, "badkey", tool_command("count", "/dev/null", "{KEY}", "0", "-", "0"), ["a"])
    be = get_backend("local", project.config())
    with pytest.raises(AuthenticationError) as caught:
        be.preflight()
    message = str(caught.value)
    assert "refused the credentials" in message and "AccountKey" in message and "403" in message
    for secret in (wrong_key, WELL_KNOWN_KEY, bad):
        assert secret not in message and secret not in repr(caught.value)

    (project.dir / "job.toml").write_text(
        f'id = "badkey"\ncommand = {tool_command("count", "/dev/null", "{KEY}", "0", "-", "0")!r}\n'
        f'tasks = "badkey.csv"\n', encoding="utf-8")
    assert job.id == "badkey"
    proc = project.cli("run", "job.toml", "-vv", timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "refused the credentials" in proc.stderr and "AccountKey" in proc.stderr
    for secret in (wrong_key, WELL_KNOWN_KEY):
        assert secret not in proc.stderr and secret not in proc.stdout
    # nothing was created or queued on the (real) account
    assert not list(project.storage.queue_service.list_queues(name_starts_with=be.store.queue_name))
    assert be.store._tasks_name not in {t.name for t in project.storage.table_service.list_tables()}
