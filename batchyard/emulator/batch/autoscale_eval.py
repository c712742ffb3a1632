"""Evaluating a parsed autoscale formula against a pool, the way Azure Batch does.

Types and operators follow ``batch-automatic-scaling.md`` ("Types", "Operations", "Functions",
"Obtain sample data"): double, doubleVec, string, timestamp and timeinterval; a sampled metric is
an object whose methods (``GetSample``, ``GetSamplePercent``, ``GetSamplePeriod``, ``Count``,
``HistoryBeginTime``) return those. A failure at run time (a type mismatch, too few samples for a
required percentage, a target that is not a count) raises :class:`FormulaEvaluationError`; the
service then reports it in ``autoScaleRun.error`` and leaves the pool as it is.

The results string is Azure's: ``$TargetDedicatedNodes=..;$TargetLowPriorityNodes=..;
$NodeDeallocationOption=..`` then every user variable in ordinal order of its name, numbers with
6 significant digits (``$samples=96.6667``), vectors as ``[1,2,3]``, timestamps as
``2016-10-13T19:18:47.805Z`` (as in the docs' and the SDK recordings' examples).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from batchyard.emulator.batch.autoscale_parse import (
    DEALLOCATION_OPTIONS,
    SAMPLED,
    SCALARS,
    TIME_INTERVALS,
    WRITABLE,
    Binary,
    Call,
    Conditional,
    FormulaError,
    Member,
    Method,
    Name,
    Node,
    Number,
    Statement,
    String,
    Unary,
    Vector,
)
from batchyard.emulator.batch.autoscale_samples import SampleHistory

DEDICATED, LOW_PRIORITY, DEALLOCATION = "$TargetDedicatedNodes", "$TargetLowPriorityNodes", "$NodeDeallocationOption"


class FormulaEvaluationError(FormulaError):
    """The formula parsed but failed while running."""


@dataclass(frozen=True)
class Vec:
    values: tuple[float, ...]


@dataclass(frozen=True)
class Interval:
    seconds: float  # Azure seconds (a formula's durations are never scaled)


@dataclass(frozen=True)
class Metric:
    name: str


@dataclass(frozen=True)
class PoolFacts:
    """What a formula reads of its pool when it runs."""

    target_dedicated: float = 0
    target_low_priority: float = 0
    current_dedicated: float = 0
    current_low_priority: float = 0
    task_slots_per_node: float = 1
    usable_nodes: float = 0

    def scalar(self, name: str) -> float:
        return {"$CurrentDedicatedNodes": self.current_dedicated, "$CurrentLowPriorityNodes": self.current_low_priority,
                "$TaskSlotsPerNode": self.task_slots_per_node, "$UsableNodeCount": self.usable_nodes}[name]


@dataclass(frozen=True)
class AutoscaleResult:
    dedicated: int
    low_priority: int
    deallocation: str
    results: str


class _Stop(Exception):
    """stop(): the evaluation ends here, with what has been assigned so far."""


def _kind(value: Any) -> str:
    return {float: "double", Vec: "doubleVec", str: "string", datetime: "timestamp", Interval: "timeinterval",
            Metric: "sampled metric"}.get(type(value), type(value).__name__)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return f"{value:.6g}".replace("e", "E")
    if isinstance(value, Vec):
        return "[" + ",".join(format_value(v) for v in value.values) + "]"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, Interval):
        total = abs(value.seconds)
        days, rest = divmod(total, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        text = f"{int(hours):02d}:{int(minutes):02d}:{int(seconds):02d}"
        if seconds % 1:
            text += f".{round(seconds % 1 * 1e7):07d}"
        return ("-" if value.seconds < 0 else "") + (f"{int(days)}." if days else "") + text
    if isinstance(value, Metric):
        return value.name
    return str(value)


def _round_half_away(x: float) -> float:
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def _log(base: float) -> Callable[[float], float]:
    def fn(x: float) -> float:
        if x == 0:
            return -math.inf
        return math.log(x, base) if x > 0 else math.nan
    return fn


_ELEMENTWISE: dict[str, Callable[[float], float]] = {
    "ceil": lambda x: float(math.ceil(x)) if math.isfinite(x) else x,
    "floor": lambda x: float(math.floor(x)) if math.isfinite(x) else x,
    "round": lambda x: float(_round_half_away(x)) if math.isfinite(x) else x,
    "lg": _log(2), "ln": _log(math.e), "log": _log(10),
}


def _std(v: Sequence[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


_AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "avg": lambda v: sum(v) / len(v), "len": lambda v: float(len(v)), "max": max, "min": min,
    "norm": lambda v: math.sqrt(sum(x * x for x in v)), "range": lambda v: max(v) - min(v),
    "std": _std, "sum": lambda v: float(sum(v)),
}


class Evaluation:
    """One run of a formula: ``run`` executes the statements and returns the pool's new targets."""

    def __init__(self, pool: PoolFacts, history: SampleHistory, now: float,
                 rng: random.Random | None = None) -> None:
        self.pool, self.history, self.now = pool, history, now
        self.rng = rng or random.Random()
        self.values: dict[str, Any] = {DEDICATED: float(pool.target_dedicated),
                                       LOW_PRIORITY: float(pool.target_low_priority), DEALLOCATION: "requeue"}
        self.full_name_set: set[str] = set()
        self.user: dict[str, Any] = {}

    def fail(self, node: Node | None, message: str) -> FormulaEvaluationError:
        return FormulaEvaluationError(message, node.line if node else 0, node.column if node else 0)

    # --- statements -------------------------------------------------------------------------------
    def run(self, statements: Sequence[Statement]) -> AutoscaleResult:
        try:
            for statement in statements:
                value = self.eval(statement.expression)
                if statement.target is None:
                    continue
                if isinstance(value, Metric):
                    raise self.fail(statement.expression, f"{value.name} is a sampled metric: assign "
                                    f"{value.name}.GetSample(...) instead")
                self.assign(statement.target, value)
        except _Stop:
            pass
        return self.result()

    def assign(self, target: str, value: Any) -> None:
        canonical = WRITABLE.get(target)
        if canonical is None:
            self.user[target] = value
        elif target == canonical:
            self.values[canonical] = value
            self.full_name_set.add(canonical)
        elif canonical not in self.full_name_set:  # an alias: the full name wins when both are set
            self.values[canonical] = value

    def _target(self, name: str) -> int:
        value = self.values[name]
        if not isinstance(value, float):
            raise self.fail(None, f"{name} must be a number, not a {_kind(value)}")
        if not math.isfinite(value) or value < 0:
            raise self.fail(None, f"{name} must be a finite number of nodes, not {format_value(value)}")
        return int(value)  # a fractional count of nodes is truncated

    def result(self) -> AutoscaleResult:
        option = self.values[DEALLOCATION]
        if option not in DEALLOCATION_OPTIONS:
            raise self.fail(None, f"{DEALLOCATION} must be one of {', '.join(DEALLOCATION_OPTIONS)}, "
                            f"not {format_value(option)}")
        parts = [f"{name}={format_value(self.values[name])}" for name in (DEDICATED, LOW_PRIORITY, DEALLOCATION)]
        parts += [f"{name}={format_value(self.user[name])}" for name in sorted(self.user)]
        return AutoscaleResult(self._target(DEDICATED), self._target(LOW_PRIORITY), option, ";".join(parts))

    # --- expressions ------------------------------------------------------------------------------
    def eval(self, node: Node) -> Any:
        if isinstance(node, Number):
            return node.value
        if isinstance(node, String):
            return node.value
        if isinstance(node, Name):
            return self.name(node)
        if isinstance(node, Vector):
            return Vec(tuple(self.flatten(node, [self.eval(item) for item in node.items])))
        if isinstance(node, Unary):
            return self.unary(node, self.eval(node.operand))
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Conditional):
            return self.eval(node.if_true if self.truth(node.condition) else node.if_false)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Method):
            return self.method(node)
        if isinstance(node, Member):
            return self.member(node)
        raise self.fail(node, "unsupported expression")  # every node type is handled above

    def name(self, node: Name) -> Any:
        if node.name in WRITABLE:
            return self.values[WRITABLE[node.name]]
        if node.name in SAMPLED:
            return Metric(node.name)
        if node.name in SCALARS:
            return float(self.pool.scalar(node.name))
        if node.name in TIME_INTERVALS:
            return Interval(TIME_INTERVALS[node.name])
        if node.name in self.user:
            return self.user[node.name]
        if node.name in DEALLOCATION_OPTIONS:
            return node.name
        raise self.fail(node, f"variable '{node.name}' has no value")

    def number(self, node: Node, value: Any, what: str) -> float:
        if isinstance(value, Metric):
            raise self.fail(node, f"{value.name} is a sampled metric: use {value.name}.GetSample(...) for its values")
        if not isinstance(value, float):
            raise self.fail(node, f"{what} needs a double, not a {_kind(value)}")
        return value

    def truth(self, node: Node) -> bool:
        return self.number(node, self.eval(node), "a condition") != 0

    def unary(self, node: Unary, value: Any) -> Any:
        if node.op == "!":
            return 0.0 if self.number(node, value, "'!'") else 1.0
        if isinstance(value, Interval):
            return Interval(-value.seconds)
        if isinstance(value, Vec):
            return Vec(tuple(-v for v in value.values))
        return -self.number(node, value, "'-'")

    def binary(self, node: Binary) -> Any:
        op = node.op
        if op in ("&&", "||"):
            left = self.truth(node.left)
            if (op == "&&" and not left) or (op == "||" and left):
                return float(left)
            return float(self.truth(node.right))
        a, b = self.eval(node.left), self.eval(node.right)
        for value in (a, b):
            if isinstance(value, Metric):
                self.number(node, value, f"'{op}'")
        if op in ("<", "<=", ">", ">=", "==", "!="):
            return self.compare(node, a, b)
        return self.arithmetic(node, op, a, b)

    def compare(self, node: Binary, a: Any, b: Any) -> float:
        comparable = (float, str, datetime, Interval)
        if type(a) is not type(b) or not isinstance(a, comparable):
            raise self.fail(node, f"'{node.op}' cannot compare a {_kind(a)} with a {_kind(b)}")
        x, y = (a.seconds, b.seconds) if isinstance(a, Interval) else (a, b)
        return float({"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y, "==": x == y, "!=": x != y}[node.op])

    def arithmetic(self, node: Binary, op: str, a: Any, b: Any) -> Any:
        apply = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
                 "/": lambda x, y: x / y if y else (math.copysign(math.inf, x) * math.copysign(1, y)
                                                    if x else math.nan)}[op]
        if isinstance(a, float) and isinstance(b, float):
            return apply(a, b)
        if isinstance(a, Vec) or isinstance(b, Vec):
            left = a.values if isinstance(a, Vec) else None
            right = b.values if isinstance(b, Vec) else None
            if (left is None and not isinstance(a, float)) or (right is None and not isinstance(b, float)):
                raise self.fail(node, f"'{op}' cannot combine a {_kind(a)} with a {_kind(b)}")
            if left is not None and right is not None:
                if len(left) != len(right):
                    raise self.fail(node, f"'{op}' needs vectors of one length, not {len(left)} and {len(right)}")
                return Vec(tuple(apply(x, y) for x, y in zip(left, right, strict=True)))
            if left is not None:
                return Vec(tuple(apply(x, b) for x in left))
            return Vec(tuple(apply(a, y) for y in right or ()))
        if isinstance(a, Interval) and isinstance(b, Interval) and op in "+-":
            return Interval(apply(a.seconds, b.seconds))
        if isinstance(a, Interval) and isinstance(b, float) and op in "*/":
            return Interval(apply(a.seconds, b))
        if isinstance(a, float) and isinstance(b, Interval) and op == "*":
            return Interval(a * b.seconds)
        if isinstance(a, datetime) and isinstance(b, Interval) and op in "+-":
            return a + timedelta(seconds=apply(0.0, b.seconds))
        if isinstance(a, Interval) and isinstance(b, datetime) and op == "+":
            return b + timedelta(seconds=a.seconds)
        if isinstance(a, datetime) and isinstance(b, datetime) and op == "-":
            return Interval((a - b).total_seconds())
        raise self.fail(node, f"'{op}' cannot combine a {_kind(a)} with a {_kind(b)}")

    def flatten(self, node: Node, values: Sequence[Any]) -> list[float]:
        out: list[float] = []
        for value in values:
            if isinstance(value, Vec):
                out.extend(value.values)
            else:
                out.append(self.number(node, value, "a doubleVecList"))
        return out

    def call(self, node: Call) -> Any:
        fn = node.function
        if fn == "stop":
            raise _Stop
        if fn == "rand":
            return self.rng.random()
        args = [self.eval(arg) for arg in node.args]
        if fn == "time":
            return self.time(node, args)
        if fn in _AGGREGATES:
            values = self.flatten(node, args)
            if not values:
                raise self.fail(node, f"{fn}() of an empty vector (no samples?)")
            return _AGGREGATES[fn](values)
        if fn in _ELEMENTWISE:
            (value,) = args
            if isinstance(value, Vec):
                return Vec(tuple(_ELEMENTWISE[fn](v) for v in value.values))
            return _ELEMENTWISE[fn](self.number(node, value, f"{fn}()"))
        vector = self.flatten(node, [args[0]])
        position = self.number(node, args[1], f"{fn}()")
        if fn == "percentile":
            if not vector or not 0 <= position <= 100:
                raise self.fail(node, "percentile() needs a non-empty vector and a percentage from 0 to 100")
            ranked = sorted(vector)
            return ranked[max(0, math.ceil(position / 100 * len(ranked)) - 1)]
        index = int(position)  # val(v, i)
        if not 0 <= index < len(vector):
            raise self.fail(node, f"val(): index {index} is outside a vector of {len(vector)}")
        return vector[index]

    def time(self, node: Node, args: list[Any]) -> datetime:
        if not args or args[0] == "":
            return datetime.fromtimestamp(self.now, UTC)
        text = args[0]
        if not isinstance(text, str):
            raise self.fail(node, f"time() needs a string, not a {_kind(text)}")
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            try:
                stamp = parsedate_to_datetime(text)
            except (TypeError, ValueError):
                raise self.fail(node, f"time(): {text!r} is neither W3C-DTF nor RFC 1123") from None
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)

    def member(self, node: Member) -> float:
        stamp = self.eval(node.target)
        if not isinstance(stamp, datetime):
            raise self.fail(node, f".{node.member} needs a timestamp, not a {_kind(stamp)}")
        stamp = stamp.astimezone(UTC)
        if node.member == "weekday":  # the docs: a number, 1 for Monday (so Sunday is 0)
            return float(stamp.isoweekday() % 7)
        return float(getattr(stamp, node.member))

    # --- sampled metrics --------------------------------------------------------------------------
    def when(self, node: Node, value: Any) -> float:
        """A look-back (timeinterval) or a moment (timestamp) as a time on the history's clock."""
        if isinstance(value, Interval):
            return self.now - value.seconds * self.history.scale
        if isinstance(value, datetime):
            return value.timestamp()
        raise self.fail(node, f"expected a timeinterval or timestamp, not a {_kind(value)}")

    def method(self, node: Method) -> Any:
        metric = self.eval(node.target)
        if not isinstance(metric, Metric):
            raise self.fail(node, f"{node.method}() applies to sampled service variables ($PendingTasks, "
                            f"$CPUPercent...), not to a {_kind(metric)}")
        args = [self.eval(arg) for arg in node.args]
        history = self.history
        if node.method == "GetSamplePeriod":
            return Interval(history.period_s)
        if node.method == "Count":
            return float(history.count())
        if node.method == "HistoryBeginTime":
            begin = history.begin()
            if begin is None:
                raise self.fail(node, f"{metric.name} has no sample yet")
            return datetime.fromtimestamp(begin, UTC)
        if node.method == "GetSample" and len(args) == 1 and isinstance(args[0], float):
            return Vec(tuple(history.last(metric.name, int(args[0]), self.now)))
        required = None
        if node.method == "GetSample" and isinstance(args[-1], float):
            required = self.number(node, args.pop(), "a sample percentage")
        if not args or len(args) > 2:
            raise self.fail(node, f"{node.method}() needs a start (and optionally an end) time")
        times = [self.when(node, a) for a in args] + ([self.now] if len(args) == 1 else [])
        start, end = min(times), max(times)
        percent = history.percent(start, end, self.now)
        if node.method == "GetSamplePercent":
            return percent
        if required is not None and percent < required:
            raise self.fail(node, f"{metric.name}.GetSample(): {format_value(percent)}% of the samples are "
                            f"available, {format_value(required)}% required")
        return Vec(tuple(history.window(metric.name, start, end, self.now)))


def evaluate(statements: Sequence[Statement], pool: PoolFacts, history: SampleHistory, now: float,
             rng: random.Random | None = None) -> AutoscaleResult:
    """Run a parsed formula; :class:`FormulaEvaluationError` when it fails at run time."""
    return Evaluation(pool, history, now, rng).run(statements)
