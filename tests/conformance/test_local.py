"""The conformance scenarios on the local backend (queue + worker processes on Azurite)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.base import Backend
from batchyard.core.job import Job

from .scenarios import BackendScenarios, Harness


class LocalHarness(Harness):
    name = "local"

    def backend(self) -> Backend:
        return get_backend("local", self.project.config())

    def execute(self, be: Backend, job: Job, before_start: Callable[[], None] | None, timeout: float) -> None:
        self.last_submit = be.submit(job)
        if before_start is not None:
            before_start()
        be.run_to_end(job, workers=2, timeout=timeout, poll_interval=0.3)


class TestLocalBackend(BackendScenarios):
    @pytest.fixture
    def harness(self, project: Any) -> Harness:
        return LocalHarness(project)
