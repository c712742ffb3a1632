"""Pytest fixtures for the Batch API emulator (imported by tests/conftest.py with ``import *``).

Depends on the session fixture ``azurite_connection_string`` (str) from the lead's conftest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchyard.emulator.batch import BatchEmulator, FaultConfig

__all__ = ["batch_emulator", "batch_emulator_factory"]


@pytest.fixture
def batch_emulator_factory(azurite_connection_string: str, tmp_path: Path) -> Iterator[object]:
    """Call with ``faults=FaultConfig(...)`` (or nothing) to get a started emulator; all are stopped after."""
    started: list[BatchEmulator] = []

    def make(faults: FaultConfig | None = None, **kwargs: object) -> BatchEmulator:
        emu = BatchEmulator(storage_connection_string=azurite_connection_string,
                            data_dir=tmp_path / f"batch-emulator-{len(started)}",
                            faults=faults or FaultConfig(), **kwargs)  # type: ignore[arg-type]
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def batch_emulator(batch_emulator_factory: object) -> BatchEmulator:
    """A started emulator with no faults (a fresh one, and fresh state, per test)."""
    return batch_emulator_factory()  # type: ignore[operator]
