"""Issue #23: the Azurite batchyard starts for itself takes a key of its own, not the public one.

With the public well-known key, any local user who reaches Azurite's loopback ports could put
messages on the task queue (and read every blob). batchyard's own Azurite (the one the local backend
starts when no storage is configured) gets a key made for its ``BATCHYARD_HOME`` (``azurite.key``,
0600) through Azurite's ``AZURITE_ACCOUNTS``; the public key is refused. An Azurite the user runs
keeps the key the user gave it, and the tests' ephemeral one keeps the public key.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.queue import QueueServiceClient

from batchyard.backends.local.backend import local_storage_connection_string
from batchyard.core.config import load_config
from batchyard.emulator.azurite import WELL_KNOWN_KEY, Azurite, home_account_key, start_ephemeral
from batchyard.storage.account import StorageAccount

pytestmark = pytest.mark.timeout(180)


def _config(tmp_path: Path, home: Path, conn: str | None = None) -> Any:
    (tmp_path / "batchyard.toml").write_text('backend = "local"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCHYARD_", "AZURE_STORAGE_")) and k != "AZURITE_ACCOUNTS"}
    env["BATCHYARD_HOME"] = str(home)
    if conn is not None:
        env["AZURE_STORAGE_CONNECTION_STRING"] = conn
    return load_config(tmp_path / "batchyard.toml", env=env)


def _refused(conn: str) -> int:
    with pytest.raises(HttpResponseError) as info:
        QueueServiceClient.from_connection_string(conn).create_queue("refused")
    return int(info.value.status_code or 0)


def test_batchyards_own_azurite_takes_a_key_made_for_its_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        conn = local_storage_connection_string(_config(tmp_path, home))  # what the local backend is handed
        key_file = home / "azurite.key"
        key = key_file.read_text(encoding="ascii").strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key != WELL_KNOWN_KEY and len(base64.b64decode(key, validate=True)) == 64
        assert StorageAccount.from_connection_string(conn).account_key == key
        QueueServiceClient.from_connection_string(conn).create_queue("accepted")  # the home's key works
        assert _refused(conn.replace(key, WELL_KNOWN_KEY)) == 403  # the public key does not
        instance = Azurite(home=home).status()
        assert instance is not None and instance.connection_string() == conn
        assert key not in repr(instance) and key not in (home / "azurite.json").read_text()
        assert key not in (home / "azurite.log").read_text(errors="replace")
        # A second batchyard process on the same home reuses it, with the same key.
        assert Azurite(home=home).start().connection_string() == conn
        assert home_account_key(tmp_path / "another.key") != key  # each home its own

        # Recorded by a batchyard from before keys (no key in azurite.json): replaced, not reused.
        record = json.loads((home / "azurite.json").read_text())
        del record["account_key"]
        (home / "azurite.json").write_text(json.dumps(record))
        again = Azurite(home=home).start()
        assert again.pid != instance.pid and again.connection_string().count(f"AccountKey={key};") == 1
        assert _refused(again.connection_string().replace(key, WELL_KNOWN_KEY)) == 403
    finally:
        Azurite(home=home).stop(timeout=10)


def test_an_unreadable_key_file_is_named_in_the_error(tmp_path: Path) -> None:
    from batchyard.core.errors import EmulatorError

    bad = tmp_path / "azurite.key"
    bad.write_text("not a key\n")
    with pytest.raises(EmulatorError, match=r"azurite\.key does not hold an Azurite account key"):
        home_account_key(bad)


def test_an_azurite_the_user_runs_keeps_the_key_they_gave(tmp_path: Path) -> None:
    """The user's own Azurite, started with their AZURITE_ACCOUNTS key: batchyard uses the connection
    string it is given, as it is, and starts nothing of its own."""
    users_key = base64.b64encode(os.urandom(64)).decode()
    instance, stop = start_ephemeral(tmp_path / "users-azurite", account_key=users_key)
    home = tmp_path / "home"
    try:
        given = instance.connection_string()
        assert f"AccountKey={users_key};" in given
        assert local_storage_connection_string(_config(tmp_path, home, given)) == given
        QueueServiceClient.from_connection_string(given).create_queue("users")
        assert _refused(given.replace(users_key, WELL_KNOWN_KEY)) == 403
        assert not (home / "azurite.key").exists() and Azurite(home=home).status() is None
    finally:
        stop()
