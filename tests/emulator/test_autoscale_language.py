"""The autoscale formula language, table by table: what the service refuses before running a formula,
what each operator and function gives, how samples are read, and the results string Azure writes.

The docs' formulas come from MicrosoftDocs/azure-docs ``articles/batch/batch-automatic-scaling.md``;
the one with ``cappedPoolSize`` is a pool's formula with the ``autoScaleRun.results`` the real service
returned for it (2025-04-24), reproduced here from the same sample history.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from batchyard.emulator.batch.autoscale_eval import FormulaEvaluationError, PoolFacts, evaluate
from batchyard.emulator.batch.autoscale_parse import FormulaSyntaxError, FormulaTooLong, parse
from batchyard.emulator.batch.autoscale_samples import SampleHistory

NOW = datetime(2024, 3, 4, 10, 0, tzinfo=UTC).timestamp()  # a Monday, 10:00 UTC
SATURDAY = datetime(2024, 3, 9, 10, 0, tzinfo=UTC).timestamp()


def history(metric: str = "$PendingTasks", values: list[float] | None = None, *, now: float = NOW,
            scale: float = 1.0) -> SampleHistory:
    """Samples every 30 (scaled) seconds, the newest taken one period before ``now``."""
    out = SampleHistory(scale=scale)
    values = values if values is not None else [0.0] * 40
    period = out.period_s * scale
    for i, value in enumerate(values):
        out.record(now - (len(values) - i) * period, {metric: float(value)})
    return out


def run(formula: str, facts: PoolFacts | None = None, samples: SampleHistory | None = None, now: float = NOW):
    return evaluate(parse(formula), facts or PoolFacts(), samples or SampleHistory(), now, random.Random(7))


def results(formula: str, **kwargs: object) -> dict[str, str]:
    """The results string as name -> value (the order is checked separately)."""
    return dict(part.split("=", 1) for part in run(formula, **kwargs).results.split(";"))  # type: ignore[arg-type]


# --- refused before running ----------------------------------------------------------------------------
@pytest.mark.parametrize(("formula", "message"), [
    ("", "empty"),
    ("$TargetDedicatedNodes = foo(1);", "unknown function 'foo'"),
    ("$CPUPercent = 3;", "$CPUPercent is read-only"),
    ("$CurrentDedicatedNodes = 3;", "read-only"),
    ("x = y + 1;", "'y' is used before it is assigned"),
    ("$TargetDedicatedNodes = $Bogus;", "unknown variable '$Bogus'"),
    ("$TargetDedicatedNodes = 1 +;", "unexpected ';'"),
    ("a = 1 b = 2", "expected ';' but found 'b'"),
    ("a = (1 + 2;", "expected ')'"),
    ("a = 1 ? 2;", "expected ':'"),
    ("a = $CPUPercent.Foo();", "unknown method 'Foo'"),
    ("a = $CPUPercent.GetSample();", "GetSample takes 1 to 3 arguments"),
    ("a = time().century;", "unknown member 'century'"),
    ("a = max();", "max() takes at least 1 argument"),
    ("a = rand(1);", "rand() takes 0 argument"),
    ("a = val([1]);", "val() takes 2 argument"),
    ("a = 1 % 2;", "unexpected character '%'"),
    ('a = "open;', "unexpected character '\"'"),
    ("avg = 1;", "reserved name"),
    ("TimeInterval_Hour = 1;", "reserved name"),
    (";;", "no statement"),
    ("a = 1;" * 101, "at most 100 statements"),
])
def test_refused_formulas(formula: str, message: str) -> None:
    with pytest.raises(FormulaSyntaxError) as err:
        parse(formula)
    assert message in str(err.value)


def test_errors_name_line_and_column() -> None:
    with pytest.raises(FormulaSyntaxError) as err:
        parse("a = 1;\n// a comment\n  b = c;")
    assert (err.value.line, err.value.column) == (3, 7)
    assert str(err.value).startswith("line 3, column 7:")


def test_formula_over_8_kb_is_too_long() -> None:
    with pytest.raises(FormulaTooLong):
        parse("$TargetDedicatedNodes = 1; //" + "x" * 8192)
    parse("$TargetDedicatedNodes = 1; //" + "x" * 8000)  # under the limit, comments included


# --- values, operators, functions ----------------------------------------------------------------------
@pytest.mark.parametrize(("formula", "expected"), [
    ("a = 1 + 2 * 3; b = (1 + 2) * 3; c = 7 / 2; d = -3 - -1; e = +4;", {"a": "7", "b": "9", "c": "3.5", "d": "-2",
                                                                           "e": "4"}),
    ("a = 2 / 3; b = 1000000; c = 1234567; d = 0.5;", {"a": "0.666667", "b": "1E+06", "c": "1.23457E+06", "d": "0.5"}),
    ("a = 1 / 0; b = -1 / 0;", {"a": "Infinity", "b": "-Infinity"}),
    ("a = 2 < 3; b = 2 >= 3; c = 2 == 2; d = 2 != 2; e = 3 <= 3; f = 4 > 3;",
     {"a": "1", "b": "0", "c": "1", "d": "0", "e": "1", "f": "1"}),
    ("a = 1 && 0; b = 0 || 5; c = !0; d = !7; e = 1 && 2;", {"a": "0", "b": "1", "c": "1", "d": "0", "e": "1"}),
    ('a = "abc" < "abd"; b = "x" == "x";', {"a": "1", "b": "1"}),
    ("a = 1 ? 10 : 20; b = 0 ? 10 : 0 ? 30 : 40;", {"a": "10", "b": "40"}),
    ("v = [1, 2, 3] * 2; w = [1, 2] + [10, 20]; x = 1 - [1, 2]; y = -[1, 2];",
     {"v": "[2,4,6]", "w": "[11,22]", "x": "[0,-1]", "y": "[-1,-2]"}),
    ("s = sum([2, 4], 6); m = max([2, 4], 10); n = min(3, [1, 2]); l = len([1, 2], 3, [4]); a = avg(1, 2, 3, 6);",
     {"s": "12", "m": "10", "n": "1", "l": "4", "a": "3"}),
    ("a = norm([3, 4]); r = range([1, 5, 3]); s = std([2, 4, 4, 4, 5, 5, 7, 9]); t = std(5);",
     {"a": "5", "r": "4", "s": "2.13809", "t": "0"}),
    ("a = ceil(2.1); b = floor(2.9); c = round(2.5); d = round(-2.5); e = round([0.4, 1.5]);",
     {"a": "3", "b": "2", "c": "3", "d": "-3", "e": "[0,2]"}),
    ("a = lg(8); b = log(1000); c = ln(1); d = lg([2, 4]); e = log(0);",
     {"a": "3", "b": "3", "c": "0", "d": "[1,2]", "e": "-Infinity"}),
    ("p = percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90); q = percentile([5, 1], 0); v = val([5, 6, 7], 1);",
     {"p": "9", "q": "1", "v": "6"}),
    ('t = time("2024-03-04T05:06:07Z"); h = t.hour; w = t.weekday; d = t.day; y = t.year; m = t.month;',
     {"t": "2024-03-04T05:06:07.000Z", "h": "5", "w": "1", "d": "4", "y": "2024", "m": "3"}),
    ('t = time("Sun, 03 Mar 2024 23:59:58 GMT"); w = t.weekday; s = t.second; n = time(); k = n.minute;',
     {"t": "2024-03-03T23:59:58.000Z", "w": "0", "s": "58", "n": "2024-03-04T10:00:00.000Z", "k": "0"}),
    ('i = time("2024-03-05T00:00:00Z") - time("2024-03-04T00:00:00Z"); j = TimeInterval_Minute * 5 + '
     "TimeInterval_Second * 30; k = 2 * TimeInterval_Hour - TimeInterval_Minute; z = TimeInterval_Zero;",
     {"i": "1.00:00:00", "j": "00:05:30", "k": "01:59:00", "z": "00:00:00"}),
    ('t = time("2024-03-04T00:00:00Z") + TimeInterval_Day; u = TimeInterval_Week + time("2024-03-04T00:00:00Z"); '
     'v = time("2024-03-04T00:00:00Z") - TimeInterval_Hour * 6;',
     {"t": "2024-03-05T00:00:00.000Z", "u": "2024-03-11T00:00:00.000Z", "v": "2024-03-03T18:00:00.000Z"}),
    ("a = TimeInterval_Hour > TimeInterval_Minute * 59; b = TimeInterval_Minute / 4; c = -TimeInterval_Second;",
     {"a": "1", "b": "00:00:15", "c": "-00:00:01"}),
    ("r = rand(); ok = r >= 0 && r < 1;", {"ok": "1"}),
    ("a = 1; stop(); b = 2;", {"a": "1"}),
    ("$x = 1; x = 2; $X = 3;", {"$x": "1", "x": "2", "$X": "3"}),
])
def test_values_operators_and_functions(formula: str, expected: dict[str, str]) -> None:
    got = results(formula)
    assert {k: got[k] for k in expected} == expected
    assert "b" not in got or "stop()" not in formula


@pytest.mark.parametrize(("formula", "message"), [
    ("a = $CPUPercent + 1;", "$CPUPercent is a sampled metric"),
    ("a = $PendingTasks;", "sampled metric: assign $PendingTasks.GetSample"),
    ('a = "x" + 1;', "'+' cannot combine a string with a double"),
    ("a = time() * 2;", "cannot combine a timestamp with a double"),
    ("a = [1, 2] + [1, 2, 3];", "vectors of one length"),
    ('a = "x" < 1;', "cannot compare a string with a double"),
    ('a = "s" ? 1 : 2;', "a condition needs a double"),
    ("a = avg($PendingTasks.GetSample(TimeInterval_Minute * 5));", "avg() of an empty vector"),
    ("a = val([1], 3);", "index 3 is outside a vector of 1"),
    ("a = percentile([1], 120);", "percentage from 0 to 100"),
    ('a = time("yesterday");', "neither W3C-DTF nor RFC 1123"),
    ("a = (1 + 2).hour;", ".hour needs a timestamp"),
    ("a = TimeInterval_Minute.GetSample(1);", "applies to sampled service variables"),
    ("a = $CPUPercent.HistoryBeginTime();", "has no sample yet"),
    ("$TargetDedicatedNodes = -1;", "must be a finite number of nodes"),
    ("$TargetLowPriorityNodes = 1 / 0;", "finite number of nodes, not Infinity"),
    ('$TargetDedicatedNodes = "x";', "must be a number, not a string"),
    ("$NodeDeallocationOption = 3;", "must be one of requeue, terminate, taskcompletion, retaineddata"),
])
def test_failures_while_running(formula: str, message: str) -> None:
    statements = parse(formula)  # parses: the failure is at run time
    with pytest.raises(FormulaEvaluationError) as err:
        evaluate(statements, PoolFacts(), SampleHistory(), NOW)
    assert message in str(err.value)


# --- service variables and the results string --------------------------------------------------------
def test_results_string_as_recorded_from_azure() -> None:
    # test_batch_scale_pools, recorded against Azure: the exact string the service answered.
    assert run("$TargetDedicatedNodes=3").results == \
        "$TargetDedicatedNodes=3;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"


def test_targets_start_from_the_pool_and_read_its_node_counts() -> None:
    facts = PoolFacts(target_dedicated=2, target_low_priority=1, current_dedicated=3, current_low_priority=5,
                      task_slots_per_node=4, usable_nodes=6)
    out = run("$TargetDedicatedNodes = $TargetDedicatedNodes + $CurrentDedicatedNodes + $TaskSlotsPerNode; "
              "$TargetLowPriorityNodes = $TargetLowPriorityNodes * $CurrentLowPriorityNodes + $UsableNodeCount;", facts)
    assert (out.dedicated, out.low_priority, out.deallocation) == (9, 11, "requeue")
    untouched = run("a = 1;", facts)
    assert (untouched.dedicated, untouched.low_priority) == (2, 1)
    assert untouched.results.startswith("$TargetDedicatedNodes=2;$TargetLowPriorityNodes=1;")


@pytest.mark.parametrize(("formula", "dedicated", "low"), [
    ("$TargetDedicated = 5;", 5, 0),
    ("$TargetDedicatedNodes = 2; $TargetDedicated = 5;", 2, 0),  # the full name wins when both are set
    ("$TargetDedicated = 5; $TargetDedicatedNodes = 2;", 2, 0),
    ("$TargetLowPriority = 4; $targetdedicatednodes = 1;", 1, 4),  # service names ignore case
    ("$TargetDedicatedNodes = 2.7;", 2, 0),  # a fractional count is truncated
])
def test_targets_aliases_and_counts(formula: str, dedicated: int, low: int) -> None:
    out = run(formula)
    assert (out.dedicated, out.low_priority) == (dedicated, low)


def test_results_list_service_outputs_then_user_variables_in_ordinal_order() -> None:
    out = run("zeta = 1; $beta = 2; alpha = 3; $NodeDeallocationOption = retaineddata; $Alpha = 4;")
    assert out.results == ("$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=retaineddata;"
                           "$Alpha=4;$beta=2;alpha=3;zeta=1")


def test_a_real_pools_formula_gives_the_results_azure_gave() -> None:
    # A pool's formula and the autoScaleRun.results the real service returned for it: no active task
    # in the last 15 minutes, 29 of the 30 samples available (the newest is younger than a minute).
    formula = """// Get pending tasks for the past 15 minutes.
$samples = $ActiveTasks.GetSamplePercent(TimeInterval_Minute * 15);
// If we have fewer than 70 percent data points, we use the last sample point, otherwise the maximum
// of the last sample point and the history average.
$tasks = $samples < 70 ? max(0, $ActiveTasks.GetSample(1)) :
max( $ActiveTasks.GetSample(1), avg($ActiveTasks.GetSample(TimeInterval_Minute * 15)));
$targetVMs = $tasks > 0 ? $tasks : max(0, $TargetDedicatedNodes / 2);
cappedPoolSize = 3;
$TargetDedicatedNodes = max(1, min($targetVMs, cappedPoolSize));
$NodeDeallocationOption = taskcompletion;"""
    out = run(formula, PoolFacts(target_dedicated=1, current_dedicated=1), history("$ActiveTasks", [0.0] * 40))
    assert out.results == ("$TargetDedicatedNodes=1;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
                           "$samples=96.6667;$targetVMs=0.5;$tasks=0;cappedPoolSize=3")
    assert (out.dedicated, out.deallocation) == (1, "taskcompletion")


DOCS_PENDING = """startingNumberOfVMs = 1;
maxNumberofVMs = 25;
pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(180 * TimeInterval_Second);
pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs :
    avg($PendingTasks.GetSample(180 * TimeInterval_Second));
$TargetDedicatedNodes=min(maxNumberofVMs, pendingTaskSamples);
$NodeDeallocationOption = taskcompletion;"""
DOCS_TIME = """$curTime = time();
$workHours = $curTime.hour >= 8 && $curTime.hour < 18;
$isWeekday = $curTime.weekday >= 1 && $curTime.weekday <= 5;
$isWorkingWeekdayHour = $workHours && $isWeekday;
$TargetDedicatedNodes = $isWorkingWeekdayHour ? 20:10;
$NodeDeallocationOption = taskcompletion;"""
DOCS_PREEMPTED = """maxNumberofVMs = 25;
$TargetDedicatedNodes = min(maxNumberofVMs, $PreemptedNodeCount.GetSample(180 * TimeInterval_Second));
$TargetLowPriorityNodes = min(maxNumberofVMs , maxNumberofVMs - $TargetDedicatedNodes);
$NodeDeallocationOption = taskcompletion;"""
DOCS_INITIAL = """$TargetDedicatedNodes = 4;
lifespan         = time() - time("Mon, 04 Mar 2024 09:00:00 GMT");
span             = TimeInterval_Minute * 60;
startup          = TimeInterval_Minute * 10;
ratio            = 50;
$TargetDedicatedNodes = (lifespan > startup ? (max($RunningTasks.GetSample(span, ratio),
    $ActiveTasks.GetSample(span, ratio)) == 0 ? 0 : $TargetDedicatedNodes) : 4);"""


@pytest.mark.parametrize(("formula", "samples", "now", "expected"), [
    # pending tasks rising 0..39: the last 180 s hold the samples 33..37 (the newest is not yet seen)
    (DOCS_PENDING, history("$PendingTasks", list(range(40))), NOW,
     "$TargetDedicatedNodes=25;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;maxNumberofVMs=25;"
     "pendingTaskSamplePercent=83.3333;pendingTaskSamples=36;startingNumberOfVMs=1"),
    (DOCS_PENDING, history("$PendingTasks", [4.0] * 3), NOW,  # too few samples yet: the starting size
     "$TargetDedicatedNodes=1;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;maxNumberofVMs=25;"
     "pendingTaskSamplePercent=33.3333;pendingTaskSamples=1;startingNumberOfVMs=1"),
    (DOCS_TIME, SampleHistory(), NOW,
     "$TargetDedicatedNodes=20;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
     "$curTime=2024-03-04T10:00:00.000Z;$isWeekday=1;$isWorkingWeekdayHour=1;$workHours=1"),
    (DOCS_TIME, SampleHistory(), SATURDAY,
     "$TargetDedicatedNodes=10;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
     "$curTime=2024-03-09T10:00:00.000Z;$isWeekday=0;$isWorkingWeekdayHour=0;$workHours=1"),
    (DOCS_PREEMPTED, history("$PreemptedNodeCount", [0, 0, 2, 2, 2, 2, 3, 3, 3]), NOW,
     "$TargetDedicatedNodes=2;$TargetLowPriorityNodes=23;$NodeDeallocationOption=taskcompletion;maxNumberofVMs=25"),
])
def test_docs_samples(formula: str, samples: SampleHistory, now: float, expected: str) -> None:
    assert run(formula, samples=samples, now=now).results == expected


def test_docs_initial_size_sample_keeps_then_drops_the_pool() -> None:
    idle = SampleHistory()
    for i in range(120):
        idle.record(NOW - (120 - i) * 30, {"$RunningTasks": 0.0, "$ActiveTasks": 0.0})
    # 60 minutes after the pool started and nothing ran: the pool drops to 0.
    assert run(DOCS_INITIAL, samples=idle).dedicated == 0
    busy = SampleHistory()
    for i in range(120):
        busy.record(NOW - (120 - i) * 30, {"$RunningTasks": 0.0, "$ActiveTasks": 2.0})
    assert run(DOCS_INITIAL, samples=busy).dedicated == 4
    # Within the first 10 minutes it keeps 4 whatever the samples say.
    early = datetime(2024, 3, 4, 9, 5, tzinfo=UTC).timestamp()
    assert run(DOCS_INITIAL, samples=idle, now=early).dedicated == 4


# --- samples ---------------------------------------------------------------------------------------------
def test_get_sample_reads_what_has_arrived() -> None:
    samples = history("$CPUPercent", [10, 20, 30, 40, 50, 60])  # taken 180, 150, ..., 30 s ago
    got = results("a = $CPUPercent.GetSample(2); b = $CPUPercent.GetSample(TimeInterval_Minute * 2); "
                  "c = $CPUPercent.GetSample(TimeInterval_Minute * 3, TimeInterval_Minute * 1); "
                  "d = $CPUPercent.GetSamplePercent(TimeInterval_Minute * 2); e = $CPUPercent.Count(); "
                  "f = $CPUPercent.GetSamplePeriod(); g = $CPUPercent.HistoryBeginTime(); "
                  "h = $CPUPercent.GetSample(TimeInterval_Minute * 3, 60);"
                  "i = $CPUPercent.GetSamplePercent(TimeInterval_Minute * 3, TimeInterval_Minute);", samples=samples)
    # the 30-s-old sample (60) is not available yet: a sample reaches formulas a minute after it is taken
    assert got["a"] == "[40,50]"
    assert got["b"] == "[30,40,50]"
    assert got["c"] == "[10,20,30,40,50]"
    assert got["d"] == "75"  # 3 of the 4 samples 2 minutes hold
    assert (got["e"], got["f"], got["g"]) == ("6", "00:00:30", "2024-03-04T09:57:00.000Z")
    assert got["h"] == "[10,20,30,40,50]"
    assert got["i"] == "100"


def test_get_sample_fails_under_the_required_percentage() -> None:
    samples = history("$CPUPercent", [50.0] * 18)  # 10 minutes would hold 20
    ok = results("a = avg($CPUPercent.GetSample(TimeInterval_Minute * 10, 80));", samples=samples)
    assert ok["a"] == "50"
    with pytest.raises(FormulaEvaluationError, match="85% of the samples are available, 95% required"):
        run("a = $CPUPercent.GetSample(TimeInterval_Minute * 10, 95);", samples=samples)


def test_scaled_history_reads_azure_durations() -> None:
    # At interval scale 0.01 a sample is taken every 0.3 s and 10 minutes look back 6 real seconds.
    samples = history("$PendingTasks", list(range(30)), scale=0.01)
    got = results("a = $PendingTasks.GetSample(TimeInterval_Minute * 2); "
                  "b = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 10);", samples=samples)
    assert got["a"] == "[26,27,28]"
    assert got["b"] == "95"
