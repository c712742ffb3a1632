"""Container tasks: a job's ``container_image`` runs its command inside that image.

Like a Batch container task: the node root (with the task's working dir) is mounted at the
same path inside the container, the command runs in ``$AZ_BATCH_TASK_WORKING_DIR`` with the
same ``AZ_BATCH_*`` variables and the job's environment (never the host's), with networking
disabled (files are staged on the host before, and uploaded from it after). Batch's two rules
for a Linux container task hold here too: the command line replaces the image's ENTRYPOINT
(its first word is the program, not an argument to the ENTRYPOINT), and the task runs as a
non-admin user unless elevated (root only then): :func:`container_user`. The wall clock kills
the container.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import requests

from batchyard.core.batch_semantics import log_file_name
from batchyard.core.errors import BatchyardError, MissingDependencyError
from batchyard.core.findings import Finding
from batchyard.core.job import Job
from batchyard.node.taskspec import NodeContext, TaskSpec

WAIT_STEP_S = 0.25
# A non-elevated task never runs as root in its container; when batchyard itself runs as root, the
# task gets this uid/gid (nobody) and its working dir is handed to it, as Batch's task user owns its own.
UNPRIVILEGED = (65534, 65534)
ROOT = "0:0"
ENGINE_FIX = ("start a Docker engine (e.g. `dockerd --bridge=none --iptables=false`, then set DOCKER_HOST), "
              "or remove container_image from the job")


class ContainerEngineError(BatchyardError):
    """No Docker engine answers, so a container task cannot run here."""


def engine() -> Any:
    """A connected docker client, or a clear error naming the fix."""
    try:
        import docker
    except ModuleNotFoundError:
        raise MissingDependencyError("container tasks need the docker package: pip install 'batchyard[docker]'") \
            from None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except Exception as exc:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        raise ContainerEngineError(f"container_image needs a Docker engine, and none answers at {where} "
                                   f"({type(exc).__name__}); {ENGINE_FIX}") from None


def container_environment(spec: TaskSpec, host_env: dict[str, str]) -> dict[str, str]:
    """What the container sees: the AZ_BATCH_* variables and the job's own, not the host's."""
    env = {k: v for k, v in host_env.items() if k.startswith("AZ_BATCH_")}
    env.update(spec.environment)
    return env


def container_user(spec: TaskSpec, task_dir: Path) -> str:
    """The ``uid:gid`` the task runs as in its container: root when elevated, else this machine's user, or
    :data:`UNPRIVILEGED` (owning the task's working dir from now on) when that user is root."""
    if spec.elevated:
        return ROOT
    uid, gid = os.getuid(), os.getgid()
    if uid != 0:
        return f"{uid}:{gid}"
    uid, gid = UNPRIVILEGED
    work = task_dir / "wd"
    for path in [work, *work.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):
            os.lchown(path, uid, gid)
    return f"{uid}:{gid}"


def image_has_file(image: str, path: str) -> bool | None:
    """Whether ``image`` (on this machine's Docker engine) holds ``path``; None when that cannot be told
    (no engine, no docker package, the image not there). Reads the image's files without running it."""
    try:
        import docker
        from docker.errors import ImageNotFound, NotFound

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception:
        return None
    try:
        container = client.containers.create(image, command=["true"], entrypoint=[], network_disabled=True)
    except ImageNotFound:
        return None
    except Exception:
        return None
    try:
        container.get_archive(path)
        return True
    except NotFound:
        return False
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def image_findings(job: Job) -> list[Finding]:
    """A container job with required outputs: Batch runs the command line in the container, so the check
    that they exist (a /bin/sh script around the command) needs /bin/sh in the image. Told from the image
    when this machine's Docker engine has it; otherwise said as a requirement."""
    patterns = job.required_patterns()
    if not job.container_image or not patterns:
        return []
    image, listed = job.container_image, ", ".join(repr(p) for p in patterns)
    fix = "use an image that has /bin/sh, or mark those outputs optional = true"
    has_shell = image_has_file(image, "/bin/sh")
    if has_shell is False:
        return [Finding("error", "image-needs-sh", f"container_image {image!r} has no /bin/sh, which checks the "
                        f"required outputs ({listed}) inside the container on Azure Batch: every task would fail "
                        "to start", fix)]
    if has_shell is None:
        return [Finding("info", "image-needs-sh", f"container_image {image!r} needs /bin/sh to check the required "
                        f"outputs ({listed}) on Azure Batch (not checked: the image is not on this machine's "
                        "Docker engine)", fix)]
    return []


def require_image(client: Any, image: str) -> None:
    """Raise a clear error unless ``image`` is on the engine already."""
    try:
        client.images.get(image)
    except Exception:
        # Never pulled implicitly: a task should not reach out to a registry behind the user's back.
        raise ContainerEngineError(f"image {image!r} is not on the Docker engine; pull, load or "
                                   "build it there first (batchyard never pulls implicitly)") from None


def shell_command(spec: TaskSpec, node: NodeContext, task_dir: Path, env: dict[str, str], *,
                  tty: bool, program: str = "/bin/sh") -> list[str]:
    """The ``docker run`` command line that opens ``program`` interactively in ``spec.container_image``
    the way :func:`run` runs the task there (node root mounted at its path, the working dir, the
    user, no network, ``program`` in place of the ENTRYPOINT), for ``batchyard debug --shell``.

    Start it with ``env`` (the task's environment) as its own: each variable the container gets
    is passed by name only (``-e NAME``), so no value appears on a command line.
    """
    require_image(engine(), spec.container_image or "")
    docker_cli = shutil.which("docker", path=env.get("PATH"))
    if docker_cli is None:
        raise ContainerEngineError("a shell in a container image needs the docker command on PATH "
                                   "(the Docker CLI); install it, or debug without --shell")
    root = str(node.root.resolve())
    argv = [docker_cli, "run", "--rm", "--interactive", *(["--tty"] if tty else []), "--network", "none",
            "--user", container_user(spec, task_dir), "--volume", f"{root}:{root}", "--entrypoint", program,
            "--workdir", str((task_dir / "wd").resolve()),
            "--label", f"batchyard.job={spec.job_id}", "--label", f"batchyard.task={spec.task_id}"]
    for name in container_environment(spec, env):
        argv += ["--env", name]
    return [*argv, spec.container_image or ""]


def run(spec: TaskSpec, node: NodeContext, task_dir: Path, env: dict[str, str],
        cancel: threading.Event | None) -> tuple[int | None, str | None]:
    """Run ``spec.argv`` in ``spec.container_image``; returns (exit code, None|'timeout'|'cancelled').

    stdout and stderr land in the task dir's stdout.txt / stderr.txt, as for a host command.
    """
    client = engine()
    require_image(client, spec.container_image or "")
    root = str(node.root.resolve())
    argv = list(spec.argv)
    container = client.containers.run(
        # As on Batch, the command line replaces the image's ENTRYPOINT rather than being appended to it.
        spec.container_image, entrypoint=argv[:1], command=argv[1:], working_dir=str((task_dir / "wd").resolve()),
        volumes={root: {"bind": root, "mode": "rw"}}, environment=container_environment(spec, env),
        network_disabled=True, user=container_user(spec, task_dir), detach=True,
        labels={"batchyard.job": spec.job_id, "batchyard.task": spec.task_id},
    )
    stopped: str | None = None
    deadline = time.monotonic() + spec.max_wall_clock_seconds if spec.max_wall_clock_seconds else None
    try:
        while True:
            step = WAIT_STEP_S if deadline is None else max(0.01, min(WAIT_STEP_S, deadline - time.monotonic()))
            try:
                status = container.wait(timeout=step)
                code: int | None = int(status.get("StatusCode", -1))
                break
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                pass  # this wait step timed out: the container still runs
            if deadline is not None and time.monotonic() >= deadline:
                stopped = "timeout"
            elif cancel is not None and cancel.is_set():
                stopped = "cancelled"
            if stopped:
                with contextlib.suppress(Exception):
                    container.kill()
                code = None
                break
        (task_dir / log_file_name("stdout")).write_bytes(container.logs(stdout=True, stderr=False) or b"")
        (task_dir / log_file_name("stderr")).write_bytes(container.logs(stdout=False, stderr=True) or b"")
        return code, stopped
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)
