"""BATCHYARD_HOME, Azurite's data and the task work dirs are private to their owner (issue #23, point 6):
created 0700, so other users of a shared machine cannot list or read blobs, queue messages, task
inputs or outputs (before, they were 0755 directories of 0644 files)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

from batchyard.core.config import load_config
from batchyard.core.paths import make_private_dir
from batchyard.emulator.azurite import Azurite


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_and_work_dir_are_created_private(tmp_path: Path) -> None:
    home = tmp_path / "a" / "b" / "home"
    work = tmp_path / "w1" / "work"
    (tmp_path / "batchyard.toml").write_text(f'backend = "local"\n[local]\nwork_dir = "{work}"\n', encoding="utf-8")
    load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(home)})
    for folder in (tmp_path / "a", tmp_path / "a" / "b", home, tmp_path / "w1", work):
        assert mode(folder) == 0o700, f"{folder}: {oct(mode(folder))}"


def test_the_default_work_dir_is_private_too_and_only_for_the_local_backend(tmp_path: Path) -> None:
    (tmp_path / "batchyard.toml").write_text('backend = "azure"\n', encoding="utf-8")
    load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(tmp_path / "home")})
    assert mode(tmp_path / "home") == 0o700 and not (tmp_path / "home" / "work").exists()
    load_config(tmp_path / "batchyard.toml", backend="local", env={"BATCHYARD_HOME": str(tmp_path / "home")})
    assert mode(tmp_path / "home" / "work") == 0o700


def test_existing_folders_keep_their_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    make_private_dir(shared / "mine")
    assert mode(shared) == 0o755 and mode(shared / "mine") == 0o700


def test_azurite_home_and_data_are_private(tmp_path: Path) -> None:
    azurite = Azurite(home=tmp_path / "x" / "home")
    azurite.start()
    try:
        assert mode(tmp_path / "x") == 0o700 and mode(azurite.home) == 0o700
        assert mode(azurite.location) == 0o700
    finally:
        azurite.stop()


def test_a_task_finds_its_work_root_private(project: Any) -> None:
    """Whatever mode the node's own folders get, they sit in a work root only its owner can enter."""
    probe = ("import os; root = os.path.dirname(os.environ['AZ_BATCH_NODE_ROOT_DIR']); "
             "print(oct(os.stat(root).st_mode & 0o777))")
    (project.dir / "rows.csv").write_text("n\n1\n", encoding="utf-8")
    (project.dir / "job.toml").write_text(
        f'id = "private-{project.uid}"\ncommand = "{sys.executable} -c \\"{probe}\\" {{n}}"\ntasks = "rows.csv"\n',
        encoding="utf-8")
    assert project.cli("run", "job.toml").returncode == 0
    (task,) = json.loads(project.cli("status", f"private-{project.uid}", "--json").stdout)["tasks"]
    printed = project.cli("logs", f"private-{project.uid}", task["task_id"]).stdout.strip()
    assert printed == "0o700"
