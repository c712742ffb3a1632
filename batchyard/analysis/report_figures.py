"""The report's figures, drawn with matplotlib's Agg backend (no display, no fonts fetched).

The timeline has three modes, chosen from the data (:func:`timeline_mode`):

- ``bars`` (up to ``MAX_BAR_ATTEMPTS`` attempts): one bar per attempt, one row per worker
  slot / node slot, coloured by result; a bar is at least ``MIN_BAR_PX`` wide so that no
  attempt vanishes, whatever the job's length.
- ``merged`` (more attempts): per row and per result colour, attempts that touch (closer
  than one pixel) become one bar; failures are drawn last, so they stay visible.
- ``density`` (more than ``MAX_ROWS`` rows): one row each would be unreadable, so it
  shows how many attempts ran at once over time, stacked by result.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchyard.analysis.report_data import COLOURS, OUTCOMES, percentile, throughput_series

if TYPE_CHECKING:
    from batchyard.analysis.report_data import Attempt, ReportData

MAX_BAR_ATTEMPTS = 2000
MAX_ROWS = 80
MIN_BAR_PX = 4.0
DRAW_ORDER = ("succeeded", "running", "retried", "lost", "failed")  # failures on top
DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def timeline_mode(data: ReportData) -> str:
    if len(data.rows) > MAX_ROWS:
        return "density"
    return "merged" if len(data.attempts) > MAX_BAR_ATTEMPTS else "bars"


def _unit(span: float) -> tuple[float, str]:
    if span <= 600:
        return 1.0, "s"
    return (60.0, "min") if span <= 3 * 3600 else (3600.0, "h")


@dataclass
class TimelineLayout:
    """Where things were drawn, in PNG pixel coordinates (x right, y down): for tests and tooling."""

    mode: str
    width: int
    height: int
    row_y: list[int] = field(default_factory=list)
    attempt_xy: list[tuple[int, int]] = field(default_factory=list)  # bars mode: same order as data.attempts


def _png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def _merge(intervals: list[tuple[float, float]], tol: float, min_w: float) -> list[tuple[float, float]]:
    """(start, width) bars covering ``intervals`` (start, end), joining those closer than ``tol``."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        end = max(end, start + min_w)
        if merged and start - merged[-1][1] <= tol:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e - s) for s, e in merged]


def render_timeline(data: ReportData, *, width_in: float = 11.0, dpi: int = DPI,
                    title: str | None = None) -> tuple[bytes, TimelineLayout]:
    plt = _pyplot()
    mode = timeline_mode(data)
    t0 = data.start or 0.0
    span = max((data.end or t0) - t0, 1e-3)
    scale, unit = _unit(span)
    width_px = width_in * dpi
    label_chars = max((len(r) for r in data.rows), default=4) if mode != "density" else 6
    left = min(0.35, (min(label_chars, 32) * 7 + 40) / width_px)
    rows = len(data.rows) if mode != "density" else 0
    height_in = max(2.4, 1.2 + 0.26 * rows) if mode != "density" else 4.0
    fig = plt.figure(figsize=(width_in, height_in), dpi=dpi)
    bottom, top = 0.8 / height_in, 1 - 0.45 / height_in
    fig.subplots_adjust(left=left, right=0.98, bottom=bottom, top=top)
    ax = fig.add_subplot()
    ax.set_title(title or f"{data.job_id}: attempts over time ({mode})", fontsize=10, loc="left")
    ax.set_xlabel(f"{unit} since the first attempt started")
    ax.set_xlim(0, span / scale * 1.01)
    layout = TimelineLayout(mode=mode, width=round(width_px), height=round(height_in * dpi))
    px = span / scale * 1.01 / ((0.98 - left) * width_px)  # data units per pixel
    if not data.attempts:
        ax.text(0.5, 0.5, "no attempt has started", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    elif mode == "density":
        _density(ax, data, t0, span, scale)
    else:
        by_key: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for a in data.attempts:
            by_key.setdefault((a.outcome, a.row), []).append(((a.start - t0) / scale, (a.end - t0) / scale))
        tol = px if mode == "merged" else -1.0
        for outcome in DRAW_ORDER:
            for (o, row), spans in sorted(by_key.items()):
                if o == outcome:
                    ax.broken_barh(_merge(spans, tol, MIN_BAR_PX * px), (row - 0.36, 0.72),
                                   facecolors=COLOURS[outcome], edgecolor="white",
                                   linewidth=0.6 if mode == "bars" else 0)  # bars: back-to-back attempts apart
        ax.set_ylim(len(data.rows) - 0.5, -0.5)
        ax.set_yticks(range(len(data.rows)), [r if len(r) <= 32 else "…" + r[-31:] for r in data.rows], fontsize=8)
        present = [o for o in DRAW_ORDER if any(k[0] == o for k in by_key)]
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=COLOURS[o], label=o) for o in present], loc="lower right", ncol=len(present),
                  bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False, borderaxespad=0.2)
        ax.grid(axis="x", color="#eeeeee")
        ax.set_axisbelow(True)
    fig.canvas.draw()
    height = layout.height
    if mode != "density" and data.attempts:
        to_px = ax.transData.transform
        layout.row_y = [round(height - to_px((0, r))[1]) for r in range(len(data.rows))]
        if mode == "bars":
            for a in data.attempts:
                x0 = (a.start - t0) / scale
                w = max((a.end - a.start) / scale, MIN_BAR_PX * px)
                x, y = to_px((x0 + w / 2, a.row))
                layout.attempt_xy.append((int(x), round(height - y)))
    return _png(fig, dpi), layout


def _density(ax: Any, data: ReportData, t0: float, span: float, scale: float) -> None:
    import numpy as np

    bins = 400
    edges = np.linspace(0.0, span, bins + 1)
    width = edges[1] - edges[0]
    layers, labels, colours = [], [], []
    for outcome in OUTCOMES:
        mine: list[Attempt] = [a for a in data.attempts if a.outcome == outcome]
        if not mine:
            continue
        s = np.array([a.start - t0 for a in mine])
        d = np.array([a.duration for a in mine])
        busy = np.zeros(bins + 1)
        for chunk in range(0, len(s), 2000):  # busy seconds up to each edge, 2000 attempts at a time
            busy += np.clip(edges[:, None] - s[None, chunk:chunk + 2000], 0, d[None, chunk:chunk + 2000]).sum(axis=1)
        layers.append(np.diff(busy) / width)
        labels.append(outcome)
        colours.append(COLOURS[outcome])
    centres = (edges[:-1] + width / 2) / scale
    ax.stackplot(centres, *layers, labels=labels, colors=colours, linewidth=0)
    ax.set_ylabel("attempts running at once")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(bottom=0)


def render_durations(data: ReportData, *, width_in: float = 11.0, dpi: int = DPI) -> bytes:
    plt = _pyplot()
    durations = data.durations()
    fig, ax = plt.subplots(figsize=(width_in, 3.4), dpi=dpi, layout="constrained")
    ax.set_title(f"attempt durations ({len(durations)} finished attempts, retries included)", fontsize=10, loc="left")
    if durations:
        bins = int(min(50, max(5, len(durations) ** 0.5)))
        ax.hist(durations, bins=bins, color="#4c72b0", edgecolor="white", linewidth=0.5)
        med, p95 = percentile(durations, 50), percentile(durations, 95)
        ax.axvline(med, color="black", linestyle="--", linewidth=1.2, label=f"median {med:.2f} s")
        ax.axvline(p95, color=COLOURS["failed"], linestyle=":", linewidth=1.6, label=f"p95 {p95:.2f} s")
        ax.legend(fontsize=8)
        ax.set_xlabel("seconds")
        ax.set_ylabel("attempts")
    else:
        ax.text(0.5, 0.5, "no finished attempt", ha="center", va="center", transform=ax.transAxes)
    return _png(fig, dpi)


def render_throughput(data: ReportData, *, width_in: float = 11.0, dpi: int = DPI) -> bytes:
    plt = _pyplot()
    interval, series = throughput_series(data)
    fig, ax = plt.subplots(figsize=(width_in, 3.2), dpi=dpi, layout="constrained")
    ax.set_title(f"tasks completed per {interval} s", fontsize=10, loc="left")
    if series:
        span = series[-1]["offset_s"] + interval
        scale, unit = _unit(span)
        x = [b["offset_s"] / scale for b in series]
        ok = [b["succeeded"] for b in series]
        bad = [b["failed"] for b in series]
        w = interval / scale
        ax.bar(x, ok, width=w, align="edge", color=COLOURS["succeeded"], label="succeeded", linewidth=0)
        ax.bar(x, bad, width=w, align="edge", bottom=ok, color=COLOURS["failed"], label="failed", linewidth=0)
        cancelled = [b["cancelled"] for b in series]
        if any(cancelled):
            ax.bar(x, cancelled, width=w, align="edge", bottom=[o + f for o, f in zip(ok, bad, strict=True)],
                   color=COLOURS["lost"], label="cancelled", linewidth=0)
        ax.set_xlabel(f"{unit} since the first attempt started")
        ax.set_ylabel("tasks")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no task has finished", ha="center", va="center", transform=ax.transAxes)
    return _png(fig, dpi)


def render_figures(data: ReportData) -> dict[str, bytes]:
    timeline, _ = render_timeline(data)
    return {"timeline": timeline, "durations": render_durations(data), "throughput": render_throughput(data)}
