"""``batchyard plan`` with ``[azure.pool] autoscale_formula``: the formula run offline over a simulated job.

The formula is parsed and evaluated by the Batch emulator's own implementation of the language
(:mod:`batchyard.emulator.batch.autoscale_parse` / ``autoscale_eval``), so what ``plan`` says of a
formula is what the emulator, and Azure, would do with it. The simulation:

- the pool is created empty with the formula, which is evaluated then (no samples yet) and every
  ``autoscale_evaluation_interval`` after;
- every task of the job is submitted at once; a task takes the duration the previous run measured
  (the durations taken in turn), or ``DEFAULT_TASK_S`` when there was none;
- the metrics Azure samples every 30 seconds, seen a minute later, are recorded from the simulated
  state: ``$ActiveTasks`` (waiting), ``$RunningTasks``, ``$PendingTasks``, ``$SucceededTasks``,
  ``$CPUPercent`` (busy slots in percent), ``$SampleNodeCount``;
- a node the formula adds takes ``POOL_STARTUP_S`` to boot before it runs tasks; a node it removes
  goes as ``$NodeDeallocationOption`` says (requeue: its tasks start over elsewhere; terminate: they
  fail; taskcompletion/retaineddata: it leaves when they end).

The result is the node count over time (one row per evaluation), the wall time, node-hours and
their cost, and findings for what would go wrong on Azure.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batchyard.analysis.forecast import POOL_STARTUP_S, hms, load_prices
from batchyard.core.config import Config, PoolSection
from batchyard.core.findings import Finding
from batchyard.core.job import parse_duration
from batchyard.emulator.batch.autoscale_eval import FormulaEvaluationError, PoolFacts, evaluate
from batchyard.emulator.batch.autoscale_parse import FormulaSyntaxError, Statement, parse
from batchyard.emulator.batch.autoscale_samples import SAMPLE_PERIOD_S, SampleHistory

DEFAULT_TASK_S = 60.0
MAX_SIMULATED_S = 14 * 86400.0
GIVE_UP_EMPTY_S = 86400.0  # tasks waiting and no node asked for this long: the formula never starts the job
EVALUATIONS_AFTER_LAST_TASK = 6  # how long the simulation watches the pool shrink once the job is done


@dataclass
class _Node:
    dedicated: bool
    ready_at: float
    running: list[tuple[float, float]] = field(default_factory=list)  # (duration, seconds left) of its tasks
    leaving: bool = False


@dataclass
class Simulation:
    timeline: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float | None = None
    dedicated_node_hours: float = 0.0
    spot_node_hours: float = 0.0
    done: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # each evaluation that failed, with its time
    idle_after_s: float = 0.0  # how long nodes stayed after the last task ended


class _Run:
    def __init__(self, statements: Sequence[Statement], *, interval_s: float, durations: Sequence[float],
                 tasks: int, slots: int, start_s: float, now: float) -> None:
        self.statements, self.interval_s, self.slots, self.start_s = statements, interval_s, slots, start_s
        self.durations = list(durations) or [DEFAULT_TASK_S]
        self.queue = [self.durations[i % len(self.durations)] for i in range(tasks)]
        self.nodes: list[_Node] = []
        self.history = SampleHistory()
        self.epoch = now
        self.targets = (0, 0)
        self.result = Simulation()
        self.rng = random.Random(0)

    def counts(self) -> tuple[int, int]:
        running = sum(len(n.running) for n in self.nodes)
        return len(self.queue), running

    def sample(self, t: float) -> None:
        waiting, running = self.counts()
        ready = [n for n in self.nodes if n.ready_at <= t]
        capacity = len(ready) * self.slots
        self.history.record(self.epoch + t, {
            "$ActiveTasks": float(waiting), "$RunningTasks": float(running), "$PendingTasks": float(waiting + running),
            "$SucceededTasks": float(self.result.done), "$FailedTasks": float(self.result.failed),
            "$CPUPercent": 100.0 * running / capacity if capacity else 0.0,
            "$SampleNodeCount": float(len(self.nodes)), "$PreemptedNodeCount": 0.0})

    def evaluate(self, t: float) -> None:
        dedicated = [n for n in self.nodes if n.dedicated and not n.leaving]
        spot = [n for n in self.nodes if not n.dedicated and not n.leaving]
        facts = PoolFacts(target_dedicated=self.targets[0], target_low_priority=self.targets[1],
                          current_dedicated=len(dedicated), current_low_priority=len(spot),
                          task_slots_per_node=self.slots,
                          usable_nodes=sum(1 for n in self.nodes if n.ready_at <= t and not n.leaving))
        waiting, running = self.counts()
        row: dict[str, Any] = {"t_s": round(t), "waiting": waiting, "running": running, "done": self.result.done}
        try:
            out = evaluate(self.statements, facts, self.history, self.epoch + t, self.rng)
        except FormulaEvaluationError as exc:
            self.result.errors.append(f"at {hms(t)}: {exc}")
            row.update(error=str(exc), nodes=len(self.nodes), target_dedicated=self.targets[0],
                       target_spot=self.targets[1])
            self.result.timeline.append(row)
            return
        self.targets = (out.dedicated, out.low_priority)
        for is_dedicated, target in ((True, out.dedicated), (False, out.low_priority)):
            self.resize(t, is_dedicated, target, out.deallocation)
        row.update(nodes=len([n for n in self.nodes if not n.leaving]), target_dedicated=out.dedicated,
                   target_spot=out.low_priority)
        self.result.timeline.append(row)

    def resize(self, t: float, dedicated: bool, target: int, option: str) -> None:
        kind = [n for n in self.nodes if n.dedicated == dedicated and not n.leaving]
        for _ in range(target - len(kind)):
            self.nodes.append(_Node(dedicated, ready_at=t + self.start_s))
        # Nodes still booting go first, then idle ones, then the least busy.
        for node in sorted(kind, key=lambda n: (n.ready_at <= t, len(n.running)))[: max(0, len(kind) - target)]:
            if option == "requeue":
                self.queue.extend(duration for duration, _ in node.running)  # they start over elsewhere
                node.running.clear()
            elif option == "terminate":
                self.result.failed += len(node.running)
                node.running.clear()
            node.leaving = True
        self.nodes = [n for n in self.nodes if not (n.leaving and not n.running)]

    def assign(self, t: float) -> None:
        """Waiting tasks onto the free slots of ready nodes (the scheduler is far faster than 30 s)."""
        for node in self.nodes:
            if node.ready_at <= t and not node.leaving:
                while self.queue and len(node.running) < self.slots:
                    duration = self.queue.pop(0)
                    node.running.append((duration, duration))

    def advance(self, dt: float) -> None:
        """``dt`` seconds of work: tasks progress and end, nodes are billed."""
        for node in self.nodes:
            if node.dedicated:
                self.result.dedicated_node_hours += dt / 3600
            else:
                self.result.spot_node_hours += dt / 3600
            left = [(duration, remaining - dt) for duration, remaining in node.running]
            self.result.done += sum(1 for _, remaining in left if remaining <= 0)
            node.running = [task for task in left if task[1] > 0]
        self.nodes = [n for n in self.nodes if not (n.leaving and not n.running)]

    def run(self, tasks: int) -> Simulation:
        t, next_eval, evaluations_after = 0.0, 0.0, 0
        last_task_end: float | None = None
        emptied_at: float | None = None  # when the pool had no node left after the last task
        while t <= MAX_SIMULATED_S:
            self.assign(t)
            if self.history.due(self.epoch + t):
                self.sample(t)
            if t >= next_eval:
                self.evaluate(t)
                next_eval += self.interval_s
                if last_task_end is not None:
                    evaluations_after += 1
                    if not self.nodes or evaluations_after > EVALUATIONS_AFTER_LAST_TASK:
                        break
            self.assign(t)
            self.advance(SAMPLE_PERIOD_S)
            t += SAMPLE_PERIOD_S
            if last_task_end is None and self.result.done + self.result.failed >= tasks:
                last_task_end = self.result.wall_time_s = t
            if last_task_end is not None and emptied_at is None and not self.nodes:
                emptied_at = t
            if self.queue and not self.nodes and not self.result.done and t >= GIVE_UP_EMPTY_S:
                break
        if last_task_end is not None:
            self.result.idle_after_s = (emptied_at if emptied_at is not None else t) - last_task_end
        return self.result


def simulate(formula: str, *, interval_s: float, tasks: int, durations: Sequence[float] = (), slots: int = 1,
             start_s: float = POOL_STARTUP_S, now: float | None = None) -> Simulation:
    """Run the formula over a simulated job; :class:`FormulaSyntaxError` when it does not parse."""
    statements = parse(formula)
    return _Run(statements, interval_s=interval_s, durations=durations, tasks=tasks, slots=slots, start_s=start_s,
                now=time.time() if now is None else now).run(tasks)


def autoscale_forecast(config: Config, *, tasks: int, durations: Sequence[float] | None
                       ) -> tuple[dict[str, Any] | None, list[Finding]]:
    """The plan's autoscale section and findings (nothing when the pool has no formula)."""
    section = config.azure.pool or PoolSection()
    if not section.autoscale_formula or config.azure.pool_id:
        return None, []
    interval = parse_duration(section.autoscale_evaluation_interval)
    try:
        sim = simulate(section.autoscale_formula, interval_s=interval, tasks=tasks, durations=durations or (),
                       slots=section.task_slots_per_node)
    except FormulaSyntaxError as exc:
        return None, [Finding("error", "autoscale-formula-invalid", f"[azure.pool] autoscale_formula: {exc}",
                              "fix the formula (docs/plan.md lists what the language has)")]
    findings: list[Finding] = []
    if sim.errors:
        findings.append(Finding("warning", "autoscale-evaluation-error", f"the formula failed {len(sim.errors)} "
                                f"time(s) in the simulated run, first {sim.errors[0]}; Azure then leaves the pool "
                                "as it is",
                                "guard sample reads with GetSamplePercent (see docs/plan.md)"))
    if sim.wall_time_s is None:
        started = any(row.get("nodes") for row in sim.timeline)
        findings.append(Finding("error" if not started else "warning",
                                "autoscale-no-nodes" if not started else "autoscale-unfinished",
                                "the formula never gives the pool a node while tasks wait" if not started else
                                f"{tasks - sim.done} of {tasks} tasks still unfinished after {hms(MAX_SIMULATED_S)}",
                                "make the target follow $PendingTasks (or $ActiveTasks)"))
    elif sim.idle_after_s > interval:
        findings.append(Finding("warning", "autoscale-idle-nodes", f"nodes stay for {hms(sim.idle_after_s)} after the "
                                "last task ends: they are billed until the formula removes them",
                                "let the target fall to 0 when $PendingTasks is 0"))
    sizes, meta = load_prices(config)
    price = sizes.get(section.vm_size.lower(), {}).get("usd_per_hour")
    discount = float(meta.get("spot_discount", 0.8))
    node_hours = sim.dedicated_node_hours + sim.spot_node_hours * (1 - discount)  # spot at its discount
    cost = None if price is None else round(price * node_hours, 4)
    mean = sum(durations) / len(durations) if durations else DEFAULT_TASK_S
    return {
        "evaluation_interval_s": interval, "wall_time_s": sim.wall_time_s, "done": sim.done, "failed": sim.failed,
        "dedicated_node_hours": round(sim.dedicated_node_hours, 3), "spot_node_hours": round(sim.spot_node_hours, 3),
        "cost_usd": cost, "timeline": sim.timeline, "errors": sim.errors,
        "assumptions": [
            f"{tasks} tasks submitted at once, {'as long as in the previous run' if durations else 'each assumed'} "
            f"(mean {mean:.0f}s), {section.task_slots_per_node} slot(s) per node",
            f"the formula evaluated at pool creation and every {hms(interval)}; samples every 30s, seen 60s later",
            f"a new node runs tasks {hms(POOL_STARTUP_S)} after the formula asks for it",
        ],
    }, findings


def timeline_lines(autoscale: dict[str, Any], *, limit: int = 24) -> list[str]:
    """The node count over time as text rows for ``plan``'s output (at most ``limit`` rows)."""
    rows = autoscale["timeline"]
    step = max(1, math.ceil(len(rows) / limit))
    out = [f"{'time':>9}  {'nodes':>5}  {'target':>6}  {'waiting':>7}  {'running':>7}  {'done':>5}"]
    for row in rows[::step]:
        target = str(row["target_dedicated"]) + (f"+{row['target_spot']}" if row["target_spot"] else "")
        out.append(f"{hms(row['t_s']):>9}  {row['nodes']:>5}  {target:>6}  {row['waiting']:>7}  {row['running']:>7}  "
                   f"{row['done']:>5}" + (f"  error: {row['error']}" if row.get("error") else ""))
    return out
