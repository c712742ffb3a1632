"""``batchyard report JOB`` and the live view behind ``batchyard status JOB --watch``.

``report`` writes ``report.html`` (self-contained) and its PNGs, or prints the numbers with
``--json``. :func:`watch_status` polls a job and redraws a table until it ends; Ctrl-C
stops watching only (the job keeps running).
"""

from __future__ import annotations

import json
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from batchyard.backends.base import Backend, TaskCounts, TaskResult, TaskState
from batchyard.cli.params import BATCH_ID

RATE_WINDOW_S = 60.0
SLOWEST_SHOWN = 5


# --------------------------------------------------------------------------------------------- report
# The same options as the other commands; cli.py is imported only when the command runs, so
# ``cli.py`` can import this module (``main.add_command(report)``) and tests can import it first.
@click.command()
@click.argument("job_id", type=BATCH_ID)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.html and its PNGs (default: ./JOB_ID-report; with --json: none written).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's numbers as JSON.")
@click.option("--backend", default=None, help="Backend to use: local or azure (default: config).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="batchyard.toml to use (default: the nearest one above the working dir).")
@click.option("-v", "--verbose", count=True, help="Debug logs (-vv: also Azure SDK requests).")
def report(job_id: str, out_dir: str | None, as_json: bool, backend: str | None, config_path: str | None,
           verbose: int) -> None:
    """Write an HTML report of JOB_ID (timeline, durations, throughput, failures) that opens offline.

    With --json, print the numbers behind it instead (and write files only if --out is given).
    """
    from batchyard.cli.common import handle_errors

    handle_errors(_report)(job_id, out_dir, as_json, backend, config_path, verbose)


def _report(job_id: str, out_dir: str | None, as_json: bool, backend: str | None, config_path: str | None,
            verbose: int) -> None:
    from batchyard.analysis.report import report_from_backend, report_numbers, write_report
    from batchyard.cli.common import _context, backend_flag, console, out

    _, be = _context(verbose, config_path, backend, job_id)
    with be:
        job_id = be.resolve_job_id(job_id)  # the id it was submitted with names the default folder too
        data = report_from_backend(be, job_id)
    data.backend_flag = backend_flag(config_path, be.name)
    if as_json:
        out.print_json(json.dumps(report_numbers(data), ensure_ascii=False))
    if out_dir is None and as_json:
        return
    page = write_report(data, Path(out_dir or f"{job_id}-report"))
    console.print(f"report written: {page}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------- watch
class _Rate:
    """Tasks finished per second over a sliding window of (time, done) samples."""

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> None:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def per_second(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 >= 1.0 else None


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "—"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _slowest_running(backend: Backend, job_id: str) -> list[tuple[float, TaskResult]]:
    from batchyard.analysis.report import parse_time

    now = datetime.now(UTC).timestamp()
    running = []
    for r in backend.list_task_results(job_id):
        started = parse_time(r.started_at)
        if r.state == TaskState.RUNNING and started is not None:
            running.append((now - started, r))
    running.sort(key=lambda pair: -pair[0])
    return running[:SLOWEST_SHOWN]


def _render(job_id: str, backend: str, counts: TaskCounts, rate: float | None, elapsed: float,
            slowest: list[tuple[float, TaskResult]], final: bool) -> Group:
    table = Table(title=f"job {job_id} on {backend}" + (" — finished" if final else ""), title_justify="left")
    for col in ("pending", "running", "succeeded", "failed", "cancelled", "total"):
        table.add_column(col, justify="right")
    table.add_row(str(counts.pending), Text(str(counts.running), style="blue"),
                  Text(str(counts.succeeded), style="green"),
                  Text(str(counts.failed), style="red") if counts.failed else "0",
                  Text(str(counts.cancelled), style="yellow") if counts.cancelled else "0", str(counts.total))
    remaining = counts.pending + counts.running
    eta = remaining / rate if rate else None
    pace = "—" if rate is None else f"{rate * 60:.1f} tasks/min"
    line = Text(f"{counts.done}/{counts.total} done · throughput {pace} · "
                f"ETA {'0s' if final else _duration(eta)} · watching {_duration(elapsed)}")
    parts: list[object] = [table, line]
    if slowest and not final:
        slow = Table(title="slowest running tasks", title_justify="left")
        for col in ("task", "input", "node", "attempt", "running for"):
            slow.add_column(col, overflow="fold")
        for secs, r in slowest:
            # Text: the label is user data, never markup, whatever console the caller passed.
            slow.add_row(r.task_id, Text(r.label), r.node_id or "", str(max(r.attempts, 1)), _duration(secs))
        parts.append(slow)
    return Group(*parts)  # type: ignore[arg-type]


class _Printed:
    """``Live``'s part that watch_status uses, for a console that is not a terminal."""

    EVERY_S = 60.0

    def __init__(self, console: Console) -> None:
        self.console, self.last_key, self.last_at = console, None, 0.0

    def __enter__(self) -> _Printed:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def show(self, renderable: Any, *, key: Any) -> None:
        now = time.monotonic()
        if key != self.last_key or now - self.last_at >= self.EVERY_S:
            self.console.print(renderable)
            self.last_key, self.last_at = key, now

    def stop(self) -> None:
        return None


def watch_status(backend: Backend, job_id: str, *, console: Console, interval: float = 1.0,
                 timeout: float | None = None) -> TaskCounts:
    """Show a live table of JOB's counts, throughput, ETA and slowest running tasks until it ends.

    Returns the last counts: ``counts.finished`` is False when watching stopped early (Ctrl-C,
    which leaves the job running, or ``timeout`` seconds). Listing running tasks costs a full
    listing on big jobs, so it is refreshed at most every ``interval`` and never more than 10%
    of the time.
    """
    rate = _Rate()
    began = time.monotonic()
    state: dict[str, object] = {"counts": TaskCounts(), "slowest": [], "next_scan": 0.0}

    # Piped or redirected (a CI log, `| tee`), a live view draws nothing until it stops: print the
    # view instead each time the counts change (and at least every minute), so the log follows the job.
    view: Any = Live(console=console, refresh_per_second=4, transient=False, auto_refresh=False) \
        if console.is_terminal else _Printed(console)
    with view as live:
        def on_progress(counts: TaskCounts) -> None:
            now = time.monotonic()
            rate.add(now, counts.done)
            state["counts"] = counts
            if counts.running and now >= state["next_scan"]:  # type: ignore[operator]
                t = time.monotonic()
                state["slowest"] = _slowest_running(backend, job_id)
                cost = time.monotonic() - t
                state["next_scan"] = time.monotonic() + max(interval, cost * 9)
            elif not counts.running:
                state["slowest"] = []
            shown = _render(job_id, backend.name, counts, rate.per_second(), now - began,
                            state["slowest"], counts.finished)  # type: ignore[arg-type]
            if isinstance(live, _Printed):
                live.show(shown, key=counts)
            else:
                live.update(shown, refresh=True)

        try:
            counts = backend.wait(job_id, on_progress=on_progress, poll_interval=interval, timeout=timeout)
        except KeyboardInterrupt:
            counts = state["counts"]  # type: ignore[assignment]
            live.stop()
            console.print(f"stopped watching; job {job_id} keeps running "
                          f"(`batchyard status {job_id} --watch` to watch again)", highlight=False)
    return counts
