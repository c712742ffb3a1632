"""Azurite processes on loopback: start one under Node.js, probe it, stop it.

:class:`AzuriteInstance` describes a running Azurite (its ports, pid or container); :func:`launch`
starts one and waits until blob, queue and table answer; :func:`start_ephemeral` gives a fresh one
that nothing records (the tests' and benchmarks' own). The user's long-lived instance, recorded
under ``$BATCHYARD_HOME``, is :class:`batchyard.emulator.azurite.Azurite`, built on these.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from batchyard.core.errors import EmulatorError
from batchyard.core.paths import make_private_dir
from batchyard.emulator.azurite_install import AZURITE_VERSION, find_node, install_azurite

log = logging.getLogger("batchyard.emulator.azurite")

WELL_KNOWN_ACCOUNT = "devstoreaccount1"
# Public: Microsoft documents this key for every Azurite / storage emulator.
WELL_KNOWN_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ACCOUNTS_VARIABLE = "AZURITE_ACCOUNTS"  # Azurite's own: "name:key" replaces its default account
SERVICES = ("blob", "queue", "table")
LOOPBACK = "127.0.0.1"
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # started by this interpreter, reaped here


@dataclass(frozen=True)
class AzuriteInstance:
    """A running Azurite. Its account key never shows in repr (nor takes part in comparisons)."""

    blob_port: int
    queue_port: int
    table_port: int
    pid: int | None  # None when running under docker
    location: Path | None
    host: str = LOOPBACK
    container_id: str | None = None
    account_key: str = field(default=WELL_KNOWN_KEY, repr=False, compare=False)

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.blob_port, self.queue_port, self.table_port)

    def endpoint(self, service: str) -> str:
        return f"http://{self.host}:{self.ports[SERVICES.index(service)]}/{WELL_KNOWN_ACCOUNT}"

    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={WELL_KNOWN_ACCOUNT};AccountKey={self.account_key};"
                + "".join(f"{s.capitalize()}Endpoint={self.endpoint(s)};" for s in SERVICES))


def pick_ports(requested: tuple[int, int, int]) -> tuple[int, int, int]:
    """`requested`, each 0 replaced by a distinct free loopback port (found by binding port 0)."""
    socks: list[socket.socket] = []
    ports = list(requested)
    try:
        for i in range(len(ports)):
            while not ports[i]:
                socks.append(sock := socket.socket())
                sock.bind((LOOPBACK, 0))
                got = sock.getsockname()[1]
                ports[i] = 0 if got in requested else got
    finally:
        for sock in socks:
            sock.close()
    return ports[0], ports[1], ports[2]


def answers_http(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if anything speaking HTTP answers on host:port (any status counts)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", f"/{WELL_KNOWN_ACCOUNT}")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def log_tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            tail = fh.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\nlast lines of {path}:\n" + "\n".join(tail) if tail else ""


def wait_ready(instance: AzuriteInstance, timeout: float, dead: Callable[[], str | None] | None,
                log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    pending = list(instance.ports)
    while pending := [port for port in pending if not answers_http(instance.host, port)]:
        if dead is not None and (why := dead()) is not None:
            raise EmulatorError(f"Azurite {why} before it was ready{log_tail(log_path)}")
        if time.monotonic() >= deadline:
            raise EmulatorError(f"Azurite did not answer HTTP on {instance.host} port(s) {pending} "
                                f"within {timeout:g}s{log_tail(log_path)}")
        time.sleep(0.1)


def wait_until_ready(instance: AzuriteInstance, *, timeout: float) -> None:
    """Block until blob, queue and table all answer HTTP; EmulatorError on timeout or death."""
    pid = instance.pid
    wait_ready(instance, timeout, None if pid is None else lambda: None if is_azurite(pid) else "is gone")


def is_azurite(pid: int) -> bool:
    """True if `pid` is a live Azurite (not a zombie, not a recycled pid)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # our child has exited (now reaped)
        return False
    try:
        return any(arg.endswith("azurite.js") for arg in psutil.Process(pid).cmdline())
    except psutil.Error:  # gone, zombie, or not ours to inspect
        return False


def terminate(pid: int, *, group: bool, timeout: float) -> bool:
    """SIGTERM (to its process group if `group`), wait, then SIGKILL. True if it was running."""
    if not is_azurite(pid):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if group and os.getpgid(pid) == pid else os.kill)(pid, sig)
        deadline = time.monotonic() + wait
        while is_azurite(pid):  # a zombie counts as gone: its reaper may be slow
            if time.monotonic() >= deadline:
                log.warning("Azurite pid %d still running %gs after %s", pid, wait, sig.name)
                break
            time.sleep(0.05)
        else:
            _CHILDREN.pop(pid, None)
            return True
    raise EmulatorError(f"could not stop Azurite (pid {pid})")


def azurite_flags(bind: str, location: str, ports: tuple[int, int, int]) -> list[str]:
    pairs = zip(SERVICES, ports, strict=True)
    hosts = [arg for s, p in pairs for arg in (f"--{s}Host", bind, f"--{s}Port", str(p))]
    return [*hosts, "--location", location, "--disableTelemetry", "--skipApiVersionCheck", "--silent"]


def accounts_env(base: dict[str, str], account_key: str | None) -> dict[str, str]:
    """Azurite's environment for ``account_key`` (its one account then takes that key instead of the
    public one); without one, none of the caller's ``AZURITE_ACCOUNTS``, so the well-known key works."""
    env = {k: v for k, v in base.items() if k != ACCOUNTS_VARIABLE}
    if account_key is not None:
        env[ACCOUNTS_VARIABLE] = f"{WELL_KNOWN_ACCOUNT}:{account_key}"
    return env


def launch(location: Path, log_path: Path, requested: tuple[int, int, int], cache: Path | None, *,
            new_session: bool, timeout: float, account_key: str | None = None) -> AzuriteInstance:
    """Start Azurite under node and wait until it answers; new ports if a picked one got taken.

    With ``account_key`` its account takes that key (``AZURITE_ACCOUNTS``), not the public one.
    """
    main_js, node = install_azurite(cache), find_node()
    make_private_dir(location)  # Azurite's data: every blob, queue message and table row
    if log_path.exists():
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    deadline = time.monotonic() + timeout
    attempts = 3 if 0 in requested else 1
    for attempt in range(1, attempts + 1):
        ports = pick_ports(requested)
        argv = [str(node.node), str(main_js), *azurite_flags(LOOPBACK, str(location), ports)]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=location, env=accounts_env(node.env(), account_key),
                                    start_new_session=new_session)
        _CHILDREN[proc.pid] = proc
        instance = AzuriteInstance(*ports, pid=proc.pid, location=location,
                                   account_key=account_key or WELL_KNOWN_KEY)
        try:
            wait_ready(instance, max(1.0, deadline - time.monotonic()),
                        lambda p=proc: None if p.poll() is None else f"exited with code {p.returncode}",
                        log_path)
            log.info("Azurite %s ready: pid %d, ports %s", AZURITE_VERSION, proc.pid, ports)
            return instance
        except BaseException as exc:  # also Ctrl-C: never leave an unrecorded Azurite behind
            terminate(proc.pid, group=new_session, timeout=5.0)
            busy = re.search(r"EADDRINUSE.*:(\d+)", log_tail(log_path, 5))
            picked_port_taken = busy is not None and int(busy.group(1)) not in requested
            if not (isinstance(exc, EmulatorError) and picked_port_taken and attempt < attempts):
                raise
            log.warning("a picked port was taken meanwhile; retrying with new ports")
    raise AssertionError("unreachable")


def start_ephemeral(location: Path, *, timeout: float = 30.0,
                    account_key: str | None = None) -> tuple[AzuriteInstance, Callable[[], None]]:
    """A fresh Azurite with data (and azurite.log) under `location`, not recorded in user state;
    its account takes ``account_key`` if given, else the public well-known key.

    Returns it with an idempotent stop function (also registered to run at interpreter exit).
    """
    location = Path(location)
    instance = launch(location, location / "azurite.log", (0, 0, 0), None, new_session=False,
                       timeout=timeout, account_key=account_key)
    pid = instance.pid
    assert pid is not None

    def stop() -> None:
        atexit.unregister(stop)
        terminate(pid, group=False, timeout=10.0)

    atexit.register(stop)
    return instance, stop
