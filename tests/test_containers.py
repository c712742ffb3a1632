"""Container tasks on a real Docker engine (skipped, with the reason, where none answers).

The image is built here from Debian's busybox-static with `docker import` (no registry is
reachable, and none is needed): it holds /etc/batchyard-image, a file the host does not have,
so reading it proves the command ran inside the container.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.core.job import job_from_dict

IMAGE = "batchyard-busybox:test"
MARKER = b"batchyard-test-image\n"
pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


def _engine() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        return client
    except Exception as exc:
        pytest.skip(f"no Docker engine answers here ({type(exc).__name__}); .ci/run starts one where it can")


@pytest.fixture(scope="module")
def image() -> str:
    client = _engine()
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox (Debian's busybox-static) is not installed: nothing to build the test image from")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for tool in ("sh", "cat", "echo", "tr", "id", "env"):
            link = tarfile.TarInfo(f"bin/{tool}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        info = tarfile.TarInfo("etc/batchyard-image")
        info.size = len(MARKER)
        tar.addfile(info, io.BytesIO(MARKER))
    client.api.import_image_from_data(buffer.getvalue(), repository=IMAGE.split(":")[0], tag=IMAGE.split(":")[1])
    return IMAGE


def test_container_task_runs_inside_the_image(project: Any, image: str) -> None:
    assert not Path("/etc/batchyard-image").exists(), "the host must not have the marker file"
    ins, outs = project.container("inputs"), project.container("outputs")
    project.put_inputs(ins, {"a b.txt": b"hello from the host\n"})
    job = job_from_dict({
        "id": "incontainer", "container_image": image,
        # Reads a file only the image has, and the staged input, and shows the task's environment.
        "command": "/bin/sh -c 'cat /etc/batchyard-image \"$1\" > seen.txt; env > env.txt' sh {input}",
        "inputs": {"container": ins}, "environment": {"BY_FROM_JOB": "yes"},
        "outputs": [{"pattern": "*.txt", "container": outs}],
    }, source="test", base_dir=project.dir)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        assert be.run_to_end(job, workers=1, timeout=120, poll_interval=0.3).finished
        (result,) = list(be.list_task_results(job.id))
    assert result.state == "succeeded", result
    assert project.storage.download_bytes(outs, "incontainer/seen.txt") == MARKER + b"hello from the host\n"
    env = dict(line.split("=", 1) for line in
               project.storage.download_bytes(outs, "incontainer/env.txt").decode().splitlines() if "=" in line)
    assert env["AZ_BATCH_TASK_ID"] == result.task_id and env["BY_FROM_JOB"] == "yes"
    assert "AZURE_STORAGE_CONNECTION_STRING" not in env and env.get("HOME") != os.environ.get("HOME", "?")


def test_missing_image_is_refused_before_anything_is_queued(project: Any) -> None:
    _engine()
    ins = project.container("inputs")
    project.put_inputs(ins, {"x.txt": b"x"})
    job = job_from_dict({"id": "noimage", "container_image": "batchyard-no-such-image:1", "command": "true",
                         "inputs": {"container": ins}}, source="test", base_dir=project.dir)
    from batchyard.node.docker import ContainerEngineError

    with get_backend("local", project.config()) as be, pytest.raises(ContainerEngineError, match="never pulls"):
        be.submit(job)


@pytest.mark.private_emulator  # its node dirs are under tmp_path, a folder the engine can mount
def test_container_task_through_the_azure_backend_on_the_emulator(project: Any, image: str,
                                                                  batch_emulator: Any) -> None:
    """containerSettings on the task and containerConfiguration on the per-job pool, run by the emulator."""
    import sys

    from batchyard.core.config import load_config

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conformance.test_azure_emulator import azure_env

    ins, outs = project.container("inputs"), project.container("outputs")
    project.put_inputs(ins, {"in.txt": b"via batch\n"})
    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
                    + "[azure]\npoll_interval = 0.3\n", encoding="utf-8")
    config = load_config(toml, env=azure_env(project, batch_emulator))
    job = job_from_dict({
        "id": "azcontainer", "container_image": image,
        "command": "/bin/sh -c 'cat /etc/batchyard-image \"$1\" > seen.txt' sh {input}",
        "inputs": {"container": ins}, "outputs": [{"pattern": "seen.txt", "container": outs}],
    }, source="test", base_dir=project.dir)
    with get_backend(None, config) as be:
        be.preflight()
        be.submit(job)
        assert be.wait(job.id, timeout=120, poll_interval=0.3).finished
        (result,) = list(be.list_task_results(job.id))
    assert result.state == "succeeded", result
    assert project.storage.download_bytes(outs, "azcontainer/seen.txt") == MARKER + b"via batch\n"
