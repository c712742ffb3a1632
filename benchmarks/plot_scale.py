"""docs/images/scale.png: each command's seconds against the job's size, from benchmarks/results/latest.json;
and the same figures as a Markdown table (printed), for docs/performance.md.

python -m benchmarks.plot_scale [LATEST_JSON] [OUT_PNG]   (after `make bench BENCH_ARGS="--only scale --scale"`)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
LOCAL_STEPS = ("submit", "status", "status_json", "report", "cancel", "delete")
AZURE_STEPS = ("submit", "status", "cancel", "delete")


LABELS = {"submit": "run --no-wait", "status_json": "status --json", "status_cancelled": "status (after cancel)"}


def _series(section: dict[str, Any], step: str) -> tuple[list[int], list[float]]:
    sizes = sorted(int(n) for n in section)
    return sizes, [section[str(n)][step]["s"] for n in sizes]


def plot(latest: Path, out: Path) -> Path:
    scale = json.loads(latest.read_text(encoding="utf-8"))["scale"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (title, section, steps) in zip(axes, (("local backend (Azurite)", scale["local"], LOCAL_STEPS),
                                                  ("azure backend -> Batch emulator", scale["azure_emulator"],
                                                   AZURE_STEPS)), strict=True):
        for step in steps:
            sizes, seconds = _series(section, step)
            ax.plot(sizes, seconds, marker="o", label=LABELS.get(step, step))
        counts = sorted(int(n) for n in section if "counts_call_s" in section[n])
        if counts:
            ax.plot(counts, [section[str(n)]["counts_call_s"] for n in counts], marker="s", linestyle="--",
                    label="task counts call")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tasks in the job")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("seconds (the whole command, start-up included)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def table(latest: Path) -> str:
    """Seconds (and peak RSS) of each step at each size, one row per backend and step."""
    scale = json.loads(latest.read_text(encoding="utf-8"))["scale"]
    lines = []
    for backend, section in scale.items():
        sizes = sorted(int(n) for n in section)
        if not lines:
            lines += ["| backend | step | " + " | ".join(f"{n:,} tasks" for n in sizes) + " |",
                      "|---|---|" + "---|" * len(sizes)]
        steps = [k for k, v in section[str(sizes[0])].items() if isinstance(v, dict)]
        for step in steps:
            cells = []
            for n in sizes:
                value = section[str(n)].get(step)
                if value is None:
                    cells.append("")
                    continue
                cell = f"{value['s']:.2f} s, {value['rss_mib']:.0f} MiB"
                if step == "status_json" and value.get("first_byte_s") is not None:
                    cell += f" (first byte {value['first_byte_s']:.2f} s)"
                cells.append(cell)
            lines.append(f"| {backend} | `{LABELS.get(step, step)}` | " + " | ".join(cells) + " |")
        for key in ("counts_call_s", "emulator_rss_holding_tasks_mib", "emulator_peak_rss_mib"):
            if key in section[str(sizes[0])]:
                lines.append(f"| {backend} | {key} | " + " | ".join(str(section[str(n)].get(key, ""))
                                                                   for n in sizes) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    latest = Path(args[0]) if args else ROOT / "benchmarks" / "results" / "latest.json"
    print(table(latest))
    print(plot(latest, Path(args[1]) if len(args) > 1 else ROOT / "docs" / "images" / "scale.png"))
