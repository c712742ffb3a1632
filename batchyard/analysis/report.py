"""``batchyard report``: what a job did, as numbers, figures and one self-contained HTML page.

:func:`build_report` turns a job's :class:`~batchyard.backends.base.TaskResult` list into a
:class:`ReportData` (every attempt placed on a timeline row, durations, throughput, busy time
per node, failed tasks); :func:`report_numbers` is what ``--json`` prints, and
:func:`write_report` writes ``report.html`` plus the PNGs it embeds (as ``data:`` URIs,
so the page opens offline and fetches nothing). Figures live in :mod:`batchyard.analysis.report_figures`.

Durations are per *attempt* (each run of the command, retries included), the unit a
histogram of "how long does my command take" wants; throughput counts tasks reaching a
final state. Percentiles interpolate linearly (numpy's default, ``statistics.quantiles``
with ``method="inclusive"``).
"""

from __future__ import annotations

import base64
import html
import math
import shlex
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
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
MAX_FAILED_ROWS_HTML = 200
STDERR_TAIL_HTML = 1500
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
    return "failed" if last and state == TaskState.FAILED else "retried"


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
    elif not out and start is not None and result.state in (TaskState.SUCCEEDED, TaskState.FAILED):
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
                            succeeded=tally[TaskState.SUCCEEDED], failed=tally[TaskState.FAILED])
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
    data = build_report(results, job_id=job_id, backend=backend.name, shape=backend_shape(backend), counts=counts)
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
                                                                                     TaskState.FAILED)]
    ends = [(t, s) for t, s in ends if t is not None]
    if not ends:
        return 1, []
    start = min([*(t for t, _ in ends), *([] if start is None else [start])])  # cancelled tasks never started
    last = max(t for t, _ in ends)
    interval = throughput_interval(max(last - start, 1e-9))
    count = int((last - start) // interval) + 1
    series = [{"start": iso(start + i * interval), "offset_s": i * interval, "completed": 0, "succeeded": 0,
               "failed": 0} for i in range(count)]
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


def logs_command(job_id: str, task_id: str) -> str:
    return f"batchyard logs {shlex.quote(job_id)} {shlex.quote(task_id)} --stderr"


def report_numbers(data: ReportData) -> dict[str, Any]:
    """What ``batchyard report --json`` prints: the numbers behind every figure."""
    durations = data.durations()
    interval, series = throughput_series(data)
    start, end = data.start, data.end
    from batchyard.analysis.report_figures import timeline_mode

    return {
        "job_id": data.job_id, "backend": data.backend, "shape": data.shape,
        "generated_at": iso(data.generated_at), "start": iso(start), "end": iso(end),
        "wall_seconds": None if start is None or end is None else round(end - start, 3),
        "forecast": data.forecast,
        "totals": {**data.counts.to_dict(), "attempts": sum(r.attempts for r in data.results),
                   "retries": sum(r.retry_count for r in data.results), "attempts_drawn": len(data.attempts),
                   "attempts_unrecorded": data.unrecorded_attempts, "rows": len(data.rows)},
        "durations": {"basis": "attempt", "count": len(durations),
                      "median": _round(percentile(durations, 50)), "p95": _round(percentile(durations, 95)),
                      "max": _round(max(durations, default=None)),
                      "mean": _round(statistics.fmean(durations) if durations else None)},
        "throughput": {"interval_seconds": interval, "series": series},
        "nodes": node_busy(data),
        "timeline": {"mode": timeline_mode(data), "rows": len(data.rows)},
        "failed_tasks": [{"task_id": r.task_id, "label": r.label, "failure_category": r.failure_category,
                          "failure_message": r.failure_message, "exit_code": r.exit_code, "attempts": r.attempts,
                          "stderr_tail": r.stderr_tail, "logs_command": logs_command(data.job_id, r.task_id)}
                         for r in data.failed],
        "notes": data.notes,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---------------------------------------------------------------------------------------------- HTML
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1180px;color:#222;
padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;
vertical-align:top}th{background:#f4f4f4}dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}
dt{font-weight:600}pre{white-space:pre-wrap;margin:0;font-size:12px;max-height:14em;overflow:auto}
img{max-width:100%;height:auto;border:1px solid #eee}.note{color:#666}.placeholder{border:1px dashed #bbb;
padding:.6rem;color:#777}.key span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;
vertical-align:middle}code{font-size:12px}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def render_html(data: ReportData, figures: dict[str, bytes], numbers: dict[str, Any] | None = None) -> str:
    """The page: header, three figures (embedded), failed tasks. References nothing outside itself."""
    n = numbers or report_numbers(data)
    t, d = n["totals"], n["durations"]
    nodes = n["nodes"]
    observed = f"{len(nodes)} node(s)/host(s), {len(data.rows)} timeline row(s) (slots) seen"
    header = [("Backend", data.backend), ("Workers / nodes", f"{data.shape}; observed: {observed}"),
              ("Start", n["start"] or "—"), ("End", n["end"] or "—"),
              ("Wall time", "—" if n["wall_seconds"] is None else f"{n['wall_seconds']:.1f} s"),
              ("Tasks", f"{t['total']} total: {t['succeeded']} succeeded, {t['failed']} failed, "
                        f"{t['running']} running, {t['pending']} pending"),
              ("Attempts", f"{t['attempts']} ({t['retries']} retries)"),
              ("Durations (per attempt)", "—" if d["median"] is None else
               f"median {d['median']:.2f} s, p95 {d['p95']:.2f} s, max {d['max']:.2f} s"),
              ("Report generated", n["generated_at"])]
    key = "".join(f'<span style="background:{COLOURS[o]}"></span>{_e(OUTCOME_HELP[o])}' for o in OUTCOMES)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        'style-src \'unsafe-inline\'">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>batchyard report: {_e(data.job_id)}</title><style>{CSS}</style></head><body>",
        f"<h1>Job {_e(data.job_id)}</h1>", '<dl id="summary">',
        *(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in header), "</dl>",
        _forecast_section(data.forecast, n["wall_seconds"]),
        *(f'<p class="note">{_e(note)}</p>' for note in data.notes),
        "<h2>Timeline</h2>", f'<p class="key">{key}</p>',
        f'<p class="note">{_e(_timeline_caption(n))}</p>', _img(figures["timeline"], "timeline of task attempts"),
        "<h2>Task durations</h2>", _img(figures["durations"], "histogram of attempt durations"),
        "<h2>Throughput</h2>",
        f'<p class="note">Tasks reaching a final state per {n["throughput"]["interval_seconds"]} s.</p>',
        _img(figures["throughput"], "tasks completed over time"),
        "<h2>Busy time per node</h2>", _nodes_table(nodes),
        f'<h2 id="failed">Failed tasks ({len(n["failed_tasks"])})</h2>', _failed_table(n["failed_tasks"], data),
        "</body></html>",
    ]
    return "\n".join(parts)


def _timeline_caption(n: dict[str, Any]) -> str:
    mode = n["timeline"]["mode"]
    if mode == "bars":
        return "One row per worker slot or Batch node slot, one bar per attempt."
    if mode == "merged":
        return (f"{n['totals']['attempts_drawn']} attempts: per row, attempts of one colour that touch are merged "
                "into one bar (failures are drawn on top, so none hides).")
    return (f"{n['timeline']['rows']} rows are too many to draw one each: the chart shows how many attempts ran "
            "at once, by result.")


def _nodes_table(nodes: list[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{_e(x['node_id'])}</td><td>{x['slots_seen']}</td><td>{x['attempts']}</td>"
                   f"<td>{x['busy_seconds']:.1f}</td></tr>" for x in nodes)
    return f"<table><tr><th>node</th><th>slots seen</th><th>attempts</th><th>busy s</th></tr>{rows}</table>"


def _failed_table(failed: list[dict[str, Any]], data: ReportData) -> str:
    if not failed:
        return "<p>No task failed.</p>"
    body = []
    for f in failed[:MAX_FAILED_ROWS_HTML]:
        tail = f["stderr_tail"] or ""
        if len(tail) > STDERR_TAIL_HTML:
            tail = "…" + tail[-STDERR_TAIL_HTML:]
        body.append(
            f'<tr class="failed-task"><td>{_e(f["task_id"])}</td><td>{_e(f["label"])}</td>'
            f'<td>{_e(f["failure_category"])}<br><span class="note">{_e(f["failure_message"])}</span></td>'
            f'<td>{_e(f["exit_code"])}</td><td>{f["attempts"]}</td><td><pre>{_e(tail)}</pre></td>'
            f'<td><code>{_e(f["logs_command"])}</code></td></tr>')
    more = ""
    if len(failed) > MAX_FAILED_ROWS_HTML:
        more = (f'<p class="note">… and {len(failed) - MAX_FAILED_ROWS_HTML} more: '
                f"<code>batchyard report {_e(shlex.quote(data.job_id))} --json</code> lists them all.</p>")
    return ("<table><tr><th>task</th><th>input</th><th>failure</th><th>exit</th><th>attempts</th>"
            f"<th>stderr (tail)</th><th>full log</th></tr>{''.join(body)}</table>{more}")


def write_report(data: ReportData, out_dir: Path) -> Path:
    """Write the PNGs and ``report.html`` (which embeds them) into ``out_dir``; returns the HTML's path."""
    from batchyard.analysis.report_figures import render_figures

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = render_figures(data)
    for name, png in figures.items():
        (out_dir / f"{name}.png").write_bytes(png)
    page = out_dir / "report.html"
    page.write_text(render_html(data, figures), encoding="utf-8")
    return page


def _forecast_section(fc: dict[str, Any] | None, actual_s: float | None) -> str:
    """`batchyard plan`'s forecast for the configured Azure pool, next to this run's actual wall time."""
    if not fc or fc.get("wall_time_s") is None:
        return ('<section id="forecast" class="placeholder">Forecast: none (no succeeded task to base it on).'
                "</section>")
    cost = "unknown price" if fc.get("cost_usd") is None else f"about ${fc['cost_usd']:.4f}"
    actual = "—" if actual_s is None else f"{actual_s:.1f} s"
    items = "".join(f"<li>{_e(a)}</li>" for a in fc.get("assumptions", []))
    return (f'<section id="forecast"><h2>Forecast on Azure vs this run</h2><p>On {fc["nodes"]} x '
            f'{_e(fc["vm_size"])} ({fc["slots"]} slot(s)): wall time about {fc["wall_time_s"]:.1f} s, {cost}. '
            f"This run: {actual} on {_e(fc['previous_run'])}.</p><ul>{items}</ul></section>")
