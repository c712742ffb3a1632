"""Azure's periods, shortened on purpose, and ISO-8601 durations written the way Batch writes them.

Azure evaluates an autoscale formula at most every 5 minutes, samples metrics every 30 seconds,
refuses a second enable-autoscale within 30 seconds, and runs job schedules no more often than
every minute. An emulator that waited as long would be useless on a laptop, so every such period
is multiplied by one factor, :class:`IntervalScale` (``BatchEmulator(interval_scale=0.01)`` or
``BATCHYARD_EMULATOR_INTERVAL_SCALE=0.01``: a 5-minute interval lasts 3 real seconds). The default,
1, is Azure's own timing. What a client sends and reads stays in Azure's units (a pool still says
``PT5M``); only the waiting is shorter. Absolute times (``doNotRunUntil``, ``time()``) are real.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batchyard.emulator.batch.common import invalid

ENV_VAR = "BATCHYARD_EMULATOR_INTERVAL_SCALE"


@dataclass(frozen=True)
class IntervalScale:
    factor: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.factor <= 1:
            raise ValueError(f"interval scale must be in (0, 1], not {self.factor}")

    def real(self, azure_seconds: float) -> float:
        """How long the emulator waits for an Azure period of ``azure_seconds``."""
        return azure_seconds * self.factor

    @classmethod
    def from_env(cls) -> IntervalScale:
        text = os.environ.get(ENV_VAR, "").strip()
        if not text:
            return cls()
        try:
            return cls(float(text))
        except ValueError:
            raise ValueError(f"{ENV_VAR} must be a number in (0, 1], not {text!r}") from None


def format_duration(seconds: float) -> str:
    """``PT6M`` for 360, ``P1D`` for 86400, ``PT1H30M`` ...: how Batch echoes a duration it stored."""
    whole_days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"P{int(whole_days)}D" if whole_days else "P"
    clock = ""
    if hours:
        clock += f"{int(hours)}H"
    if minutes:
        clock += f"{int(minutes)}M"
    if secs:
        clock += f"{secs:.7f}".rstrip("0").rstrip(".") + "S"
    if clock:
        out += "T" + clock
    return out if out != "P" else "PT0S"


def parse_time(value: Any, prop: str) -> datetime | None:
    if value is None:
        return None
    try:
        stamp = datetime.fromisoformat(str(value))
    except ValueError:
        raise invalid(f"{prop} must be an ISO-8601 date and time such as 2025-06-01T12:00:00Z", prop) from None
    if stamp.tzinfo is None:
        raise invalid(f"{prop} must carry a time zone (e.g. a trailing Z)", prop)
    return stamp
