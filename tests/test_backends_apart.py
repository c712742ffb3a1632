"""The backends side by side: the azure backend keeps to its own records and settings.

Real Azurite, the Batch emulator over HTTP through the real SDK, real CLI processes. Every
check compares this test's own names (its project's queue, tables and containers), never
assumes an empty Azurite.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.azure.clients import is_loopback_url
from batchyard.core.config import load_config
from batchyard.core.errors import BackendError, ConfigError
from batchyard.core.job import job_from_dict
from batchyard.emulator.azurite import Azurite

sys.path.insert(0, str(Path(__file__).parent))
from conformance.test_azure_emulator import azure_env

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parent.parent
# A Batch URL that is not on loopback. `.invalid` never resolves (RFC 2606), and the checks below
# refuse it before any client exists; the CLI runs also get a loopback proxy, so even a broken
# check could send nothing off this machine.
REMOTE_BATCH_URL = "https://mybatch.westeurope.batch.invalid"
DEAD_END_PROXY = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                  "NO_PROXY": "127.0.0.1,localhost,::1"}


def _queues_and_tables(project: Any) -> set[str]:
    """This test's queues and tables on the shared Azurite (names hold the project's unique id)."""
    names = {q.name for q in project.storage.queue_service.list_queues()}
    names |= {t.name for t in project.storage.table_service.list_tables()}
    return {name for name in names if project.uid in name}


def test_azure_run_creates_no_queue_and_no_table(project: Any, batch_emulator: Any) -> None:
    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
                    + "[azure]\npoll_interval = 0.3\n", encoding="utf-8")
    config = load_config(toml, env=azure_env(project, batch_emulator))
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"alpha", "b.txt": b"beta"})
    (project.dir / "tool.sh").write_text("#!/bin/sh\ncat \"$1\"\n", encoding="utf-8")
    job = job_from_dict({"id": f"apart-{project.uid}", "command": "sh tool.sh {input}", "inputs": {"container": ins},
                         "resource_files": [{"source": "tool.sh"}]}, source="test", base_dir=project.dir)
    before = _queues_and_tables(project)
    with get_backend(None, config) as be:
        be.preflight()
        assert be.submit(job).enqueued == 2
        counts = be.wait(job.id, timeout=60, poll_interval=0.2)
        assert (counts.succeeded, counts.failed) == (2, 0)
        assert be.job(job.id).id == job.id, "the job document was not kept"
    after = _queues_and_tables(project)
    assert after == before, f"the azure backend created {sorted(after - before)} in the user's account"
    prefix = config.storage.table_prefix
    assert not {config.storage.queue, f"{config.storage.queue}-poison", f"{prefix}jobs", f"{prefix}tasks"} & after
    blobs = set(project.storage.list_blob_names(config.storage.system_container, f"jobs/{job.id}/"))
    assert blobs == {f"jobs/{job.id}/job.json", f"jobs/{job.id}/resources/tool.sh", f"jobs/{job.id}/azure-runs.json",
                     f"jobs/{job.id}/tasks.json.gz"}  # the manifest: what `download` follows


def test_azure_backend_without_storage_refuses_and_starts_no_azurite(project: Any, tmp_path: Path) -> None:
    home = tmp_path / "home-no-storage"
    env = {k: v for k, v in project.env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    # A closed loopback port: whatever a broken check did next would stay on this machine.
    env.update({"BATCHYARD_HOME": str(home), "BATCHYARD_BACKEND": "azure", "BATCHYARD_BATCH_URL": "http://127.0.0.1:9",
                "BATCHYARD_BATCH_ACCOUNT": "acct", "BATCHYARD_BATCH_KEY": "a2V5LWZvci1hLWNsb3NlZC1wb3J0"})
    try:
        with pytest.raises(ConfigError) as info:
            get_backend(None, load_config(project.dir / "batchyard.toml", env=env))
        message = str(info.value)
        assert "AZURE_STORAGE_CONNECTION_STRING" in message and "never starts a local Azurite" in message
        status = subprocess.run([sys.executable, "-m", "batchyard", "status", "some-job"], cwd=project.dir, env=env,
                                capture_output=True, text=True, timeout=60)  # project.cli would add the storage
        assert status.returncode == 2, status.stderr
        assert "no storage account configured" in status.stderr and "Traceback" not in status.stderr
        assert Azurite(home=home).status() is None, "the azure backend started Azurite"
    finally:
        Azurite(home=home).stop()  # only if a regression started one: never leave it running


def test_loopback_storage_with_a_remote_batch_url_is_refused_before_anything_exists(project: Any) -> None:
    env = {**project.env, "BATCHYARD_BACKEND": "azure", "BATCHYARD_BATCH_URL": REMOTE_BATCH_URL,
           "BATCHYARD_BATCH_ACCOUNT": "mybatch", "BATCHYARD_BATCH_KEY": "a2V5LW5ldmVyLXNlbnQ="}
    config = load_config(project.dir / "batchyard.toml", env=env)
    with pytest.raises(ConfigError) as info:
        get_backend(None, config)
    message = str(info.value)
    assert "AZURE_STORAGE_CONNECTION_STRING" in message and "BATCHYARD_BATCH_URL" in message
    assert REMOTE_BATCH_URL in message and "127.0.0.1" in message and "loopback" in message
    assert project.env["AZURE_STORAGE_CONNECTION_STRING"] not in message
    ins = project.container("inputs")
    project.put_inputs(ins, {"a.txt": b"a"})
    (project.dir / "job.toml").write_text(f'id = "remote"\ncommand = "cat {{input}}"\n[inputs]\ncontainer = "{ins}"\n',
                                          encoding="utf-8")
    before = _queues_and_tables(project)
    run = project.cli("run", "job.toml", env={**env, **DEAD_END_PROXY})
    assert run.returncode == 2, run.stderr + run.stdout
    assert "is on loopback" in run.stderr and "Traceback" not in run.stderr
    containers = {c.name for c in project.storage.blob_service.list_containers()}
    assert config.storage.system_container not in containers and config.storage.log_container not in containers
    assert _queues_and_tables(project) == before


def test_emulator_on_loopback_with_loopback_storage_is_accepted(project: Any, batch_emulator: Any) -> None:
    """The rule refuses only the mix: Batch and storage both on loopback (the emulator) is fine."""
    config = load_config(project.dir / "batchyard.toml", backend="azure", env=azure_env(project, batch_emulator))
    with get_backend(None, config) as be:
        be.preflight()
        assert be.name == "azure" and be.storage.account.blob_endpoint.startswith("http://127.0.0.1")


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:10000/devstoreaccount1", True), ("http://127.5.6.7", True), ("http://[::1]:8080/", True),
    ("http://localhost:10000", True), ("http://api.localhost", True), ("http://[::ffff:127.0.0.1]/", True),
    ("https://acct.blob.core.windows.net", False), ("http://azurite:10000/acct", False),
    ("http://128.0.0.1", False), ("acct.westeurope.batch.azure.com", False), ("127.0.0.1:8080", True),
])
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_optional_parts_of_the_interface_refuse_clearly(project: Any) -> None:
    with get_backend(None, project.config()) as local:
        with pytest.raises(BackendError, match="local backend has no pools"):
            local.created_pools()
        with pytest.raises(BackendError, match="local backend has no pools"):
            local.delete_created_pool("any")
    env = {**project.env, "BATCHYARD_BATCH_URL": "http://127.0.0.1:9", "BATCHYARD_BATCH_ACCOUNT": "acct",
           "BATCHYARD_BATCH_KEY": "a2V5"}
    azure = get_backend("azure", load_config(project.dir / "batchyard.toml", env=env))
    with azure, pytest.raises(BackendError, match="`batchyard worker` serves the local backend"):
        azure.serve_workers(workers=1)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any level (functions and TYPE_CHECKING blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("cli", ("batchyard.backends.local", "batchyard.backends.azure")),
    ("api", ("batchyard.backends.local", "batchyard.backends.azure")),
    ("backends/azure", ("batchyard.backends.local", "batchyard.emulator")),
    ("core", ("batchyard.emulator",)),
])
def test_modules_reach_backends_only_through_the_registry(folder: str, forbidden: tuple[str, ...]) -> None:
    offenders = {f"{path.relative_to(REPO)} imports {name}"
                 for path in (REPO / "batchyard" / folder).rglob("*.py") for name in _imports(path)
                 if name.startswith(forbidden)}
    assert not offenders, sorted(offenders)


def test_the_local_store_does_not_import_its_tally() -> None:
    """tally reads through the store; the store never imports tally (no circle, lazy imports included)."""
    store = _imports(REPO / "batchyard/backends/local/store.py")
    assert not {name for name in store if name.startswith("batchyard.backends.local.tally")}
    assert "batchyard.backends.local.store" in _imports(REPO / "batchyard/backends/local/tally.py")


def test_pool_cli_reaches_the_azure_backend_through_the_registry(project: Any, batch_emulator: Any) -> None:
    """`batchyard pool list --json` runs on the interface's created_pools (the pool it lists is ours)."""
    pool_id = f"apart-{uuid.uuid4().hex[:6]}"
    config = load_config(project.dir / "batchyard.toml", backend="azure", env=azure_env(project, batch_emulator))
    from batchyard.core.config import PoolSection

    with get_backend(None, config) as be:
        be.pools.create(pool_id, PoolSection(dedicated_nodes=0), job_id=None)  # type: ignore[attr-defined]
    listed = subprocess.run([sys.executable, "-m", "batchyard", "pool", "list", "--json"], cwd=project.dir,
                            env=azure_env(project, batch_emulator), capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["pool_id"], row["job_id"], row["state"], row["nodes"]) == (pool_id, None, "active", 0)
