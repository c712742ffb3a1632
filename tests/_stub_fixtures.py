"""The ``stub_project`` fixture: a batchyard project on the in-memory stub backend (no storage).

Imported by tests/conftest.py with ``import *``. The stub (batchyard.backends.stub) is registered
as "stub" only while a test that uses this fixture runs; each test gets its own BATCHYARD_HOME,
hence its own in-memory world. ``cli`` runs the ``batchyard`` command in this process (click's
runner), so it sees the same world; a subprocess would not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from batchyard.backends import stub
from batchyard.backends.stub import StubWorld
from batchyard.core.config import Config, load_config

__all__ = ["StubProject", "stub_project"]


@dataclass
class StubProject:
    dir: Path
    env: dict[str, str | None]
    world: StubWorld

    def config(self) -> Config:
        return load_config(self.dir / "batchyard.toml", env={k: v for k, v in self.env.items() if v is not None})

    def cli(self, *args: str) -> Result:
        """``batchyard ARGS`` in this process; ``.exit_code``, ``.stdout``, ``.stderr`` as a user sees them."""
        from batchyard.cli.main import main

        return CliRunner().invoke(main, list(args), env=self.env, catch_exceptions=False)

    def job_file(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text, encoding="utf-8")
        return path


@pytest.fixture
def stub_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StubProject]:
    (tmp_path / "batchyard.toml").write_text('backend = "stub"\n[local]\nworkers = 2\n', encoding="utf-8")
    home = tmp_path / "home"
    # Nothing of the caller's environment chooses a backend or storage: the stub needs none.
    env: dict[str, str | None] = {k: None for k in os.environ
                                  if k.startswith(("BATCHYARD_", "AZ_BATCH_", "AZURE_STORAGE_"))}
    env["BATCHYARD_HOME"] = str(home)
    monkeypatch.chdir(tmp_path)  # the command finds batchyard.toml above its working dir
    stub.register("stub")
    try:
        yield StubProject(dir=tmp_path, env=env, world=StubWorld.of(home))
    finally:
        stub.unregister("stub")
        StubWorld.forget(home)
