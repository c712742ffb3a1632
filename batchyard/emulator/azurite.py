"""Install, start, reuse and stop Azurite (the Azure Storage emulator) on loopback.

This module is the user's long-lived instance (:class:`Azurite`), under Node.js or Docker, and
``python -m batchyard.emulator.azurite``. It stands on two lower modules, whose public names it
re-exports: :mod:`~batchyard.emulator.azurite_install` (the pinned npm install into
``$BATCHYARD_CACHE``, default ``~/.cache/batchyard/``) and :mod:`~batchyard.emulator.azurite_process`
(starting, probing and stopping one Azurite; the unrecorded instances tests use). The user's
instance is recorded under ``$BATCHYARD_HOME`` (default ``~/.local/share/batchyard/``):
``azurite/`` (data), ``azurite.json`` (pid, ports...), ``azurite.log`` and ``azurite.key``: the
account key made for this home (0600), which the instance takes instead of the public
well-known key, so another local user who reaches its loopback ports holds no key for it.
Decisions (pin, Node, flags, the key) are in ``docs/azurite.md``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchyard.core.errors import EmulatorError
from batchyard.emulator.azurite_install import (
    AZURITE_VERSION,
    MIN_NODE_MAJOR,
    NODE_HINT,
    NodeRuntime,
    default_cache,
    file_lock,
    find_node,
    install_azurite,
)
from batchyard.emulator.azurite_process import (
    ACCOUNTS_VARIABLE,
    LOOPBACK,
    SERVICES,
    WELL_KNOWN_ACCOUNT,
    WELL_KNOWN_KEY,
    AzuriteInstance,
    answers_http,
    azurite_flags,
    is_azurite,
    launch,
    pick_ports,
    start_ephemeral,
    terminate,
    wait_ready,
    wait_until_ready,
)

log = logging.getLogger(__name__)

DOCKER_IMAGE = f"mcr.microsoft.com/azure-storage/azurite:{AZURITE_VERSION}"
_CONTAINER_PORTS = (10000, 10001, 10002)
KEY_BYTES = 64  # as long as an Azure storage account key


def home_account_key(path: Path) -> str:
    """The account key kept in ``path`` (made on first use: 64 random bytes, base64, mode 0600).

    Registered as a secret, so no log, error or record shows it.
    """
    from batchyard.core.redact import register_secret

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii", errors="replace").strip()
        try:
            valid = len(base64.b64decode(key, validate=True)) >= 32
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            raise EmulatorError(f"{path} does not hold an Azurite account key (base64 of 32 bytes or more): "
                                "delete it, and restart Azurite, to get a new one") from None
    else:
        key = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key + "\n")
    register_secret(key)
    return key


def _key_id(key: str) -> str:
    """Names a key in azurite.json without giving it away (a hash: the key cannot be found from it)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def default_home() -> Path:
    env = os.environ.get("BATCHYARD_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "batchyard"


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
        self.key_file = self.home / "azurite.key"
        # One container and volume per home, so two homes never fight over a name.
        self.docker_name = "batchyard-azurite-" + hashlib.sha256(str(self.home).encode()).hexdigest()[:10]

    def ensure_installed(self) -> Path:
        """Install the pinned Azurite with npm if needed; return its main js."""
        return install_azurite(self.cache)

    def status(self) -> AzuriteInstance | None:
        recorded = self._read()
        return recorded if recorded is not None and self._alive(recorded) else None

    def start(self, *, timeout: float = 30.0) -> AzuriteInstance:
        with file_lock(self.home / "azurite.lock"):
            key = home_account_key(self.key_file)
            recorded = self._read()
            if recorded is not None and self._alive(recorded) and recorded.account_key == key:
                self._warn_mismatch(recorded)
                log.info("reusing Azurite (pid %s, ports %s)", recorded.pid, recorded.ports)
                return recorded
            if recorded is not None:
                why = "does not run with this home's key" if self._alive(recorded) else "is stale"
                log.info("Azurite of %s %s; replacing it", self.state_file, why)
                self._kill(recorded, timeout=5.0)  # it may be alive but no longer answering
            if self.docker:
                instance = self._start_docker(timeout, key)
            else:
                instance = launch(self.location, self.log_file, self.requested_ports, self.cache,
                                   new_session=True, timeout=timeout, account_key=key)
            record = {**asdict(instance), "location": str(instance.location) if instance.location else None,
                      "version": AZURITE_VERSION, "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
            record["account_key"] = _key_id(key)  # which key it runs with, never the key itself
            tmp = self.state_file.with_name(self.state_file.name + ".tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, self.state_file)
            return instance

    def stop(self, *, timeout: float = 10.0) -> bool:
        with file_lock(self.home / "azurite.lock"):
            recorded = self._read()
            stopped = recorded is not None and self._kill(recorded, timeout=timeout)
            self.state_file.unlink(missing_ok=True)
            return stopped

    def _read(self) -> AzuriteInstance | None:
        try:
            rec = json.loads(self.state_file.read_text())
            pid, location = rec.get("pid"), rec.get("location")
            key = self._recorded_key(rec.get("account_key"))
            return AzuriteInstance(int(rec["blob_port"]), int(rec["queue_port"]), int(rec["table_port"]),
                                   pid=None if pid is None else int(pid),
                                   location=Path(location) if location else None,
                                   host=rec.get("host") or LOOPBACK, container_id=rec.get("container_id"),
                                   account_key=key)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_file, exc)
            return None

    def _recorded_key(self, key_id: Any) -> str:
        """The key a recorded instance runs with: this home's if the record names it; the public key
        for one recorded before homes had keys; "" (no key that works) if the key file changed since."""
        if key_id is None:
            return WELL_KNOWN_KEY
        try:
            key = home_account_key(self.key_file) if self.key_file.exists() else ""
        except EmulatorError:
            return ""
        return key if key and _key_id(key) == key_id else ""

    @staticmethod
    def _alive(instance: AzuriteInstance) -> bool:
        if instance.container_id is not None:
            running = _container(instance.container_id) is not None
        else:
            running = instance.pid is not None and is_azurite(instance.pid)
        return running and all(answers_http(instance.host, port, timeout=2.0) for port in instance.ports)

    @staticmethod
    def _kill(instance: AzuriteInstance, *, timeout: float) -> bool:
        if instance.container_id is None:
            return instance.pid is not None and terminate(instance.pid, group=True, timeout=timeout)
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

    def _start_docker(self, timeout: float, key: str) -> AzuriteInstance:
        docker, client = _docker()
        ports = pick_ports(self.requested_ports)
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(self.docker_name).remove(force=True)
        try:
            client.images.get(DOCKER_IMAGE)
        except docker.errors.ImageNotFound:
            log.info("pulling %s", DOCKER_IMAGE)
            client.images.pull(DOCKER_IMAGE)
        container = client.containers.run(
            DOCKER_IMAGE, ["azurite", *azurite_flags("0.0.0.0", "/data", _CONTAINER_PORTS)],  # noqa: S104
            name=self.docker_name, detach=True, labels={"batchyard": "azurite"},
            environment={ACCOUNTS_VARIABLE: f"{WELL_KNOWN_ACCOUNT}:{key}"},
            ports={f"{c}/tcp": (LOOPBACK, h) for c, h in zip(_CONTAINER_PORTS, ports, strict=True)},
            volumes={self.docker_name: {"bind": "/data", "mode": "rw"}})
        instance = AzuriteInstance(*ports, pid=None, location=None, container_id=container.id, account_key=key)

        def dead() -> str | None:
            container.reload()
            return None if container.status in ("created", "running") else f"container is {container.status}"

        try:
            wait_ready(instance, timeout, dead)
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



__all__ = ["AZURITE_VERSION", "DOCKER_IMAGE", "MIN_NODE_MAJOR", "NODE_HINT", "SERVICES", "WELL_KNOWN_ACCOUNT",
           "WELL_KNOWN_KEY", "Azurite", "AzuriteInstance", "NodeRuntime", "default_cache", "default_home",
           "find_node", "install_azurite", "main", "start_ephemeral", "wait_until_ready"]


if __name__ == "__main__":
    sys.exit(main())
