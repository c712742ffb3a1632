"""Pool autoscale: enable, evaluate, disable, and the formula applied at each pool's interval.

As on Azure (REST reference "Pools - Enable/Evaluate/Disable Pool Auto Scale", the SDK's recorded
``test_batch_scale_pools``): enable answers 200 and the first evaluation follows a moment later;
evaluate answers 200 with ``{timestamp, results}`` and changes nothing; a formula that does not
parse is refused with 400 ``AutoScalingFormulaSyntaxError`` (over 8 KB: ``AutoScalingFormulaTooLong``);
one that parses but fails while running is reported in ``autoScaleRun.error`` and the pool keeps
its size. The interval must be 5 minutes to 168 hours (default 15 minutes); enable is refused
within 30 seconds of the previous one (503 ``TooManyEnableAutoScaleRequests``); a pool with
autoscale cannot be resized by hand (409). Every sample and evaluation period is multiplied by the
emulator's :class:`~batchyard.emulator.batch.intervals.IntervalScale`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from batchyard.emulator.batch.autoscale_eval import FormulaEvaluationError, PoolFacts, evaluate
from batchyard.emulator.batch.autoscale_parse import FormulaSyntaxError, FormulaTooLong, Statement, parse
from batchyard.emulator.batch.autoscale_samples import SAMPLE_PERIOD_S, SampleHistory
from batchyard.emulator.batch.common import BatchApiError, iso, not_found, parse_duration, utcnow
from batchyard.emulator.batch.intervals import IntervalScale, format_duration
from batchyard.emulator.batch.protocol import Request, Response, Router, check_conditions, resource_headers
from batchyard.emulator.batch.state import Pool

if TYPE_CHECKING:
    from batchyard.emulator.batch.service import BatchService

MIN_INTERVAL_S, MAX_INTERVAL_S, DEFAULT_INTERVAL_S = 5 * 60.0, 168 * 3600.0, 15 * 60.0
ENABLE_SPACING_S = 30.0  # "You cannot call this API for the same Pool more than once every 30 seconds."
MAX_NODES = 64  # the emulator's limit per pool and kind (ops_pools); a formula asking more gets this many
RUN_METADATA = "$metadata#Microsoft.Azure.Batch.Protocol.Entities.AutoScaleRun"


def _prop_error(prop: str, value: Any, reason: str) -> BatchApiError:
    return BatchApiError(400, "InvalidPropertyValue", "The value provided for one of the properties in the "
                         "request body is invalid.", [("PropertyName", prop), ("PropertyValue", str(value)),
                                                      ("Reason", reason)])


def parse_formula(formula: Any, prop: str = "autoScaleFormula") -> list[Statement]:
    """The parsed formula, or the 400 Azure answers for one that does not parse."""
    if not isinstance(formula, str):
        raise _prop_error(prop, formula, "the formula must be a string")
    try:
        return parse(formula)
    except FormulaTooLong as exc:
        raise BatchApiError(400, "AutoScalingFormulaTooLong", "The specified auto-scaling formula exceeds "
                            "lengths limit.", [("Message", str(exc))]) from None
    except FormulaSyntaxError as exc:
        raise BatchApiError(400, "AutoScalingFormulaSyntaxError", "The specified auto-scaling formula has a "
                            "syntax error.", [("Message", str(exc))]) from None


def evaluation_interval(value: Any, prop: str = "autoScaleEvaluationInterval") -> str:
    """Batch's spelling of a valid interval (``PT06M00S`` -> ``PT6M``); absent means 15 minutes."""
    if value is None:
        return format_duration(DEFAULT_INTERVAL_S)
    seconds = parse_duration(value, prop)
    if seconds is None or not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise _prop_error(prop, value, "the evaluation interval must be from 5 minutes to 168 hours")
    return format_duration(seconds)


def check_pool_autoscale(body: dict[str, Any], prefix: str = "") -> None:
    """A pool body's autoscale settings, checked and normalised in place (create and auto pools)."""
    if body.get("enableAutoScale"):
        if body.get("autoScaleFormula") is None:
            raise BatchApiError(400, "MissingRequiredProperty", "A required property was not specified in the "
                                "request body.", [("PropertyName", f"{prefix}autoScaleFormula")])
        for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            if body.get(key) is not None:
                raise _prop_error(f"{prefix}{key}", body[key], "must not be given when enableAutoScale is true")
        parse_formula(body["autoScaleFormula"], f"{prefix}autoScaleFormula")
        body["autoScaleEvaluationInterval"] = evaluation_interval(body.get("autoScaleEvaluationInterval"),
                                                                  f"{prefix}autoScaleEvaluationInterval")
        return
    for key in ("autoScaleFormula", "autoScaleEvaluationInterval"):
        if body.get(key) is not None:
            raise _prop_error(f"{prefix}{key}", body[key], "must not be given unless enableAutoScale is true")


@dataclass
class _PoolScaling:
    pool: Pool
    history: SampleHistory
    next_due: float = 0.0  # time.time() of the next evaluation; 0 = at the next tick
    last_enable: float = field(default=-1e18)


class AutoscaleOps:
    def __init__(self, emu: BatchService, scale: IntervalScale) -> None:
        self.emu = emu
        self.scale = scale
        self._pools: dict[str, _PoolScaling] = {}
        self._host = _HostCounters()

    def register(self, r: Router) -> None:
        r.add("POST", "pools/{}/enableautoscale", self.enable)
        r.add("POST", "pools/{}/evaluateautoscale", self.evaluate)
        r.add("POST", "pools/{}/disableautoscale", self.disable)

    def _pool(self, pool_id: str) -> Pool:
        pool = self.emu.store.pools.get(pool_id.lower())
        if pool is None:
            raise not_found("Pool", pool_id)
        return pool

    def _scaling(self, pool: Pool) -> _PoolScaling:
        entry = self._pools.get(pool.id.lower())
        if entry is None or entry.pool is not pool:  # a new pool under a deleted one's id starts afresh
            entry = _PoolScaling(pool, SampleHistory(scale=self.scale.factor))
            self._pools[pool.id.lower()] = entry
        return entry

    def _done(self, pool: Pool, url: str) -> Response:
        return Response(200, None, resource_headers(url, pool.etag, pool.last_modified))

    # --- operations -------------------------------------------------------------------------------
    def enable(self, req: Request) -> Response:
        body = req.json(required=False) or {}
        if not isinstance(body, dict):
            raise _prop_error("body", "", "the body must be a JSON object")
        formula, interval = body.get("autoScaleFormula"), body.get("autoScaleEvaluationInterval")
        if formula is not None:
            parse_formula(formula)
        normalized = evaluation_interval(interval) if interval is not None else None
        with self.emu.store.lock:
            pool = self._pool(req.params[0])
            check_conditions(req, pool.etag, pool.last_modified)
            if formula is None and not pool.spec.get("enableAutoScale"):
                raise BatchApiError(400, "MissingRequiredProperty", "A required property was not specified in "
                                    "the request body.", [("PropertyName", "autoScaleFormula")])
            if formula is None and normalized is None:
                raise BatchApiError(400, "MissingRequiredProperty", "Specify autoScaleFormula, "
                                    "autoScaleEvaluationInterval or both.", [("PropertyName", "autoScaleFormula")])
            if pool.allocation_state == "resizing":
                raise BatchApiError(409, "PoolBeingResized", "The specified pool is being resized.")
            scaling = self._scaling(pool)
            now = time.time()
            if now - scaling.last_enable < self.scale.real(ENABLE_SPACING_S):
                raise BatchApiError(503, "TooManyEnableAutoScaleRequests", "Too many Enable Pool AutoScale "
                                    "requests are issued on the pool: at most one every 30 seconds.")
            scaling.last_enable = now
            if not pool.spec.get("enableAutoScale"):
                normalized = normalized or format_duration(DEFAULT_INTERVAL_S)
            pool.spec["enableAutoScale"] = True
            if formula is not None:
                pool.spec["autoScaleFormula"] = formula
            if normalized is not None:
                pool.spec["autoScaleEvaluationInterval"] = normalized
            # A new schedule starts with this request: Azure evaluates the formula at once and the
            # pool is already resizing to its targets at the next GET, with no autoScaleRun shown
            # (the SDK's recorded test_batch_scale_pools); the runs reported follow one per interval.
            interval_s = parse_duration(pool.spec.get("autoScaleEvaluationInterval"), "interval") or DEFAULT_INTERVAL_S
            scaling.next_due = now + self.scale.real(interval_s)
            self._apply(pool, parse_formula(pool.spec["autoScaleFormula"]), report_run=False)
            pool.touch()
            return self._done(pool, f"{self.emu.url}/pools/{pool.id}/enableautoscale")

    def evaluate(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict) or body.get("autoScaleFormula") is None:
            raise BatchApiError(400, "MissingRequiredProperty", "A required property was not specified in the "
                                "request body.", [("PropertyName", "autoScaleFormula")])
        statements = parse_formula(body["autoScaleFormula"])
        with self.emu.store.lock:
            pool = self._pool(req.params[0])
            if not pool.spec.get("enableAutoScale"):
                raise BatchApiError(409, "AutoScaleNotEnabled", "Autoscale is not enabled on the specified pool: "
                                    "enable it before evaluating a formula.")
            run, _ = self._run(pool, statements)
        return Response(200, {"odata.metadata": f"{self.emu.url}/{RUN_METADATA}", **run},
                        {"DataServiceId": f"{self.emu.url}/pools/{pool.id}/evaluateautoscale"})

    def disable(self, req: Request) -> Response:
        with self.emu.store.lock:
            pool = self._pool(req.params[0])
            for key in ("autoScaleFormula", "autoScaleEvaluationInterval"):
                pool.spec.pop(key, None)
            pool.spec["enableAutoScale"] = False
            pool.autoscale_run = None
            pool.touch()
            return self._done(pool, f"{self.emu.url}/pools/{pool.id}/disableautoscale")

    # --- evaluation -------------------------------------------------------------------------------
    def _facts(self, pool: Pool) -> PoolFacts:
        live = [n for n in pool.nodes.values() if not n.removed]
        return PoolFacts(
            target_dedicated=int(pool.spec.get("targetDedicatedNodes") or 0),
            target_low_priority=int(pool.spec.get("targetLowPriorityNodes") or 0),
            current_dedicated=sum(1 for n in live if n.is_dedicated),
            current_low_priority=sum(1 for n in live if not n.is_dedicated),
            task_slots_per_node=int(pool.spec.get("taskSlotsPerNode") or 1),
            usable_nodes=sum(1 for n in live if n.state in ("idle", "running")))

    def _run(self, pool: Pool, statements: list[Statement]) -> tuple[dict[str, Any], Any]:
        """One evaluation as Batch's AutoScaleRun JSON, and the result (None when it failed)."""
        stamp = iso(utcnow())
        try:
            result = evaluate(statements, self._facts(pool), self._scaling(pool).history, time.time())
        except FormulaEvaluationError as exc:
            return {"timestamp": stamp, "error": {
                "code": "AutoScalingFormulaEvaluationError", "message": "The autoscale formula failed to evaluate.",
                "values": [{"name": "Message", "value": str(exc)}]}}, None
        return {"timestamp": stamp, "results": result.results}, result

    def tick(self) -> None:
        """Sample every pool's metrics when due and apply formulas whose interval has come (lock held)."""
        now = time.time()
        pools = list(self.emu.store.pools.values())
        live = {p.id.lower() for p in pools}
        for key in [k for k in self._pools if k not in live]:
            del self._pools[key]
        host: dict[str, float] | None = None
        for pool in pools:
            scaling = self._scaling(pool)
            if scaling.history.due(now):
                host = host if host is not None else self._host.read(self.emu.engine.data_dir)
                scaling.history.record(now, {**host, **self._measure(pool)})
            if pool.spec.get("enableAutoScale") and pool.state == "active" and now >= scaling.next_due:
                interval = parse_duration(pool.spec.get("autoScaleEvaluationInterval"), "interval") or 900.0
                scaling.next_due = now + self.scale.real(interval)
                self._apply(pool, parse_formula(pool.spec["autoScaleFormula"]))

    def _apply(self, pool: Pool, statements: list[Statement], *, report_run: bool = True) -> None:
        """Evaluate and resize to the result; a failed evaluation is always reported in autoScaleRun."""
        run, result = self._run(pool, statements)
        if report_run or result is None:
            pool.autoscale_run = run
        if result is None:
            return
        targets = {"targetDedicatedNodes": min(MAX_NODES, result.dedicated),
                   "targetLowPriorityNodes": min(MAX_NODES, result.low_priority)}
        live = [n for n in pool.nodes.values() if not n.removed]
        sized = (sum(1 for n in live if n.is_dedicated), sum(1 for n in live if not n.is_dedicated)) == \
            (targets["targetDedicatedNodes"], targets["targetLowPriorityNodes"])
        if sized and all(int(pool.spec.get(k) or 0) == v for k, v in targets.items()):
            return  # nothing to change: the pool keeps its ETag, as an unchanged pool does on Azure
        pool.spec.update(targets)
        if result.deallocation != "requeue":
            self._shrink(pool, result.deallocation)
        self.emu.engine.resize(pool)  # grows, and shrinks what is left with requeue (Batch's default)

    def _shrink(self, pool: Pool, option: str) -> None:
        """Remove the nodes over target the way ``$NodeDeallocationOption`` says, idle ones first."""
        engine = self.emu.engine
        for dedicated, key in ((True, "targetDedicatedNodes"), (False, "targetLowPriorityNodes")):
            live = sorted((n for n in pool.nodes.values() if not n.removed and n.is_dedicated == dedicated),
                          key=lambda n: (len(n.running), n.id))
            for node in live[: max(0, len(live) - int(pool.spec[key]))]:
                if option == "terminate":
                    engine.remove_node(pool, node, reason="terminate")
                    continue
                # taskcompletion / retaineddata: no new task; the node leaves when its tasks end
                # (the scheduler forgets a removed node once it runs nothing).
                node.removed = True
                node.set_state("leavingpool")
                if not node.running:
                    engine._forget_node(pool, node)

    def _measure(self, pool: Pool) -> dict[str, float]:
        """The task and node metrics of one pool at this moment."""
        engine = self.emu.engine
        counts = dict.fromkeys(("active", "running", "succeeded", "failed"), 0.0)
        for job in self.emu.store.jobs.values():
            if job.pool_id.lower() != pool.id.lower():
                continue
            for task in job.tasks.values():
                if task.state == "active" and job.state == "active" and engine._dependencies_met(job, task):
                    counts["active"] += 1
                elif task.state == "running":
                    counts["running"] += 1
                elif task.state == "completed":
                    counts["succeeded" if task.succeeded else "failed"] += 1
        live = [n for n in pool.nodes.values() if not n.removed]
        return {"$ActiveTasks": counts["active"], "$RunningTasks": counts["running"],
                "$PendingTasks": counts["active"] + counts["running"], "$SucceededTasks": counts["succeeded"],
                "$FailedTasks": counts["failed"], "$SampleNodeCount": float(len(live)), "$PreemptedNodeCount": 0.0,
                "$WallClockSeconds": len(live) * SAMPLE_PERIOD_S}


class _HostCounters:
    """Resource metrics. Emulated nodes share this host, so its figures are every node's."""

    def __init__(self) -> None:
        self._disk: Any = None
        self._net: Any = None
        psutil.cpu_percent(None)  # the first reading starts the measuring period

    def read(self, data_dir: Any) -> dict[str, float]:
        disk, net = psutil.disk_io_counters(), psutil.net_io_counters()

        def delta(now: Any, before: Any, name: str) -> float:
            return float(getattr(now, name) - getattr(before, name)) if now is not None and before is not None else 0.0

        out = {"$CPUPercent": psutil.cpu_percent(None), "$MemoryBytes": float(psutil.virtual_memory().used),
               "$DiskBytes": float(shutil.disk_usage(data_dir).used),
               "$DiskReadBytes": delta(disk, self._disk, "read_bytes"),
               "$DiskWriteBytes": delta(disk, self._disk, "write_bytes"),
               "$DiskReadOps": delta(disk, self._disk, "read_count"),
               "$DiskWriteOps": delta(disk, self._disk, "write_count"),
               "$NetworkInBytes": delta(net, self._net, "bytes_recv"),
               "$NetworkOutBytes": delta(net, self._net, "bytes_sent")}
        self._disk, self._net = disk, net
        return out
