"""``batchyard debug JOB TASK_ID``: a task that ran (on Azure Batch, the emulator or locally) run again here.

The backend says what the task is (:meth:`batchyard.backends.base.Backend.replay_task`); the
node package runs it, exactly as a worker or a node does: its files are staged into a kept task
dir under a node root of its own, in the ``AZ_BATCH_*`` layout, with the user's credentials;
its command runs with the task's argv, environment and image; nothing is uploaded. Then its
stdout and stderr are shown and the command exits with the task's exit code. ``--shell`` opens
a shell in the staged working dir with the task's environment instead. See docs/debugging.md.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from batchyard.backends.base import TaskReplay, TaskState
from batchyard.cli.common import (
    EXIT_ERROR,
    backend_context,
    backend_option,
    config_option,
    console,
    for_any_task_spelling,
    handle_errors,
    print_error,
    styled,
    verbose_option,
)
from batchyard.cli.params import BATCH_ID
from batchyard.cli.replays import discard_empty_root, new_replay_root
from batchyard.core.batch_semantics import batch_exit_code, log_file_name
from batchyard.core.redact import redact
from batchyard.core.secret_handoff import hide_credentials
from batchyard.node import docker
from batchyard.node.environment import task_environment
from batchyard.node.runner import run_attempt, stage_ahead
from batchyard.node.taskspec import AttemptRecord
from batchyard.storage.transfer import BlobTransfer

EXIT_INTERRUPTED = 130


@click.command()
@click.argument("job_id", type=BATCH_ID)
@click.argument("task_id", type=BATCH_ID)
@click.option("--shell", is_flag=True, help="Stage the task's files, then open a shell ($SHELL, else /bin/sh; "
              "/bin/sh in the task's container image) in its working dir with its environment, instead of "
              "running its command.")
@click.option("--dir", "root", type=click.Path(file_okay=False), default=None,
              help="The node root to replay under (default: a new folder under $BATCHYARD_HOME/debug).")
@backend_option
@config_option
@verbose_option
@handle_errors
def debug(job_id: str, task_id: str, shell: bool, root: str | None, backend: str | None, config_path: str | None,
          verbose: int) -> None:
    """Run task TASK_ID of job JOB_ID again here, as it ran (or a shell in it).

    The same command line, environment, resource files, input and container image, in a kept task
    dir that it prints (the AZ_BATCH_* layout of a node). Inputs are read with your credentials, not
    with the task's SAS. Nothing is uploaded. Shows the task's stdout and stderr and exits with its
    exit code (with --shell, the shell's). See docs/debugging.md.
    """
    config, be = backend_context(verbose, config_path, backend, job_id)  # the backend the job last ran on
    hide_credentials()  # again, now that the configuration registered its secrets (a custom variable's too)
    with be:
        job_id = be.resolve_job_id(job_id)  # any spelling, as Batch compares job ids
        node_root = Path(root).resolve() if root else new_replay_root(config.home, job_id, be.name)
        try:
            replay = for_any_task_spelling(be, job_id, task_id,
                                           lambda found: be.replay_task(job_id, found, node_root=node_root))
        except BaseException:
            if not root:  # nothing to replay: leave no empty folder behind
                discard_empty_root(node_root)
            raise
        _announce(replay, be.name)
        transfer = BlobTransfer(be.storage)
        code = _open_shell(replay, transfer) if shell else _run(replay, transfer)
    sys.exit(code)


def _announce(replay: TaskReplay, backend: str) -> None:
    spec, result = replay.spec, replay.result
    if result is None or result.state == TaskState.PENDING:
        before = "it has not run yet"
    else:
        before = "it is running" if result.state == TaskState.RUNNING else f"it {result.state}"
        before += f" with exit code {result.exit_code}" if result.exit_code is not None else ""
        before += f" on node {result.node_id}" if result.node_id else ""
        if result.failure_category and result.failure_category != "exit_code":  # the exit code says it all
            before += f" ({result.failure_category}: {result.failure_message})"
    console.print(styled("debug ", (f"{spec.job_id} {spec.task_id}", "bold"),
                         f" ({backend} backend; from {replay.source}): {before}"), highlight=False, soft_wrap=True)
    # The command line is shown as the user wrote it, but a secret typed into it is still masked here.
    console.print(f"command: {redact(shlex.join(spec.argv))}", highlight=False, soft_wrap=True)
    if spec.container_image:
        console.print(f"image: {spec.container_image}", highlight=False, soft_wrap=True)
    console.print(f"task dir: {_task_dir(replay)}", highlight=False, soft_wrap=True)


def _task_dir(replay: TaskReplay) -> Path:
    return replay.node.task_dir(replay.spec.job_id, replay.spec.task_id)


def _run(replay: TaskReplay, transfer: BlobTransfer) -> int:
    """Stage, run and show the logs; the task's exit code (EXIT_ERROR when it got none)."""
    cancel = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="debug-task") as pool:
        attempt = pool.submit(run_attempt, replay.spec, node=replay.node, transfer=transfer, cancel=cancel)
        try:
            record, _ = attempt.result()
        except KeyboardInterrupt:  # the command runs in its own session: Ctrl-C reaches only us
            cancel.set()  # the runner's watchdog kills the command's whole process tree
            attempt.result()
            console.print(f"interrupted: the task's processes were stopped; task dir kept: {_task_dir(replay)}",
                          highlight=False, soft_wrap=True)
            return EXIT_INTERRUPTED
    _show_logs(replay)
    return _exit_code(record, replay)


def _show_logs(replay: TaskReplay) -> None:
    for stream, target in (("stdout", sys.stdout.buffer), ("stderr", sys.stderr.buffer)):
        path = _task_dir(replay) / log_file_name(stream)
        if path.is_file():
            with path.open("rb") as fh:
                shutil.copyfileobj(fh, target)
        target.flush()


def _exit_code(record: AttemptRecord, replay: TaskReplay) -> int:
    code = batch_exit_code(record.exit_code)  # a signal death as a shell shows it (137 for SIGKILL)
    if record.failure_category == "timeout":
        console.print(f"the command was killed at its max_wall_clock_time "
                      f"({replay.spec.max_wall_clock_seconds:g} s)", highlight=False, soft_wrap=True)
    elif code is None:  # staging failed, or the command could not start: no exit code to give back
        print_error(f"{record.failure_category}: {record.failure_message}")
    console.print(f"exit code {'none' if code is None else code}; task dir kept: {_task_dir(replay)}",
                  highlight=False, soft_wrap=True)
    return EXIT_ERROR if code is None else code


def _open_shell(replay: TaskReplay, transfer: BlobTransfer) -> int:
    """Stage the task's files, then a shell in its working dir with its environment; the shell's exit code."""
    spec, node = replay.spec, replay.node
    staged = stage_ahead(spec, node=node, transfer=transfer)
    if staged.failure is not None:
        print_error(f"{staged.failure.failure_category}: {staged.failure.failure_message}")
        return EXIT_ERROR
    task_dir = _task_dir(replay)
    env = task_environment(spec, node, task_dir)
    if spec.container_image:
        argv = docker.shell_command(spec, node, task_dir, env, tty=sys.stdin.isatty())
    else:
        argv = [env.get("SHELL") or "/bin/sh"]
    console.print(f"shell in {task_dir / 'wd'} with the task's environment; `exit` to leave",
                  highlight=False, soft_wrap=True)
    try:
        shell = subprocess.Popen(argv, cwd=task_dir / "wd", env=env)
    except OSError as exc:
        print_error(f"cannot start the shell {argv[0]!r}: {exc.strerror or exc}")
        return EXIT_ERROR
    while True:
        try:
            return shell.wait()
        except KeyboardInterrupt:
            continue  # Ctrl-C reached the shell too (same terminal): the shell decides, this command waits
