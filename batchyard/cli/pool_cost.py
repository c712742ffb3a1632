"""The line ``status`` (and ``run``, ``cancel``) print about a job's pool: its state, nodes, node-hours and cost.

Node-hours run from each node's allocation to now (or to the pool's release, for a pool batchyard
deleted); cost is node-hours x the price in ``batchyard/data/vm_prices.toml`` (or ``[azure.prices]``),
with spot hours at the table's spot discount. Approximate: list prices, no storage or egress.
"""

from __future__ import annotations

from typing import Any

from batchyard.analysis.forecast import load_prices
from batchyard.backends.base import PoolSummary
from batchyard.core.config import Config


def pool_cost(summary: PoolSummary, config: Config) -> dict[str, Any]:
    """``summary`` as a dict, with the price per node-hour, its source and the cost so far (None: no price)."""
    sizes, meta = load_prices(config)
    entry = sizes.get(summary.vm_size.lower(), {})
    price = entry.get("usd_per_hour")
    data = summary.to_dict()
    data["node_hours"] = round(summary.dedicated_hours + summary.spot_hours, 4)
    data["usd_per_node_hour"] = price
    data["price_source"] = ("[azure.prices] in config" if entry.get("from_config") else
                            f"vm_prices.toml, {meta['region']} {meta['date']}, approximate" if price else None)
    discount = float(meta.get("spot_discount", 0.8))
    data["cost_usd"] = (None if price is None else
                        round(price * (summary.dedicated_hours + summary.spot_hours * (1 - discount)), 4))
    return data


def pool_line(summary: PoolSummary, config: Config) -> str:
    data = pool_cost(summary, config)
    shape = f"{summary.vm_size} x {summary.target_nodes} node(s) x {summary.slots_per_node} slot(s)"
    if data["cost_usd"] is None:
        cost = f"no price for {summary.vm_size} ([azure.prices] {summary.vm_size} = <USD per hour>)"
    else:
        cost = f"~${data['cost_usd']:.4f} at ${data['usd_per_node_hour']}/node-hour ({data['price_source']})"
    hours = f"{data['node_hours']:.3f} node-hours"
    if summary.state in ("deleted", "kept"):
        end = ("deleted at the end of the run" if summary.state == "deleted" else
               f"kept ([azure] keep_auto_pool = true; it bills until `batchyard pool delete {summary.pool_id}`)")
        return f"pool {summary.pool_id}: {end}; {shape}; {hours}, {cost}"
    states = ", ".join(f"{count} {state}" for state, count in sorted(summary.node_states.items())) or "no node"
    owner = "made for this job" if summary.per_job else "shared ([azure] pool_id)"
    return (f"pool {summary.pool_id} ({owner}): {summary.state}, {summary.nodes} node(s) now ({states}); {shape}; "
            f"{hours} so far, {cost}")


__all__ = ["pool_cost", "pool_line"]
