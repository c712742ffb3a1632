"""Container tasks on a real Docker engine (skipped, with the reason, where none answers).

The image is built here from Debian's busybox-static with `docker import` (no registry is
reachable, and none is needed): it holds /etc/batchyard-image, a file the host does not have,
so reading it proves the command ran inside the container.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.core.job import job_from_dict

IMAGE = "batchyard-busybox:test"
ENTRYPOINT_IMAGE = "batchyard-busybox:entrypoint"
NO_SHELL_IMAGE = "batchyard-busybox:no-shell"
# Writes the uid it runs as and the staged input, with a shell the ENTRYPOINT image's /bin/echo would print.
WHO_AND_WHAT = "/bin/sh -c 'id -u > uid.txt; cat \"$1\" > seen.txt' sh {input}"
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


def _build(name: str, *, tools: tuple[str, ...] = ("sh", "cat", "echo", "tr", "id", "env"),
           changes: list[str] | None = None) -> str:
    """An image of busybox with ``tools`` linked in /bin and the marker file, built with no registry."""
    client = _engine()
    import docker

    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox (Debian's busybox-static) is not installed: nothing to build the test image from")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for tool in tools:
            link = tarfile.TarInfo(f"bin/{tool}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        info = tarfile.TarInfo("etc/batchyard-image")
        info.size = len(MARKER)
        tar.addfile(info, io.BytesIO(MARKER))
    repository, tag = name.split(":")
    try:
        previous = client.images.get(name).id
    except docker.errors.ImageNotFound:
        previous = None
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag, changes=changes)
    if previous is not None and previous != client.images.get(name).id:
        # The tag moved to the new import: the old image would stay behind untagged, run after run.
        with contextlib.suppress(docker.errors.APIError):  # a container of another test still uses it
            client.images.remove(previous)
    return name


@pytest.fixture(scope="module")
def image() -> str:
    return _build(IMAGE)


@pytest.fixture(scope="module")
def entrypoint_image() -> str:
    """An image whose ENTRYPOINT would swallow the command as its arguments, were they appended to it."""
    return _build(ENTRYPOINT_IMAGE, changes=['ENTRYPOINT ["/bin/echo", "from-the-entrypoint"]'])


@pytest.fixture(scope="module")
def shell_less_image() -> str:
    """Like a distroless image: no /bin/sh."""
    return _build(NO_SHELL_IMAGE, tools=("cat", "cp"))


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


def _emulator_config(project: Any, emulator: Any) -> Any:
    import sys

    from batchyard.core.config import load_config

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conformance.test_azure_emulator import azure_env

    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
                    + "[azure]\npoll_interval = 0.3\n", encoding="utf-8")
    return load_config(toml, env=azure_env(project, emulator))


def _run_container_job(project: Any, config: Any, job: Any) -> Any:
    with get_backend(None, config) as be:
        be.preflight()
        be.submit(job)
        assert be.run_to_end(job, workers=1, timeout=120, poll_interval=0.3).finished
        (result,) = list(be.list_task_results(job.id))
    return result


@pytest.mark.private_emulator  # its node dirs are under tmp_path, a folder the engine can mount
@pytest.mark.parametrize("where", ["local", "emulator"])
@pytest.mark.parametrize("elevated", [False, True])
def test_the_command_replaces_the_entrypoint_and_runs_as_root_only_when_elevated(
        project: Any, entrypoint_image: str, request: pytest.FixtureRequest, where: str, elevated: bool) -> None:
    config = (_emulator_config(project, request.getfixturevalue("batch_emulator")) if where == "emulator"
              else project.config())
    ins, outs = project.container("inputs"), project.container("outputs")
    project.put_inputs(ins, {"in.txt": b"the command ran\n"})
    job = job_from_dict({
        "id": f"entry-{where}-{'root' if elevated else 'user'}", "container_image": entrypoint_image,
        "command": WHO_AND_WHAT, "elevated": elevated, "inputs": {"container": ins},
        "outputs": [{"pattern": "*.txt", "container": outs}],  # required: so also checked by /bin/sh on Batch
    }, source="test", base_dir=project.dir)
    result = _run_container_job(project, config, job)
    assert result.state == "succeeded", result  # appended to the ENTRYPOINT, echo would print it: no outputs
    assert project.storage.download_bytes(outs, f"{job.id}/seen.txt") == b"the command ran\n"
    uid = int(project.storage.download_bytes(outs, f"{job.id}/uid.txt"))
    if elevated:
        assert uid == 0
    else:
        assert uid != 0 and uid == (os.getuid() or 65534)


def test_required_outputs_need_no_shell_in_the_image_locally(project: Any, shell_less_image: str) -> None:
    ins, outs = project.container("inputs"), project.container("outputs")
    project.put_inputs(ins, {"in.txt": b"copied\n"})
    job = job_from_dict({"id": "noshell-local", "container_image": shell_less_image, "command": "cp {input} out.txt",
                         "inputs": {"container": ins}, "outputs": [{"pattern": "out.txt", "container": outs}]},
                        source="test", base_dir=project.dir)
    with get_backend("local", project.config()) as be:  # the check runs on the host here
        be.submit(job)
        assert be.run_to_end(job, workers=1, timeout=120, poll_interval=0.3).finished
        (result,) = list(be.list_task_results(job.id))
    assert result.state == "succeeded", result
    assert project.storage.download_bytes(outs, "noshell-local/out.txt") == b"copied\n"


@pytest.mark.private_emulator
def test_plan_and_run_on_azure_say_an_image_without_a_shell_cannot_check_required_outputs(
        project: Any, shell_less_image: str, image: str, batch_emulator: Any) -> None:
    from batchyard.core.errors import ConfigError
    from batchyard.node.docker import image_findings

    config = _emulator_config(project, batch_emulator)
    ins = project.container("inputs")
    project.put_inputs(ins, {"in.txt": b"x\n"})

    def job(image_name: str, *, optional: bool = False) -> Any:
        return job_from_dict({"id": "noshell-azure", "container_image": image_name, "command": "cp {input} out.txt",
                              "inputs": {"container": ins},
                              "outputs": [{"pattern": "out.txt", "container": "outs", "optional": optional}]},
                             source="test", base_dir=project.dir)

    (finding,) = image_findings(job(shell_less_image))
    assert (finding.severity, finding.code) == ("error", "image-needs-sh")
    assert f"container_image '{shell_less_image}' has no /bin/sh" in finding.message
    assert image_findings(job(shell_less_image, optional=True)) == []  # nothing to check: no shell needed
    assert image_findings(job(image)) == []
    (unknown,) = image_findings(job("batchyard-no-such-image:1"))
    assert unknown.severity == "info" and "not checked" in unknown.message
    (project.dir / "job.toml").write_text(
        f'id = "noshell-plan"\ncommand = "cp {{input}} out.txt"\ncontainer_image = "{shell_less_image}"\n'
        f'[inputs]\ncontainer = "{ins}"\n[[outputs]]\npattern = "out.txt"\ncontainer = "outs"\n', encoding="utf-8")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conformance.test_azure_emulator import azure_env

    planned = project.cli("plan", "job.toml", "--backend", "azure", "--json", env=azure_env(project, batch_emulator))
    assert planned.returncode == 1, planned.stderr
    codes = [f["code"] for f in json.loads(planned.stdout)["findings"]]
    assert codes.count("image-needs-sh") == 1, codes  # plan's rehearsal and the backend's preflight: once
    rehearsed = project.cli("plan", "job.toml", "--backend", "local", "--json")  # plan rehearses Azure there too
    assert rehearsed.returncode == 1 and "image-needs-sh" in rehearsed.stdout, rehearsed.stdout
    with get_backend(None, config) as be, pytest.raises(ConfigError, match="has no /bin/sh"):
        be.submit(job(shell_less_image))
