"""Time and cost of a job on Azure, from task durations (a previous run, or this one).

Used by ``batchyard plan`` (before a cloud run) and ``batchyard report`` (next to a run's
actuals). Prices come from a small bundled table (``batchyard/data/vm_prices.toml``, dated,
approximate) that ``[azure.prices]`` overrides.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

from batchyard.core.config import Config, PoolSection

# Figures from Microsoft's Batch documentation (sources and reasoning in docs/plan.md, "Forecast"):
# a new pool's nodes take minutes to allocate, boot and run the start task before any task starts ...
POOL_STARTUP_S = 5 * 60.0
# ... and each task costs Batch a few seconds of its slot beyond the command itself: scheduling it to
# the node, staging its resource files, uploading its outputs and logs.
TASK_OVERHEAD_S = 2.0


def run_timeline(*, tasks: int, slots: int, mean_s: float, longest_s: float, existing_pool: bool
                 ) -> dict[str, float]:
    """When the run's phases end, in seconds after submit: nodes ready, the last task starts, all done.

    Tasks run in waves of ``slots``; each holds its slot for its own time plus Batch's per-task overhead.
    """
    allocation = 0.0 if existing_pool else POOL_STARTUP_S
    per_task = mean_s + TASK_OVERHEAD_S
    waves = max(1, -(-tasks // max(1, slots)))
    busy = max(per_task * tasks / max(1, slots), longest_s + TASK_OVERHEAD_S)
    return {"allocation_s": allocation, "last_start_s": allocation + (waves - 1) * per_task,
            "wall_s": allocation + busy, "overhead_s": TASK_OVERHEAD_S * tasks / max(1, slots)}


def load_prices(config: Config) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    data = tomllib.loads(resources.files("batchyard").joinpath("data/vm_prices.toml").read_text(encoding="utf-8"))
    sizes = {k.lower(): dict(v) for k, v in data["sizes"].items()}
    for size, price in config.azure.prices.items():
        sizes.setdefault(size.lower(), {})["usd_per_hour"] = float(price)
        sizes[size.lower()]["from_config"] = 1.0
    return sizes, data["meta"]


def durations_from(results: Iterable[Any]) -> list[float]:
    """Seconds per succeeded task (its last attempt's start to end)."""
    out: list[float] = []
    for r in results:
        if str(r.state) != "succeeded" or not r.started_at or not r.ended_at:
            continue
        records = [a for a in r.attempt_records if a.get("started_at") and a.get("ended_at")]
        start, end = (records[-1]["started_at"], records[-1]["ended_at"]) if records else (r.started_at, r.ended_at)
        try:
            seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        except ValueError:
            continue
        out.append(max(0.0, seconds))
    return out


def forecast(config: Config, *, tasks: int, durations: Sequence[float] | None, previous: str,
             total: int | None = None, final_step: bool = False) -> dict[str, Any]:
    """Wall time and cost on the configured pool of a run that runs ``tasks`` of the job's ``total``
    (the rest kept from its previous run on Batch): none runs, no pool is made, nothing is billed."""
    section = config.azure.pool or PoolSection()
    sizes, meta = load_prices(config)
    entry = sizes.get(section.vm_size.lower(), {})
    price = entry.get("usd_per_hour")
    existing = bool(config.azure.pool_id)
    nodes = max(1, section.dedicated_nodes + section.spot_nodes) if not section.autoscale_formula else 1
    slots = nodes * section.task_slots_per_node
    result: dict[str, Any] = {
        "previous_run": previous, "tasks": tasks, "total_tasks": tasks if total is None else total,
        "final_step": final_step,
        "vm_size": section.vm_size, "nodes": nodes,
        "dedicated_nodes": section.dedicated_nodes, "spot_nodes": section.spot_nodes,
        "task_slots_per_node": section.task_slots_per_node, "slots": slots,
        "usd_per_node_hour": price, "price_source": (
            "[azure.prices] in config" if entry.get("from_config") else
            f"batchyard/data/vm_prices.toml ({meta['region']}, {meta['date']}, approximate)" if price else None),
        "assumptions": [
            f"tasks take as long as in the previous run; {slots} slot(s) run them in parallel",
            f"node allocation (pool created, nodes booted, start task run): "
            f"{'0 (existing pool)' if existing else hms(POOL_STARTUP_S)}",
            f"Batch's per-task overhead (scheduling, staging, output upload): {hms(TASK_OVERHEAD_S)} per task",
            "wall time = node allocation + max((mean task + overhead) x tasks / slots, longest task + overhead)",
            "cost = nodes x price x wall time (nodes billed while the pool exists); storage and egress excluded",
            f"spot nodes assumed {meta.get('spot_discount', 0.8):.0%} cheaper than list price",
        ],
    }
    if existing:
        result["assumptions"].append(f"existing pool {config.azure.pool_id!r}: its size is taken from [azure.pool]")
    if section.autoscale_formula:
        # The plan runs the formula over a simulated job (analysis/autoscale_sim.py): its section gives
        # the node count over time, and a wall time and cost from it; this timeline is the 1-node floor.
        result["assumptions"].append("autoscale pool: this estimate assumes 1 node; the formula's simulated run "
                                     "(autoscale, below) gives the node count over time, its wall time and cost")
    if price is None:
        result["assumptions"].append(f"no price for {section.vm_size}: add [azure.prices] {section.vm_size} = "
                                     "<USD per hour> to batchyard.toml")
    if total is not None and total != tasks:
        result["assumptions"].insert(0, f"{tasks} of the job's {total} tasks run: the others are kept from its "
                                        "previous run on Azure Batch (plan's `run` line says why each runs)")
    if not tasks:  # a run that adds nothing makes no pool (a final step due alone is not forecast)
        result.update(wall_time_s=0.0, cost_usd=0.0, node_allocation_s=0.0, task_overhead_s=0.0,
                      last_task_start_s=0.0, mean_task_s=None, longest_task_s=None)
        return result
    if not durations:
        result.update(wall_time_s=None, cost_usd=None)
        return result
    timeline = run_timeline(tasks=tasks, slots=slots, mean_s=sum(durations) / len(durations),
                            longest_s=max(durations), existing_pool=existing)
    wall = timeline["wall_s"]
    result.update(mean_task_s=round(sum(durations) / len(durations), 3), longest_task_s=round(max(durations), 3),
                  wall_time_s=round(wall, 1), node_allocation_s=timeline["allocation_s"],
                  task_overhead_s=round(timeline["overhead_s"], 1),
                  last_task_start_s=round(timeline["last_start_s"], 1))
    if price is not None:
        discount = float(meta.get("spot_discount", 0.8))
        hourly = price * (section.dedicated_nodes + section.spot_nodes * (1 - discount))
        if section.autoscale_formula:
            hourly = price
        result["cost_usd"] = round(hourly * wall / 3600, 4)
    else:
        result["cost_usd"] = None
    return result


def hms(seconds: float) -> str:
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


# ---------------------------------------------------------------------------------------------- plan
