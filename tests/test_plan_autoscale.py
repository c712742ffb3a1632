"""`batchyard plan` with an autoscale formula: the formula run offline over a simulated job, its node
count over time, and the findings that say what it would do wrong on Azure. No storage, no Batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchyard.analysis.autoscale_sim import autoscale_forecast, simulate
from batchyard.analysis.plan import make_plan
from batchyard.cli.plan import plan as plan_command
from batchyard.core.config import load_config
from batchyard.core.errors import ConfigError

NOW = 1_709_546_400.0  # a fixed clock: time() in a formula sees the same day in every run
# The docs' pending-tasks shape, guarded by GetSamplePercent, with 4 slots a node and at most 10 nodes.
FOLLOW_PENDING = """percent = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 5);
pending = percent < 50 ? 0 : max($PendingTasks.GetSample(TimeInterval_Minute * 5));
$TargetDedicatedNodes = min(10, ceil(pending / $TaskSlotsPerNode));
$NodeDeallocationOption = {option};"""


def follow(option: str = "taskcompletion") -> str:
    return FOLLOW_PENDING.replace("{option}", option)


def config_with(tmp_path: Path, formula: str, extra: str = ""):
    (tmp_path / "batchyard.toml").write_text(
        f"[azure.pool]\ntask_slots_per_node = 4\nautoscale_formula = '''{formula}'''\n{extra}", encoding="utf-8")
    return load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(tmp_path / "home")})


def job_file(tmp_path: Path, count: int = 40) -> Path:
    folder = tmp_path / "job"
    (folder / "in").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / "in" / f"f{i}.txt").write_text(str(i), encoding="utf-8")
    (folder / "job.toml").write_text('id = "scaled"\ncommand = "wc -c {input}"\n[inputs]\ncontainer = "in-data"\n'
                                     'local_dir = "in"\n', encoding="utf-8")
    return folder / "job.toml"


def test_pending_tasks_grow_the_pool_to_its_cap_and_back_to_zero() -> None:
    sim = simulate(follow(), interval_s=300, tasks=200, durations=[120, 180], slots=4, now=NOW)
    nodes = [row["nodes"] for row in sim.timeline]
    assert nodes[0] == 0  # evaluated at creation: no sample yet
    assert max(nodes) == 10 and nodes[-1] == 0  # the cap, then empty once the job is done
    peak = nodes.index(10)
    assert all(n == 10 for n in nodes[peak:nodes.index(0, peak)])  # taskcompletion: no node leaves early
    assert (sim.done, sim.failed) == (200, 0)
    # 200 tasks of 150 s on 40 slots: 5 waves of work, after the 5-minute evaluation and 5-minute boot
    assert 20 * 60 <= sim.wall_time_s <= 30 * 60
    # 10 nodes billed from the evaluation that asked for them (at 5 minutes) until they left
    assert sim.dedicated_node_hours == pytest.approx(10 * (sim.wall_time_s + sim.idle_after_s - 300) / 3600)
    assert sim.errors == []


def test_deallocation_option_decides_what_a_shrink_costs() -> None:
    # Shrinking while tasks run: requeue starts them over elsewhere, terminate fails them, taskcompletion waits.
    formula = "$TargetDedicatedNodes = (time() - time(\"2024-03-04T10:00:00Z\")) < TimeInterval_Minute * 12 ? 4 : 1;" \
              "$NodeDeallocationOption = {option};"
    runs = {option: simulate(formula.replace("{option}", option), interval_s=300, tasks=16, durations=[600],
                             slots=1, now=NOW) for option in ("requeue", "terminate", "taskcompletion")}
    assert runs["terminate"].failed > 0 and runs["terminate"].done + runs["terminate"].failed == 16
    assert runs["requeue"].failed == 0 and runs["requeue"].done == 16
    assert runs["taskcompletion"].done == 16
    assert runs["requeue"].wall_time_s > runs["taskcompletion"].wall_time_s  # requeued work was lost


@pytest.mark.parametrize(("formula", "code", "severity"), [
    ("$TargetDedicatedNodes = min(10, $PendingTasks;", "autoscale-formula-invalid", "error"),
    ("$TargetDedicatedNodes = 0;", "autoscale-no-nodes", "error"),
    ("$TargetDedicatedNodes = 2;", "autoscale-idle-nodes", "warning"),
    ("$TargetDedicatedNodes = max(1, avg($PendingTasks.GetSample(TimeInterval_Minute * 5)));",
     "autoscale-evaluation-error", "warning"),
])
def test_findings(tmp_path: Path, formula: str, code: str, severity: str) -> None:
    section, findings = autoscale_forecast(config_with(tmp_path, formula), tasks=8, durations=[60.0])
    found = {f.code: f for f in findings}
    assert code in found and found[code].severity == severity and found[code].fix
    assert (section is None) == (code == "autoscale-formula-invalid")
    if code == "autoscale-formula-invalid":
        assert "line 1, column" in found[code].message
    if code == "autoscale-evaluation-error":  # the first evaluation has no sample: avg() of nothing
        assert "at 0s" in found[code].message and section["done"] == 8


def test_plan_shows_the_node_count_over_time(tmp_path: Path) -> None:
    config_with(tmp_path, follow(), 'autoscale_evaluation_interval = "10m"\n')
    env = {"BATCHYARD_HOME": str(tmp_path / "home"), "AZURE_STORAGE_CONNECTION_STRING": "", "BATCHYARD_BACKEND": ""}
    args = [str(job_file(tmp_path)), "--config", str(tmp_path / "batchyard.toml")]
    text = CliRunner().invoke(plan_command, args, env=env)
    assert text.exit_code == 0, text.output
    assert "autoscale formula, simulated" in text.output and "every 10m00s" in text.output
    assert "time  nodes  target  waiting  running" in text.output
    data = json.loads(CliRunner().invoke(plan_command, [*args, "--json"], env=env).output)
    auto = data["forecast"]["autoscale"]
    assert auto["evaluation_interval_s"] == 600 and auto["done"] == 40
    assert [row["t_s"] % 600 for row in auto["timeline"]] == [0] * len(auto["timeline"])
    assert max(row["nodes"] for row in auto["timeline"]) == 10  # 40 tasks / 4 slots


def test_invalid_formula_makes_the_plan_fail(tmp_path: Path) -> None:
    result = make_plan(job_file(tmp_path, 3), config_with(tmp_path, "$TargetDedicatedNodes = bogus(1);"))
    assert result.has_errors and "autoscale" not in result.forecast
    assert any(f.code == "autoscale-formula-invalid" and "unknown function 'bogus'" in f.message
               for f in result.findings)


def test_interval_outside_azures_range_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="autoscale_evaluation_interval"):
        config_with(tmp_path, "$TargetDedicatedNodes = 1;", 'autoscale_evaluation_interval = "1m"\n')
