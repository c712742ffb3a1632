"""The metric samples an autoscale formula reads through ``$Metric.GetSample(...)``.

Azure Batch records every metric of a pool every 30 seconds, and a sample reaches formulas about a
minute after it was taken (``batch-automatic-scaling.md``, "Samples" and "GetSample() and sample
ranges"). :class:`SampleHistory` keeps those samples with the time they were taken and answers the
queries the language has: the last *n* available samples, the samples of a look-back window, and
the percentage of a window's expected samples that are available.

Times are seconds on one clock (``time.time()`` in the emulator, a simulated clock in ``batchyard
plan``). Durations in a formula are Azure's; ``scale`` is the emulator's interval scale (real
seconds per Azure second), so a 10-minute look-back covers 6 real seconds at ``scale=0.01``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

SAMPLE_PERIOD_S = 30.0  # Azure records a sample of every metric this often
SAMPLE_DELAY_S = 60.0  # ...and a formula sees it about this long after
KEEP_SAMPLES = 2880  # 24 hours of samples
EDGE_S = 1e-6  # a sample taken at a window's edge is in it (scaled times are sums of floats)


@dataclass
class SampleHistory:
    """Samples of every metric of one pool, oldest first."""

    scale: float = 1.0
    period_s: float = SAMPLE_PERIOD_S
    delay_s: float = SAMPLE_DELAY_S
    _samples: collections.deque[tuple[float, dict[str, float]]] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP_SAMPLES))

    @property
    def real_period(self) -> float:
        return self.period_s * self.scale

    def due(self, now: float) -> bool:
        """Whether a sample should be taken at ``now`` (one per period)."""
        return not self._samples or now - self._samples[-1][0] >= self.real_period

    def record(self, now: float, values: dict[str, float]) -> None:
        self._samples.append((now, dict(values)))

    def _available(self, now: float) -> list[tuple[float, dict[str, float]]]:
        cutoff = now - self.delay_s * self.scale + EDGE_S
        return [s for s in self._samples if s[0] <= cutoff]

    def last(self, metric: str, count: int, now: float) -> list[float]:
        """The ``count`` most recent available samples, oldest first."""
        available = self._available(now)
        return [values.get(metric, 0.0) for _, values in available[max(0, len(available) - count):]]

    def window(self, metric: str, start: float, end: float, now: float) -> list[float]:
        """Available samples taken between the clock times ``start`` and ``end``, oldest first."""
        return [values.get(metric, 0.0) for taken, values in self._available(now)
                if start - EDGE_S <= taken <= end + EDGE_S]

    def percent(self, start: float, end: float, now: float) -> float:
        """Available samples in [start, end] as a percentage of the samples the period allows there."""
        expected = (end - start) / self.real_period
        if expected <= 0:
            return 0.0
        found = sum(1 for taken, _ in self._available(now) if start - EDGE_S <= taken <= end + EDGE_S)
        return min(100.0, 100.0 * found / expected)

    def count(self) -> int:
        return len(self._samples)

    def begin(self) -> float | None:
        return self._samples[0][0] if self._samples else None

    def names(self) -> Iterable[str]:
        return self._samples[-1][1].keys() if self._samples else ()
