"""Python functions on nodes that have no batchyard (issue #18, point 3).

The submitter's batchyard travels as a wheel built from the package it imports, uploaded once per
content into the system container and pip-installed by the pool's start task from a read-only SAS
URL; only its dependencies come from the node's package index. On the emulator the node is this
machine, so the test gives it a ``python3`` that cannot import batchyard: a venv whose only other
packages are this venv's dependencies (batchyard's editable install left out), which stand for what
a node's package index would supply.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from batchyard import __version__
from batchyard.api.mapping import _with_node_install, map_lines
from batchyard.api.node_wheel import build_node_wheel, wheel_filename
from batchyard.backends.azure.pools import start_task_command

sys.path.insert(0, str(Path(__file__).parent))
from test_azure_day_one import configure

pytestmark = pytest.mark.timeout(240)


def test_the_wheel_is_the_imported_package_and_the_same_files_give_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = build_node_wheel(tmp_path / "a"), build_node_wheel(tmp_path / "b")
    assert first.filename == wheel_filename() == f"batchyard-{__version__}-py3-none-any.whl"
    assert first.digest == second.digest and first.path.read_bytes() == second.path.read_bytes()
    names = zipfile.ZipFile(first.path).namelist()
    assert "batchyard/node/inline.py" in names and "batchyard/data/vm_prices.toml" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    metadata = zipfile.ZipFile(first.path).read(f"batchyard-{__version__}.dist-info/METADATA").decode()
    assert "Requires-Dist: pydantic" in metadata  # dependencies: from the node's package index


def test_an_azure_pool_gets_the_wheel_as_a_start_task_file(tmp_path: Path, project: Any) -> None:
    import dill

    from batchyard.core.config import load_config

    azure = load_config(project.dir / "batchyard.toml", backend="azure",
                        env={**project.env, "BATCHYARD_BATCH_URL": "https://acct.westeurope.batch.azure.com"})
    prepared = _with_node_install(azure, folder=tmp_path)
    assert prepared.pool_start_files == (tmp_path / wheel_filename(),)
    start = prepared.azure.pool.start_task
    assert f"./{wheel_filename()}" in start and f"dill=={dill.__version__}" in start
    assert f"batchyard=={__version__}" not in start  # no package index is asked for batchyard itself
    assert (start_task_command(prepared.azure.pool) or "").startswith("/bin/sh -c")


def _python3_without_batchyard(tmp_path: Path) -> Path:
    """A venv's bin dir whose python3 imports this venv's packages except batchyard (not even its
    editable finder), with pip among them: a node with a package index, and no batchyard."""
    node = tmp_path / "node-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(node)], check=True, timeout=120)
    deps = tmp_path / "index-packages"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        if "batchyard" not in entry.name.lower() and not entry.name.endswith(".pth"):
            (deps / entry.name).symlink_to(entry)
    python = node / "bin" / "python3"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    Path(site, "index-packages.pth").write_text(f"{deps}\n", encoding="utf-8")
    lacks = subprocess.run([str(python), "-P", "-c", "import batchyard"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert lacks.returncode != 0 and "No module named 'batchyard'" in lacks.stderr, lacks.stderr
    return node / "bin"


@pytest.mark.private_emulator  # its node must see this test's PATH
def test_a_node_without_batchyard_installs_the_submitters_from_the_start_task(
        project: Any, batch_emulator_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node_bin = _python3_without_batchyard(tmp_path)
    monkeypatch.setenv("PATH", f"{node_bin}{os.pathsep}{os.environ['PATH']}")
    emu = batch_emulator_factory()
    config = configure(project, emu).with_backend("azure")
    ins, outs = project.container("inputs"), project.container("outputs")
    project.put_inputs(ins, {"w.txt": b"wheel\n"})

    def where(line: str) -> str:
        import batchyard

        return f"{line.upper()} from {batchyard.__file__}"

    job_id = f"wheel-{uuid.uuid4().hex[:6]}"
    # python="python3": the node's interpreter, as on Azure (on the emulator the default is this one)
    run = map_lines(where, inputs=f"{ins}/w*", outputs=f"{outs}/{{job_id}}/", job_id=job_id, config=config,
                    python="python3", timeout=200)
    assert run.succeeded, run.results()
    out = project.storage.download_bytes(outs, f"{job_id}/w.txt").decode()
    node_prefix = str(node_bin.parent)
    assert out.startswith("WHEEL from ") and out.split(" from ", 1)[1].startswith(node_prefix), out
    # Uploaded once per content: a second job finds the blob there and adds none.
    system = config.storage.system_container
    blobs = list(project.storage.list_blob_names(system, "pool-files/"))
    digest = build_node_wheel(tmp_path).digest
    assert blobs == [f"pool-files/{digest}/{wheel_filename()}"], blobs
    again = map_lines(where, inputs=f"{ins}/w*", outputs=f"{outs}/{{job_id}}/", job_id=f"{job_id}-2",
                      config=config, python="python3", timeout=200)
    assert again.succeeded, again.results()
    assert list(project.storage.list_blob_names(system, "pool-files/")) == blobs


def test_the_start_task_url_reads_that_one_blob_only(project: Any, batch_emulator: Any, tmp_path: Path) -> None:
    from dataclasses import replace

    from batchyard.backends.azure.clients import make_client
    from batchyard.backends.azure.pools import PoolManager

    config = configure(project, batch_emulator)
    wheel = build_node_wheel(tmp_path)
    config = replace(config, pool_start_files=(wheel.path,))
    manager = PoolManager(make_client(config), project.storage, config)
    (staged,) = manager.stage_start_files()
    (again,) = manager.stage_start_files()
    assert staged.file_path == wheel_filename()
    url = urlsplit(staged.http_url)
    assert url.path.endswith(f"/pool-files/{wheel.digest}/{wheel_filename()}")
    query = parse_qs(url.query)
    assert query["sp"] == ["r"] and "sr" in query and query["sr"] == ["b"]
    assert urlsplit(again.http_url).path == url.path
