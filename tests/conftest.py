"""Shared fixtures: a real Azurite for the session, and an isolated batchyard project per test.

One code path, two ways in: with ``AZURE_STORAGE_CONNECTION_STRING`` set (e.g. by
``compose.yaml``), the suite uses that storage; otherwise it starts its own Azurite in a
temporary folder and stops it at the end. Every test gets its own queue, tables and
containers (unique names), so tests never see each other's messages.

``--fast-path=off`` (default: ``BATCHYARD_FAST_PATH``, else ``auto``) runs the suite with every
storage call through the Azure SDK: the session's storage, each project's batchyard.toml and
environment, and whatever the tests start in-process (the Batch emulator's nodes) or as
processes all get that mode. Tests marked ``fast_path`` are about the hand-signed path itself
and are skipped when it is off.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from batchyard.core.config import ENV_FAST_PATH, FAST_PATH_MODES, Config, load_config
from batchyard.storage.account import Storage

sys.path.insert(0, str(Path(__file__).parent))
from _batch_fixtures import *  # noqa: F403  (the Batch emulator fixtures)
from _batch_fixtures import pytest_configure as batch_fixtures_configure
from _stub_fixtures import *  # noqa: F403  (the in-memory stub backend's project)

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast-path", choices=FAST_PATH_MODES, default=os.environ.get(ENV_FAST_PATH) or "auto",
                     help="storage fast path mode for the whole run (auto: hand-signed REST to loopback "
                          "endpoints; off: everything through the Azure SDK)")


def pytest_configure(config: pytest.Config) -> None:
    batch_fixtures_configure(config)  # this hook replaces the one `import *` brought: its markers too
    config.addinivalue_line("markers", "fast_path: about the hand-signed storage path itself (skipped with "
                                       "--fast-path=off)")
    # Read by every Storage made without a config: in this process (the Batch emulator's nodes,
    # BlobTransfer(None)) and in the processes the tests start.
    os.environ[ENV_FAST_PATH] = config.getoption("--fast-path")
    # A shell without job control starts a background command (`make test &`) with SIGINT ignored,
    # and an ignored signal stays ignored across exec: the CLIs the Ctrl-C tests interrupt would
    # never see it. A handler (unlike SIG_IGN) is reset by exec, so each child starts as from a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Figures tests measured (``record_property("figure", ...)``), e.g. the recordings' replay, shown
    at the end of every run: under pytest-xdist a test's own output is not."""
    figures = [value for key in ("passed", "failed") for report in terminalreporter.stats.get(key, [])
               if getattr(report, "when", "") == "call"
               for name, value in getattr(report, "user_properties", ()) if name == "figure"]
    if figures:
        terminalreporter.section("figures")
        for figure in figures:
            terminalreporter.line(str(figure))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--fast-path") == "off":
        skip = pytest.mark.skip(reason="about the fast path, which --fast-path=off turns off")
        for item in items:
            if item.get_closest_marker("fast_path"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def fast_path_mode(pytestconfig: pytest.Config) -> str:
    """The run's fast path mode (``--fast-path``)."""
    return str(pytestconfig.getoption("--fast-path"))


@pytest.fixture(scope="session")
def azurite_connection_string(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if given:
        yield given
        return
    from batchyard.emulator.azurite import start_ephemeral

    # A loaded machine can take a minute to start Node.js and Azurite: the deadline only bounds a failure.
    instance, stop = start_ephemeral(tmp_path_factory.mktemp("azurite"), timeout=240)
    try:
        yield instance.connection_string()
    finally:
        stop()


@pytest.fixture(scope="session")
def storage(azurite_connection_string: str, fast_path_mode: str) -> Storage:
    return Storage.from_connection_string(azurite_connection_string, fast_path=fast_path_mode)


@dataclass
class Project:
    """A folder with a batchyard.toml whose queue, tables and containers are this test's alone."""

    dir: Path
    env: dict[str, str]
    uid: str
    storage: Storage
    containers: dict[str, str] = field(default_factory=dict)

    def config(self, **overrides: str) -> Config:
        return load_config(self.dir / "batchyard.toml", env=self.env, **overrides)

    def container(self, role: str) -> str:
        """A fresh container name for ``role`` (inputs, outputs...), created on first use."""
        if role not in self.containers:
            name = f"{role[:8]}-{self.uid}"
            self.storage.ensure_container(name)
            self.containers[role] = name
        return self.containers[role]

    def put_inputs(self, container: str, files: dict[str, bytes], prefix: str = "") -> None:
        for name, data in files.items():
            self.storage.upload_bytes(container, prefix + name, data)

    def visible_messages(self) -> list[Any]:
        """Every visible message on this project's queues (the shared name's and each job's)."""
        prefix = load_config(self.dir / "batchyard.toml", env=self.env).storage.queue
        service = self.storage.queue_service
        return [message for queue in service.list_queues(name_starts_with=prefix)
                for message in service.get_queue_client(queue.name).peek_messages(max_messages=32)]

    def cli(self, *args: str, timeout: float = 180, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batchyard", *args], cwd=cwd or self.dir, env={**self.env, **(env or {})},
            capture_output=True, text=True, timeout=timeout,
        )


@pytest.fixture
def project(tmp_path: Path, azurite_connection_string: str, storage: Storage, fast_path_mode: str) -> Project:
    uid = uuid.uuid4().hex[:10]
    (tmp_path / "batchyard.toml").write_text(
        f"""backend = "local"
[storage]
fast_path = "{fast_path_mode}"
queue = "q{uid}"
table_prefix = "t{uid}"
system_container = "sys-{uid}"
log_container = "logs-{uid}"
[local]
workers = 2
work_dir = "{tmp_path / 'work'}"
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHYARD_", "AZ_BATCH_"))}
    env.update({
        "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string,
        "BATCHYARD_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
        ENV_FAST_PATH: fast_path_mode,  # the file says it too; this reaches what reads no file
    })
    return Project(dir=tmp_path, env=env, uid=uid, storage=storage)
