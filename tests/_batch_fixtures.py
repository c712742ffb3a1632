"""Pytest fixtures for the Batch API emulator (imported by tests/conftest.py with ``import *``).

Depends on the session fixture ``azurite_connection_string`` (str) from the lead's conftest.

With ``BATCHYARD_BATCH_URL`` set (``make test-compose``, compose.yaml), fault-free tests share that
external emulator: what a test creates there is deleted after it (the pools and jobs that were not
there before it started), so the emulator stays lean and nothing depends on it being empty. A test
marked ``private_emulator`` (it needs a node that sees its own process, environment or files) and a
test that injects faults get an emulator of their own, in the test process. docs/docker.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchyard.emulator.batch import BatchEmulator, FaultConfig

__all__ = ["batch_emulator", "batch_emulator_factory", "pytest_configure"]
PRIVATE_MARK = "private_emulator"
# What deleting a job or pool may meet when its test (or batchyard) deleted it already.
GONE_OR_GOING = {"JobNotFound", "PoolNotFound", "JobBeingDeleted", "PoolBeingDeleted"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{PRIVATE_MARK}: the test starts its own Batch emulator in its process, "
                                       "even where BATCHYARD_BATCH_URL names a shared one")


@dataclass(frozen=True)
class ExternalEmulator:
    """An emulator someone else runs (compose.yaml's ``batch-emulator``), given by BATCHYARD_BATCH_*."""

    url: str
    account_name: str
    account_key: str

    def stop(self) -> None:
        pass

    def client(self) -> Any:
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        return BatchClient(self.url, AzureNamedKeyCredential(self.account_name, self.account_key), retry_total=3)

    def contents(self) -> tuple[set[str], set[str]]:
        """The ids of the pools and of the jobs there are now."""
        client = self.client()
        return {p.id for p in client.list_pools()}, {j.id for j in client.list_jobs()}

    def delete_new(self, before: tuple[set[str], set[str]]) -> None:
        """Delete the jobs and pools that were not there ``before`` (deletion goes on in the emulator)."""
        from azure.core.exceptions import HttpResponseError

        pools, jobs = self.contents()
        client = self.client()
        deletions = [(client.begin_delete_job, job_id) for job_id in sorted(jobs - before[1])]
        deletions += [(client.begin_delete_pool, pool_id) for pool_id in sorted(pools - before[0])]
        for delete, item_id in deletions:
            try:
                delete(item_id)
            except HttpResponseError as exc:
                if getattr(exc.error, "code", None) not in GONE_OR_GOING:  # anything else is a real problem
                    raise


def external_emulator() -> ExternalEmulator | None:
    url = os.environ.get("BATCHYARD_BATCH_URL")
    if not url:
        return None
    return ExternalEmulator(url=url, account_name=os.environ.get("BATCHYARD_BATCH_ACCOUNT", "batchyard"),
                            account_key=os.environ["BATCHYARD_BATCH_KEY"])


@pytest.fixture
def batch_emulator_factory(azurite_connection_string: str, tmp_path: Path,
                           request: pytest.FixtureRequest) -> Iterator[object]:
    """Call with ``faults=FaultConfig(...)`` (or nothing) to get a started emulator; all are stopped after."""
    started: list[BatchEmulator] = []
    shared: list[tuple[ExternalEmulator, tuple[set[str], set[str]]]] = []
    private = request.node.get_closest_marker(PRIVATE_MARK) is not None

    def make(faults: FaultConfig | None = None, **kwargs: object) -> BatchEmulator:
        # With BATCHYARD_BATCH_URL set, fault-free tests share that emulator (unique job ids keep
        # them apart); tests that inject faults or are marked private start their own, in this process.
        external = external_emulator() if faults is None and not kwargs and not private else None
        if external is not None:
            if not shared:
                shared.append((external, external.contents()))
            return external  # type: ignore[return-value]
        emu = BatchEmulator(storage_connection_string=azurite_connection_string,
                            data_dir=tmp_path / f"batch-emulator-{len(started)}",
                            faults=faults or FaultConfig(), **kwargs)  # type: ignore[arg-type]
        emu.start()
        started.append(emu)
        return emu

    yield make
    try:
        for external, before in shared:
            external.delete_new(before)
    finally:
        for emu in started:
            emu.stop()


@pytest.fixture
def batch_emulator(batch_emulator_factory: object) -> BatchEmulator:
    """A started emulator with no faults: a fresh one per test, or the one BATCHYARD_BATCH_URL names."""
    return batch_emulator_factory()  # type: ignore[operator]
