"""Run the emulator as a background process (``batchyard emulator start --batch``).

``home/batch-emulator.json`` (0600) records pid, url, account and key file; the key itself
lives in ``home/batch-emulator.key`` (0600). The storage connection string and the key reach the
child through an inherited file descriptor (:mod:`batchyard.core.secret_handoff`): neither they nor
the key file's path are in its environment or command line, where its tasks could read them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from batchyard.core.errors import BatchyardError, EmulatorError
from batchyard.core.redact import redact, register_secret
from batchyard.core.secret_handoff import HANDOFF_VARIABLE, public_environment, secrets_fd

RECORD = "batch-emulator.json"
KEY_FILE = "batch-emulator.key"
READY_FILE = "batch-emulator.ready"
LOG_FILE = "batch-emulator.log"


@dataclass(frozen=True)
class BatchEmulatorRecord:
    url: str
    account_name: str
    account_key: str = field(repr=False)
    pid: int
    data_dir: Path


def read_or_create_key(path: Path) -> str:
    """The account key from a private file, created (0600) with a fresh random key if absent."""
    if path.exists():
        mode = path.stat().st_mode & 0o077
        if mode:
            raise BatchyardError(f"{path}: key file is readable by others (chmod 600 it)")
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = base64.b64encode(secrets.token_bytes(64)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
        if done == pid:
            return False
    return True


def _answers(url: str, timeout: float = 2.0) -> bool:
    """Any HTTP answer (an unsigned request gets 403) means the emulator is serving."""
    try:
        urllib.request.urlopen(f"{url}/pools?api-version=2025-06-01", timeout=timeout)  # noqa: S310 - loopback
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _load(home: Path) -> BatchEmulatorRecord | None:
    try:
        data = json.loads((home / RECORD).read_text())
        key = Path(data["key_file"]).read_text().strip()
    except (OSError, ValueError, KeyError):
        return None
    register_secret(key)
    return BatchEmulatorRecord(url=data["url"], account_name=data["account_name"], account_key=key,
                               pid=int(data["pid"]), data_dir=Path(data["data_dir"]))


def detached_status(*, home: Path) -> BatchEmulatorRecord | None:
    """The running emulator's record, or None (none recorded, dead pid, or not answering)."""
    record = _load(Path(home))
    if record is None or not _alive(record.pid) or not _answers(record.url):
        return None
    return record


def start_detached(*, home: Path, storage_connection_string: str, port: int = 0,
                   timeout: float = 20) -> BatchEmulatorRecord:
    """Start the emulator in its own session and wait until it answers; reuses a running one."""
    home = Path(home)
    running = detached_status(home=home)
    if running is not None:
        return running
    home.mkdir(parents=True, exist_ok=True)
    data_dir = home / "batch-emulator-data"
    ready = home / READY_FILE
    ready.unlink(missing_ok=True)
    try:
        key = read_or_create_key(home / KEY_FILE)
    except BatchyardError as exc:
        raise EmulatorError(str(exc)) from None
    handoff = secrets_fd({"storage_connection_string": storage_connection_string, "account_key": key})
    # Its tasks inherit its environment (minus secrets): the user's other secrets stay here too.
    env = {**public_environment(os.environ), HANDOFF_VARIABLE: str(handoff)}
    cmd = [sys.executable, "-m", "batchyard.emulator.batch", "--data-dir", str(data_dir), "--port", str(port),
           "--ready-file", str(ready)]
    try:
        with (home / LOG_FILE).open("ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True, pass_fds=(handoff,))
    finally:
        os.close(handoff)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = redact((home / LOG_FILE).read_text(errors="replace")[-2000:])
            raise EmulatorError(f"the Batch emulator exited with code {proc.returncode} while starting:\n{tail}")
        if ready.exists():
            info = json.loads(ready.read_text())
            if _answers(info["url"]):
                _write_private(home / RECORD, json.dumps({
                    "url": info["url"], "account_name": info["account_name"], "pid": proc.pid,
                    "data_dir": str(data_dir), "key_file": str(home / KEY_FILE)}, indent=2))
                record = _load(home)
                if record is not None:
                    return record
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    raise EmulatorError(f"the Batch emulator did not answer within {timeout:g} s (log: {home / LOG_FILE})")


def stop_detached(*, home: Path) -> bool:
    """Stop the recorded emulator (SIGTERM, then SIGKILL after 10 s); False if none was running."""
    home = Path(home)
    record = _load(home)
    was_running = record is not None and _alive(record.pid)
    if record is not None and was_running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(record.pid):
            time.sleep(0.1)
        if _alive(record.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)
    for name in (RECORD, READY_FILE):
        (home / name).unlink(missing_ok=True)
    return was_running
