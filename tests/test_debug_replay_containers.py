"""`batchyard debug` of a container_image task: in the image on a real Docker engine (skipped, with the
reason, where none answers), and a clear error where the engine is missing (runs everywhere)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.core.config import load_config
from batchyard.core.job import job_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from conformance.test_azure_emulator import azure_env
from test_containers import MARKER, image  # noqa: F401  (image: the module's fixture, the test image built once)

pytestmark = pytest.mark.timeout(240)
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/batchyard-no-docker.sock"}


def debug(project: Any, env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchyard", "debug", *args], cwd=project.dir, env=env, input=stdin,
                          capture_output=True, text=True, timeout=150)


@pytest.mark.docker
def test_a_container_task_replays_inside_its_image_and_its_shell_too(project: Any, image: str) -> None:  # noqa: F811
    ins = project.container("inputs")
    project.put_inputs(ins, {"e.txt": b"echo\n"})
    job = job_from_dict({"id": f"inimage-{uuid.uuid4().hex[:6]}", "container_image": image,
                         "command": "/bin/sh -c 'cat /etc/batchyard-image \"$1\"; exit 4' sh {input}",
                         "inputs": {"container": ins}}, source="test", base_dir=project.dir)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        assert be.run_to_end(job, workers=1, timeout=120, poll_interval=0.3).finished
        (result,) = list(be.list_task_results(job.id))
    assert (result.state, result.exit_code) == ("failed", 4), result

    replayed = debug(project, project.env, job.id, result.task_id)
    assert replayed.returncode == 4, replayed.stderr
    assert replayed.stdout.encode() == MARKER + b"echo\n", "the command must have run inside the image"
    assert f"image: {image}" in replayed.stderr

    shell = debug(project, project.env, job.id, result.task_id, "--shell",
                  stdin='cat /etc/batchyard-image\necho "task=$AZ_BATCH_TASK_ID"\nls\nenv\nexit 6\n')
    assert shell.returncode == 6, shell.stderr
    lines = shell.stdout.splitlines()
    assert lines[:3] == [MARKER.decode().strip(), f"task={result.task_id}", "e.txt"], shell.stdout
    assert "AZURE_STORAGE_CONNECTION_STRING" not in shell.stdout
    assert project.storage.account.account_key not in shell.stdout + shell.stderr


def test_a_container_task_without_an_engine_is_a_clear_error(project: Any, batch_emulator: Any) -> None:
    """On the azure backend (the emulator accepts container tasks whatever the engine): the image is
    named, the replay and the shell both say the engine is missing and how to fix it, no traceback."""
    ins = project.container("inputs")
    project.put_inputs(ins, {"f.txt": b"f"})
    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
                    + "[azure]\npoll_interval = 0.3\n", encoding="utf-8")
    env = azure_env(project, batch_emulator)
    job = job_from_dict({"id": f"noengine-{uuid.uuid4().hex[:6]}", "container_image": "batchyard-debug-absent:1",
                         "command": "cat {input}", "inputs": {"container": ins}}, source="test", base_dir=project.dir)
    with get_backend(None, load_config(toml, env=env)) as be:
        be.submit(job)
        assert be.wait(job.id, timeout=120, poll_interval=0.3).finished
        (result,) = list(be.list_task_results(job.id))
    assert result.state == "failed", "no engine here has that image: the node could not start it"

    for args in ((), ("--shell",)):
        run = debug(project, {**env, **NO_ENGINE}, job.id, result.task_id, *args)
        assert run.returncode == 3, run.stderr
        assert "image: batchyard-debug-absent:1" in run.stderr and "Traceback" not in run.stderr
        assert "needs a Docker engine" in run.stderr and "DOCKER_HOST" in run.stderr, run.stderr
