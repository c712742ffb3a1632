"""``Backend.wait``: polls back off to ``poll_interval``, yet the end of a job is seen soon after it.

The polling schedule is timing logic, so it runs here on a virtual clock (the module's ``time``
replaced by a counter that ``sleep`` advances), against a backend whose task counts follow a
script. The real backends' counts are covered by the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from batchyard.backends import base
from batchyard.backends.base import Backend, TaskCounts
from batchyard.config import load_config


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class _Scripted(Backend):
    """Tasks finish at a steady ``rate`` per second from t=0 (a test double for the counts only)."""

    name = "scripted"

    def __init__(self, config: Any, clock: _Clock, *, total: int, rate: float) -> None:
        super().__init__(config)
        self.clock, self.total, self.rate = clock, total, rate

    def task_counts(self, job_id: str) -> TaskCounts:
        done = min(self.total, int(self.clock.now * self.rate))
        return TaskCounts(pending=max(0, self.total - done - 2), running=min(2, self.total - done), succeeded=done)

    def preflight(self) -> None: ...
    def submit(self, job: Any) -> Any: raise NotImplementedError
    def list_task_results(self, job_id: str) -> Iterator[Any]: raise NotImplementedError
    def read_task_log(self, job_id: str, task_id: str, *, stream: str = "stdout") -> bytes: raise NotImplementedError
    def cancel(self, job_id: str) -> None: raise NotImplementedError
    def delete(self, job_id: str) -> None: raise NotImplementedError
    def job(self, job_id: str) -> Any: raise NotImplementedError


def _config(tmp_path: Path) -> Any:
    (tmp_path / "batchyard.toml").write_text('backend = "local"\n', encoding="utf-8")
    return load_config(tmp_path / "batchyard.toml", env={})


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(base, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep))
    return fake


@pytest.mark.parametrize(("total", "rate"), [(100, 5.0), (2000, 60.0), (7, 0.5)])
def test_the_end_is_seen_within_half_a_second_not_a_poll_interval(clock: _Clock, tmp_path: Path,
                                                                 total: int, rate: float) -> None:
    backend = _Scripted(_config(tmp_path), clock, total=total, rate=rate)
    counts = backend.wait("j", poll_interval=10.0)
    end = total / rate
    assert counts.finished and counts.succeeded == total
    assert end <= clock.now <= end + 0.5, f"the end at {end:.2f} s was seen at {clock.now:.2f} s (interval 10 s)"
    # ...without polling fast all along: early polls back off towards the interval.
    assert len(clock.sleeps) <= 12 + end / 2, f"{len(clock.sleeps)} polls for a {end:.0f} s job"
    assert max(clock.sleeps) >= min(10.0, end / 8), clock.sleeps


def test_no_progress_polls_at_the_interval(clock: _Clock, tmp_path: Path) -> None:
    backend = _Scripted(_config(tmp_path), clock, total=10, rate=0.0)
    counts = backend.wait("j", poll_interval=2.0, timeout=30.0)
    assert not counts.finished
    assert clock.sleeps[-5:] == [2.0] * 5, "with nothing finishing, polls must not speed up"
