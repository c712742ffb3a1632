"""Pytest fixtures for the Batch API emulator (imported by tests/conftest.py with ``import *``).

Depends on the session fixture ``azurite_connection_string`` (str) from the lead's conftest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchyard.emulator.batch import BatchEmulator, FaultConfig

__all__ = ["batch_emulator", "batch_emulator_factory"]


@dataclass(frozen=True)
class ExternalEmulator:
    """An emulator someone else runs (compose.yaml's ``batch-emulator``), given by BATCHYARD_BATCH_*."""

    url: str
    account_name: str
    account_key: str

    def stop(self) -> None:
        pass


def external_emulator() -> ExternalEmulator | None:
    url = os.environ.get("BATCHYARD_BATCH_URL")
    if not url:
        return None
    return ExternalEmulator(url=url, account_name=os.environ.get("BATCHYARD_BATCH_ACCOUNT", "batchyard"),
                            account_key=os.environ["BATCHYARD_BATCH_KEY"])


@pytest.fixture
def batch_emulator_factory(azurite_connection_string: str, tmp_path: Path) -> Iterator[object]:
    """Call with ``faults=FaultConfig(...)`` (or nothing) to get a started emulator; all are stopped after."""
    started: list[BatchEmulator] = []

    def make(faults: FaultConfig | None = None, **kwargs: object) -> BatchEmulator:
        # With BATCHYARD_BATCH_URL set, fault-free tests share that emulator (unique job ids keep
        # them apart); tests that inject faults still start their own, in this process.
        external = external_emulator() if faults is None and not kwargs else None
        if external is not None:
            return external  # type: ignore[return-value]
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
    """A started emulator with no faults: a fresh one per test, or the one BATCHYARD_BATCH_URL names."""
    return batch_emulator_factory()  # type: ignore[operator]
