"""``batchyard report``: what a job did, as numbers, figures and one self-contained HTML page.

The data (attempts on timeline rows, throughput, busy time) is built in
:mod:`batchyard.analysis.report_data` and drawn in :mod:`batchyard.analysis.report_figures`;
this module is what ``--json`` prints (:func:`report_numbers`) and :func:`write_report`, which
writes ``report.html`` plus the PNGs it embeds (as ``data:`` URIs, so the page opens offline and
fetches nothing). The data module's names are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import base64
import html
import shlex
import statistics
from pathlib import Path
from typing import Any

from batchyard.analysis.report_data import (
    COLOURS,
    OUTCOME_HELP,
    OUTCOMES,
    Attempt,
    ReportData,
    backend_shape,
    build_report,
    iso,
    node_busy,
    parse_time,
    percentile,
    report_from_backend,
    task_attempts,
    throughput_interval,
    throughput_series,
)
from batchyard.analysis.report_figures import render_figures, timeline_mode

MAX_FAILED_ROWS_HTML = 200
STDERR_TAIL_HTML = 1500


def logs_command(job_id: str, task_id: str, backend_flag: str = "") -> str:
    return f"batchyard logs {shlex.quote(job_id)} {shlex.quote(task_id)} --stderr{backend_flag}"


def report_numbers(data: ReportData) -> dict[str, Any]:
    """What ``batchyard report --json`` prints: the numbers behind every figure."""
    durations = data.durations()
    interval, series = throughput_series(data)
    start, end = data.run_span()
    return {
        "job_id": data.job_id, "backend": data.backend, "shape": data.shape,
        "generated_at": iso(data.generated_at), "start": iso(start), "end": iso(end),
        "wall_seconds": None if start is None or end is None else round(end - start, 3),
        "run_started": iso(data.run_started),
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
                          "stderr_tail": r.stderr_tail,
                          "logs_command": logs_command(data.job_id, r.task_id, data.backend_flag)}
                         for r in data.failed],
        "final_step": data.final_step,
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
              ("Wall time", "—" if n["wall_seconds"] is None else f"{n['wall_seconds']:.1f} s"
               + (f" (the latest run, begun {n['run_started']})" if n["run_started"] else "")),
              ("Tasks", f"{t['total']} total: {t['succeeded']} succeeded, {t['failed']} failed, "
                        f"{t['cancelled']} cancelled, {t['running']} running, {t['pending']} pending"),
              ("Attempts", f"{t['attempts']} ({t['retries']} retries)"),
              ("Durations (per attempt)", "—" if d["median"] is None else
               f"median {d['median']:.2f} s, p95 {d['p95']:.2f} s, max {d['max']:.2f} s"),
              ("Report generated", n["generated_at"])]
    if data.final_step is not None:  # after the per-file tasks, and not among them
        final, result = data.final_step, data.final_step["result"] or {}
        header.insert(6, ("Final step", f"{final['state']} (run_when = {final['run_when']}"
                          + (f", exit code {result['exit_code']}" if result.get("exit_code") is not None else "")
                          + ")" + (f": {final['reason']}" if final["reason"] else "")))
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


__all__ = ["COLOURS", "OUTCOMES", "OUTCOME_HELP", "Attempt", "ReportData", "backend_shape", "build_report", "iso",
           "node_busy", "parse_time", "percentile", "render_html", "report_from_backend", "report_numbers",
           "task_attempts", "throughput_interval", "throughput_series", "write_report"]
