"""How long ``Backend.wait`` pauses between two polls of a job's task counts."""

from __future__ import annotations

from typing import Protocol

END_POLL_S = 0.1  # the shortest pause between polls, when the job's end is near


class Progress(Protocol):
    """What a poll tells: tasks done (final) and in all (``TaskCounts``)."""

    @property
    def done(self) -> int: ...

    @property
    def total(self) -> int: ...


class PollSchedule:
    """How long to wait before the next poll of a job's task counts.

    Pauses back off from 0.25 s to ``poll_interval``, but when the pace since the first poll says
    the tasks left will be done sooner, the next poll comes after half that time (results arrive
    in bursts, so the pace is only a guess; at least :data:`END_POLL_S`): the end of a job is
    seen within a few tenths of a second, without polling that often the whole time.
    """

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self.interval = min(0.25, poll_interval)
        self.first: tuple[float, int] | None = None  # (when, done) at the first poll

    def pause(self, now: float, counts: Progress) -> float:
        pause = self.interval
        if self.first is None:
            self.first = (now, counts.done)
        elif counts.done > self.first[1]:  # half the time the rest would take at the pace so far
            since, done_then = self.first
            left = counts.total - counts.done
            pause = max(END_POLL_S, min(self.interval, left * (now - since) / (counts.done - done_then) / 2))
        self.interval = min(self.poll_interval, self.interval * 1.5)
        return pause
