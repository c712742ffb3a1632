"""What a job did, as data: every attempt placed on a timeline row, and the numbers behind the figures.

:func:`build_report` turns a job's :class:`~batchyard.backends.base.TaskResult` list into a
:class:`ReportData` (attempts on rows, durations, throughput, busy time per node, failed tasks),
with no storage and no backend; :func:`report_from_backend` reads them from a backend first. The
page (:mod:`batchyard.analysis.report`) and the figures (:mod:`batchyard.analysis.report_figures`)
both draw from here, so neither imports the other's caller.

Durations are per *attempt* (each run of the command, retries included), the unit a
histogram of "how long does my command take" wants; throughput counts tasks reaching a
final state. Percentiles interpolate linearly (numpy's default, ``statistics.quantiles``
with ``method="inclusive"``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from batchyard.backends.base import TaskCounts, TaskResult, TaskState

if TYPE_CHECKING:
    from batchyard.backends.base import Backend

OUTCOMES = ("succeeded", "retried", "lost", "failed", "running")
COLOURS = {"succeeded": "#2ca02c", "retried": "#ff9f1c", "lost": "#8c8c8c", "failed": "#d62728",
           "running": "#1f77b4"}
OUTCOME_HELP = {"succeeded": "attempt succeeded", "retried": "attempt failed, task retried",
                "lost": "worker lost during the attempt", "failed": "attempt failed, task failed",
                "running": "still running"}
NICE_INTERVALS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def parse_time(value: str | None) -> float | None:
    """An ISO 8601 timestamp as epoch seconds (naive ones are UTC); None if absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Attempt:
    """One run of a task's command, placed on a timeline row."""

    task_id: str
    label: str
    number: int
    start: float
    end: float
    outcome: str
    node_id: str
    slot: int
    exit_code: int | None = None
    row: int = 0

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class ReportData:
    job_id: str
    backend: str
    shape: str
    generated_at: float
    results: list[TaskResult]
    counts: TaskCounts
    attempts: list[Attempt]
    rows: list[str]
    unrecorded_attempts: int = 0
    notes: list[str] = field(default_factory=list)
    # `batchyard plan`'s Azure forecast, computed from this run's own task durations.
    forecast: dict[str, Any] | None = None
    final_step: dict[str, Any] | None = None  # the job's [final] task, apart from the per-file ones
    # When the job's latest run began, where the backend keeps runs apart (a re-run's report shows the
    # earlier runs' attempts too, but its wall time is the latest run's alone).
    run_started: float | None = None
    # `` --backend NAME`` for the commands the report prints, when the configured backend is another.
    backend_flag: str = ""

    def run_span(self) -> tuple[float | None, float | None]:
        """(start, end) of the latest run's attempts: all of them when runs are not told apart."""
        mine = [a for a in self.attempts if self.run_started is None or a.start >= self.run_started]
        return min((a.start for a in mine), default=None), max((a.end for a in mine), default=None)

    @property
    def start(self) -> float | None:
        return min((a.start for a in self.attempts), default=None)

    @property
    def end(self) -> float | None:
        return max((a.end for a in self.attempts), default=None)

    @property
    def failed(self) -> list[TaskResult]:
        return sorted((r for r in self.results if r.state == TaskState.FAILED), key=lambda r: (r.label, r.task_id))

    def durations(self) -> list[float]:
        return [a.duration for a in self.attempts if a.outcome != "running"]


# ---------------------------------------------------------------------------------------------- building
def _outcome(record: dict[str, Any], *, last: bool, state: TaskState) -> str:
    category = record.get("failure_category")
    if record.get("ended_at") is None and state == TaskState.RUNNING:
        return "running"
    if category == "lost":
        return "lost"
    if category is None and record.get("exit_code") in (0, None):
        return "succeeded"
    return "failed" if last and state in (TaskState.FAILED, TaskState.CANCELLED) else "retried"


def task_attempts(result: TaskResult, now: float) -> tuple[list[Attempt], int]:
    """The attempts of one task that can be drawn, and how many more it had that were not recorded."""
    out: list[Attempt] = []
    records = list(result.attempt_records)
    for i, rec in enumerate(records):
        start = parse_time(rec.get("started_at"))
        if start is None:
            continue
        end = parse_time(rec.get("ended_at"))
        outcome = _outcome(rec, last=i == len(records) - 1, state=result.state)
        out.append(Attempt(result.task_id, result.label, int(rec.get("number") or i + 1), start,
                           end if end is not None else now, outcome, str(rec.get("node_id") or result.node_id or "?"),
                           int(rec.get("slot") or 0), rec.get("exit_code")))
    start = parse_time(result.started_at)
    if result.state == TaskState.RUNNING and start is not None and not any(a.outcome == "running" for a in out):
        # The local backend records an attempt when it ends: draw the one in progress from its claim.
        begun = max([start, *(a.end for a in out)])
        out.append(Attempt(result.task_id, result.label, len(records) + 1, begun, now, "running",
                           result.node_id or "(running)", 0, None))
    elif not out and start is not None and result.state in (TaskState.SUCCEEDED, TaskState.FAILED,
                                                            TaskState.CANCELLED):
        end = parse_time(result.ended_at) or start
        outcome = "succeeded" if result.state == TaskState.SUCCEEDED else "failed"
        out.append(Attempt(result.task_id, result.label, max(1, result.attempts), start, end, outcome,
                           result.node_id or "?", 0, result.exit_code))
    known = len(out) - (1 if out and out[-1].outcome == "running" and result.state == TaskState.RUNNING else 0)
    counted = result.attempts if result.state != TaskState.RUNNING else max(result.attempts - 1, 0)
    return out, max(0, counted - known)


def _place_rows(attempts: list[Attempt]) -> tuple[list[Attempt], list[str]]:
    """One row per (node, slot); attempts that overlap on one slot (unknown slots) get extra lanes."""
    lanes: dict[tuple[str, int], list[float]] = defaultdict(list)  # lane -> end of its last attempt
    placed: list[tuple[tuple[str, int, int], Attempt]] = []
    for a in sorted(attempts, key=lambda a: (a.node_id, a.slot, a.start, a.end)):
        ends = lanes[(a.node_id, a.slot)]
        lane = next((i for i, end in enumerate(ends) if end <= a.start), len(ends))
        if lane == len(ends):
            ends.append(a.end)
        ends[lane] = a.end
        placed.append(((a.node_id, a.slot, lane), a))
    keys = sorted({k for k, _ in placed})
    index = {k: i for i, k in enumerate(keys)}
    slots_per_node: dict[str, int] = defaultdict(int)
    for node, _, _ in keys:
        slots_per_node[node] += 1
    names = [node if slots_per_node[node] == 1 else f"{node} · {slot}" + (f".{lane}" if lane else "")
             for node, slot, lane in keys]
    rows = [replace(a, row=index[k]) for k, a in placed]
    rows.sort(key=lambda a: (a.start, a.row))
    return rows, names


def build_report(results: Iterable[TaskResult], *, job_id: str, backend: str = "?", shape: str = "",
                 counts: TaskCounts | None = None, now: float | None = None) -> ReportData:
    """Everything the report shows, from task results alone (no storage, no backend)."""
    now = datetime.now(UTC).timestamp() if now is None else now
    listed = list(results)
    attempts: list[Attempt] = []
    unrecorded = 0
    for result in listed:
        mine, missing = task_attempts(result, now)
        attempts.extend(mine)
        unrecorded += missing
    placed, rows = _place_rows(attempts)
    if counts is None:
        tally = {s: sum(1 for r in listed if r.state == s) for s in TaskState}
        counts = TaskCounts(pending=tally[TaskState.PENDING], running=tally[TaskState.RUNNING],
                            succeeded=tally[TaskState.SUCCEEDED], failed=tally[TaskState.FAILED],
                            cancelled=tally[TaskState.CANCELLED])
    data = ReportData(job_id=job_id, backend=backend, shape=shape, generated_at=now, results=listed, counts=counts,
                      attempts=placed, rows=rows, unrecorded_attempts=unrecorded)
    if unrecorded:
        data.notes.append(f"{unrecorded} earlier attempt(s) not drawn: the {backend} backend keeps only the last "
                          "attempt's times (or older ones were trimmed).")
    return data


def backend_shape(backend: Backend) -> str:
    """What ran the tasks, as configured (the report adds what was observed)."""
    config = backend.config
    if backend.name == "local":
        return f"local worker processes ({config.workers} per `batchyard run`/`worker` by default)"
    azure = getattr(config, "azure", None)
    if azure is not None and azure.pool_id:
        return f"Azure Batch pool {azure.pool_id!r}"
    pool = getattr(azure, "pool", None)
    if pool is not None:
        nodes = f"{pool.dedicated_nodes} dedicated" + (f" + {pool.spot_nodes} spot" if pool.spot_nodes else "")
        return f"auto pool: {nodes} x {pool.vm_size}, {pool.task_slots_per_node} slot(s) per node"
    return backend.name


def report_from_backend(backend: Backend, job_id: str) -> ReportData:
    from batchyard.analysis.forecast import durations_from, forecast

    results = list(backend.list_task_results(job_id))
    counts = backend.task_counts(job_id)
    pool = backend.pool_summary(job_id)  # the pool it ran on, as the backend saw it (a pool shape, not the config's)
    shape = (f"Azure Batch pool {pool.pool_id}: {pool.vm_size} x {pool.target_nodes} node(s) x {pool.slots_per_node} "
             f"slot(s) ({pool.state})" if pool is not None else backend_shape(backend))
    data = build_report(results, job_id=job_id, backend=backend.name, shape=shape, counts=counts)
    final = backend.final_step(job_id)
    data.final_step = final.to_dict() if final is not None else None
    # Truncated to the second when recorded, so it never falls after the run's first attempt.
    data.run_started = parse_time(pool.run_started_at) if pool is not None and pool.run_started_at else None
    durations = durations_from(results)
    if durations:  # what the same tasks would take and cost on the configured Azure pool
        data.forecast = forecast(backend.config, tasks=len(results), durations=durations,
                                 previous=f"this run ({backend.name}, {len(durations)} succeeded tasks)")
    return data


# ---------------------------------------------------------------------------------------------- numbers
def throughput_interval(span: float) -> int:
    """A round bin width giving at most ~60 bins over ``span`` seconds."""
    return next((s for s in NICE_INTERVALS if span / s <= 60), NICE_INTERVALS[-1])


def throughput_series(data: ReportData) -> tuple[int, list[dict[str, Any]]]:
    """Tasks reaching a final state per interval, from the first attempt's start."""
    start = data.start
    ends = [(parse_time(r.ended_at), r.state) for r in data.results if r.state in (TaskState.SUCCEEDED,
                                                                                     TaskState.FAILED,
                                                                                     TaskState.CANCELLED)]
    ends = [(t, s) for t, s in ends if t is not None]
    if not ends:
        return 1, []
    start = min([*(t for t, _ in ends), *([] if start is None else [start])])  # cancelled tasks never started
    last = max(t for t, _ in ends)
    interval = throughput_interval(max(last - start, 1e-9))
    count = int((last - start) // interval) + 1
    series = [{"start": iso(start + i * interval), "offset_s": i * interval, "completed": 0, "succeeded": 0,
               "failed": 0, "cancelled": 0} for i in range(count)]
    for t, state in ends:
        b = series[min(count - 1, int((t - start) // interval))]
        b["completed"] += 1
        b[str(state)] += 1
    return interval, series


def node_busy(data: ReportData) -> list[dict[str, Any]]:
    busy: dict[str, dict[str, Any]] = {}
    for a in data.attempts:
        entry = busy.setdefault(a.node_id, {"node_id": a.node_id, "attempts": 0, "busy_seconds": 0.0, "rows": set()})
        entry["attempts"] += 1
        entry["busy_seconds"] += a.duration
        entry["rows"].add(a.row)
    return [{"node_id": e["node_id"], "slots_seen": len(e["rows"]), "attempts": e["attempts"],
             "busy_seconds": round(e["busy_seconds"], 3)} for e in sorted(busy.values(), key=lambda e: e["node_id"])]
