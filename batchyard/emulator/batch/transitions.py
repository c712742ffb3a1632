"""How long the emulator's transitional states last: Azure's timeline, shortened.

On Azure a pool spends minutes ``resizing``, a deleted job 15-20 s ``deleting``, a terminated
job some seconds ``terminating``, a new node a few minutes ``starting``. Code written against
the emulator must meet those states too (an SDK poller, a loop waiting for ``steady``), so the
emulator shows each of them for a short while instead of skipping it. :class:`Timing` holds the
durations; ``BATCHYARD_EMULATOR_TIMING`` (a JSON object with the same field names) sets them for
an emulator started without an explicit ``timing``, e.g. the detached one.

A resource in such a state carries the monotonic time at which it may leave it (``settle_at``);
the scheduler's loop moves it on once that time has passed. :func:`hold` and ``finish`` on the
engine let tests see a state for as long as they need and then end it, without sleeping.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, fields

TIMING_ENV = "BATCHYARD_EMULATOR_TIMING"
# What each kind of transition covers, for the engine's ``finish`` (tests and the recordings' replay).
KINDS = ("pools", "nodes", "jobs")
HOLD_S = 3600.0  # long enough that no test sees a held state end by itself


@dataclass(frozen=True)
class Timing:
    """Seconds each transitional state lasts (0 skips it). Azure's own figures are minutes."""

    resize_s: float = 0.5  # pool allocationState resizing -> steady
    stop_resize_s: float = 0.5  # pool allocationState stopping -> steady (resizeErrors ResizeStopped)
    delete_s: float = 1.0  # pool or job deleting -> gone
    terminate_s: float = 1.0  # job terminating -> completed (once its running tasks are dead)
    node_start_s: float = 0.5  # node starting -> idle, or waitingforstarttask when it has a start task
    reboot_s: float = 0.5  # node rebooting -> booted again (once its tasks are gone), then as a start

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"emulator timing {spec.name} must be a number of seconds >= 0, not {value!r}")

    @classmethod
    def from_json(cls, text: str) -> Timing:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{TIMING_ENV} is not JSON: {exc.msg}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{TIMING_ENV} must be a JSON object such as {{\"delete_s\": 0}}")
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{TIMING_ENV}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**raw)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Timing:
        text = (environ if environ is not None else os.environ).get(TIMING_ENV, "").strip()
        return cls.from_json(text) if text else cls()


def hold() -> Timing:
    """Every transitional state lasts an hour: a test ends them itself with the engine's ``finish``."""
    return Timing(**{spec.name: HOLD_S for spec in fields(Timing)})


def settle_at(seconds: float) -> float | None:
    """The monotonic time a state of ``seconds`` ends; ``None`` when it does not last at all."""
    return time.monotonic() + seconds if seconds > 0 else None


def settled(at: float | None) -> bool:
    """Whether a state that ends at ``at`` (see :func:`settle_at`) is over."""
    return at is None or time.monotonic() >= at

