"""Hold credentials where the commands batchyard runs cannot read them.

On Linux any process of the same user (and root) reads another's environment *as it was exec'd*
(``/proc/PID/environ``) and its arguments (``/proc/PID/cmdline``). A task runs as its worker's user,
below the worker and ``batchyard run`` (or the Batch emulator): a key in their environment is a key
the task can read, and deleting it from ``os.environ`` changes nothing there, because the kernel
reads the block the process started with. Two tools close that:

- :func:`hide_credentials` overwrites, in this process's own startup environment block, the value
  of every sensitive variable (:func:`is_sensitive`) with NUL bytes, so ``/proc/PID/environ`` shows
  ``NAME=`` and no more, then puts each value back with ``putenv`` (a copy on the heap): ``os.environ``,
  ``getenv`` and the children batchyard starts with the inherited environment see what they saw before.
  Processes forked afterwards (the local workers) inherit the cleared block. It also turns
  ``PR_SET_DUMPABLE`` off, so a process of the same non-root user cannot read this one's memory, open
  files or environment through ``/proc`` at all (root still can: root can read anything).
- :func:`secrets_fd` and :func:`receive_secrets` hand secrets to a child through an inherited file
  descriptor named by ``BATCHYARD_SECRETS_FD``; the child reads it once and closes it. Used to start the
  detached Batch emulator, so its environment and command line never hold the storage connection string,
  the account key or the path of the key file.

Why not re-exec ``batchyard`` with the secrets moved into a pipe: importing batchyard takes about a
second (measured on a loaded 2-core machine), a re-exec would pay it twice on every command;
clearing the block in place costs nothing, keeps the pid (a supervisor waiting on it is
unaffected) and also works in a worker started by a library user's own process.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from batchyard.core.errors import BatchyardError
from batchyard.core.redact import redact

HANDOFF_VARIABLE = "BATCHYARD_SECRETS_FD"
# The variables batchyard reads credentials from (docs/configuration.md), by default name.
CREDENTIAL_VARIABLES: frozenset[str] = frozenset({
    "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN",
    "BATCHYARD_BATCH_KEY", "AZURE_BATCH_ACCESS_KEY", "AZURE_CLIENT_SECRET",
})
# Names where batchyard keeps keys on disk (the Batch emulator's key file is in BATCHYARD_HOME): not
# secret themselves, but no ancestor of a task should point it there.
STATE_VARIABLES: frozenset[str] = frozenset({"BATCHYARD_HOME"})
# Custom names (``connection_string_env``, ``batch_key_env``, ``password_env``) are caught by their
# value once the configuration registered it, and most of them by a name like these.
_SECRET_NAME = re.compile(r"(?i)(?:^|_)(?:KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIALS?|SAS|CONNECTION_STRING)(?:_|$)")
_PR_SET_DUMPABLE = 4
_MAX_HANDOFF_BYTES = 16 * 1024  # what any pipe holds unread (a parent writes before the child runs)


def is_sensitive(name: str, value: str) -> bool:
    """Whether a variable is kept out of what other processes can read of this one."""
    return (name in CREDENTIAL_VARIABLES or name in STATE_VARIABLES or bool(_SECRET_NAME.search(name))
            or redact(value) != value)


def public_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without its sensitive variables: the environment to start a child with."""
    return {name: value for name, value in environ.items() if not is_sensitive(name, value)}


def hide_credentials(*, not_dumpable: bool = True) -> list[str]:
    """Clear sensitive values from what ``/proc/<this pid>/environ`` shows; returns their names.

    Call it before starting anything a task descends from, and again once the configuration has
    registered its secrets (a key under a custom variable name is recognised by its value then).
    ``not_dumpable`` also sets ``PR_SET_DUMPABLE`` to 0 (batchyard's own processes; a library
    user's process keeps its own setting).
    """
    cleared = _clear_environ_block()
    if not_dumpable:
        _set_not_dumpable()
    return cleared


def _environ_block() -> tuple[int, int] | None:
    """Start and end address of this process's startup environment (fields 50, 51 of proc(5) stat)."""
    try:
        stat = Path("/proc/self/stat").read_bytes()
    except OSError:  # not Linux: no /proc to read it from either
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # fields[0] is field 3: the name before it may hold spaces
    if len(fields) < 49:
        return None
    start, end = int(fields[47]), int(fields[48])
    return (start, end) if 0 < start < end else None


def _clear_environ_block() -> list[str]:
    block = _environ_block()
    if block is None:
        return []
    start, end = block
    raw = ctypes.string_at(start, end - start)
    cleared: list[str] = []
    offset = 0
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and value:  # a value cleared before is an empty entry followed by empty ones
            text_name = os.fsdecode(name)
            if is_sensitive(text_name, os.fsdecode(value)):
                ctypes.memset(start + offset + len(name) + 1, 0, len(value))
                cleared.append(text_name)
        offset += len(entry) + 1
    for name in cleared:
        # libc's environ still points into the cleared block: give it a copy of the value (os.environ
        # kept its own), so getenv() and inherited environments are unchanged.
        if name in os.environ:
            os.putenv(name, os.environ[name])
    return cleared


def _set_not_dumpable() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                              ctypes.c_ulong(0))) == 0
    except (OSError, AttributeError):  # no prctl (not Linux)
        return False


def secrets_fd(secrets: Mapping[str, str]) -> int:
    """A file descriptor a child reads ``secrets`` from once (:func:`receive_secrets`).

    Start the child with ``pass_fds=(fd,)`` and ``{HANDOFF_VARIABLE: str(fd)}`` in its environment, then
    close the fd in the parent. An anonymous memory file where the OS has one, else a pipe; either is
    closed on exec, so only the child given it in ``pass_fds`` inherits it.
    """
    payload = json.dumps(dict(secrets)).encode()
    if len(payload) > _MAX_HANDOFF_BYTES:
        raise BatchyardError(f"secrets to hand to a child process exceed {_MAX_HANDOFF_BYTES} bytes")
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("batchyard-secrets")
        written = 0
        while written < len(payload):
            written += os.write(fd, payload[written:])
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, payload)
    finally:
        os.close(write_end)
    return read_end


def receive_secrets() -> dict[str, str]:
    """The secrets a parent handed over with :func:`secrets_fd` (empty if none); the fd is closed after."""
    named = os.environ.pop(HANDOFF_VARIABLE, None)
    if not named:
        return {}
    try:
        fd = int(named)
        if fd < 3:  # stdin, stdout, stderr: never a hand-off
            raise ValueError(named)
        with os.fdopen(fd, "rb", closefd=True) as fh:
            data = json.loads(fh.read(_MAX_HANDOFF_BYTES + 1))
    except (ValueError, OSError) as exc:
        raise BatchyardError(f"{HANDOFF_VARIABLE}: no secrets could be read from file descriptor {named!r} "
                             f"({type(exc).__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise BatchyardError(f"{HANDOFF_VARIABLE}: the handed-over secrets are not a JSON object of strings")
    return {str(k): v for k, v in data.items()}
