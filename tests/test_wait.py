"""``Backend.wait``'s poll schedule: it backs off to ``poll_interval``, yet sees a job's end soon.

:class:`PollSchedule` is the whole timing decision of ``wait``, a pure function of the time and
the counts, so it is driven here directly: a job whose tasks finish at a steady rate, simulated
time advanced by each pause (no backend stands in for a real one).
"""

from __future__ import annotations

import pytest

from batchyard.backends.base import PollSchedule, TaskCounts


def _counts(now: float, total: int, rate: float) -> TaskCounts:
    done = min(total, int(now * rate))
    return TaskCounts(pending=max(0, total - done - 2), running=min(2, total - done), succeeded=done)


def _poll_until_done(total: int, rate: float, poll_interval: float, *, give_up: float = 300.0
                     ) -> tuple[float, list[float], TaskCounts]:
    """Poll the way ``Backend.wait`` does; when the last poll happened, the pauses, the last counts."""
    schedule, now, pauses = PollSchedule(poll_interval), 0.0, []
    while True:
        counts = _counts(now, total, rate)
        if counts.finished or now >= give_up:
            return now, pauses, counts
        pauses.append(schedule.pause(now, counts))
        now += pauses[-1]


@pytest.mark.parametrize(("total", "rate"), [(100, 5.0), (2000, 60.0), (7, 0.5)])
def test_the_end_is_seen_within_half_a_second_not_a_poll_interval(total: int, rate: float) -> None:
    seen, pauses, counts = _poll_until_done(total, rate, poll_interval=10.0)
    end = total / rate
    assert counts.finished and counts.succeeded == total
    assert end <= seen <= end + 0.5, f"the end at {end:.2f} s was seen at {seen:.2f} s (interval 10 s)"
    # ...without polling fast all along: early polls back off towards the interval.
    assert len(pauses) <= 12 + end / 2, f"{len(pauses)} polls for a {end:.0f} s job"
    assert max(pauses) >= min(10.0, end / 8), pauses


def test_no_progress_polls_at_the_interval() -> None:
    seen, pauses, counts = _poll_until_done(10, 0.0, poll_interval=2.0, give_up=30.0)
    assert not counts.finished and seen >= 30.0
    assert pauses[-5:] == [2.0] * 5, "with nothing finishing, polls must not speed up"
