"""``batchyard plan JOB_FILE``: a dry run. Nothing is submitted, uploaded or created.

Exit codes: 0 no error finding, 1 some finding is an error (the job would fail as written),
2 bad usage or config, 3 any other batchyard error.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from batchyard.analysis.autoscale_sim import timeline_lines
from batchyard.analysis.forecast import hms
from batchyard.analysis.plan import Plan
from batchyard.cli.common import (
    EXIT_FAILED_TASKS,
    _setup_logging,
    backend_option,
    config_option,
    handle_errors,
    out,
    print_table,
    rerun_choice,
    rerun_option,
    styled,
    verbose_option,
)
from batchyard.core.config import load_config

_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


def say(*parts: Any) -> None:
    """One line of the plan, as written: no highlighting, and never wrapped, so a command line or a
    path stays whole when the plan is piped to a file or a pager."""
    out.print(*parts, highlight=False, soft_wrap=True)


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The whole plan as JSON.")
@click.option("--show", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="How many tasks (and local files) to list.")
@backend_option
@rerun_option
@config_option
@verbose_option
@handle_errors
def plan(job_file: str, as_json: bool, show: int, backend: str | None, rerun: tuple[str, ...],
         config_path: str | None, verbose: int) -> None:
    """Dry run: the tasks JOB_FILE would run, its uploads and outputs, Azure Batch preflight, cost forecast.

    Nothing is submitted or uploaded. Inputs are the files of inputs.local_dir plus the blobs already
    under the prefix (when storage is configured or the local Azurite runs). For a job that ran before,
    which tasks `run` would keep and which it would run again, and why. Exits 1 when a finding is
    an error.
    """
    from batchyard.analysis.plan import make_plan

    _setup_logging(verbose)
    config = load_config(config_path, backend=backend)
    result = make_plan(job_file, config, show=show, rerun=rerun_choice(rerun))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        render(result, show=show)
    if result.has_errors:
        sys.exit(EXIT_FAILED_TASKS)


def render(p: Plan, *, show: int = 5) -> None:
    """The plan as text. Consoles read no markup (cli/common.py): names and messages print as written."""
    say(styled(("plan", "bold"), f" for job {p.job_id} ({p.job_file}), backend {p.backend}: nothing submitted"))
    if p.job_id is not None:
        say(styled("\n", ("tasks", "bold"), f": {p.tasks}"))
        for row in p.sample:
            say(f"  {row['task_id']}: {row['command_line']}")
            say(f"    argv {json.dumps(row['argv'], ensure_ascii=False)}")
        if p.tasks > len(p.sample):
            say(f"  ... and {p.tasks - len(p.sample)} more")
        render_rerun(p, show)
        if p.final_step is not None:
            final, deps = p.final_step, p.final_step["depends_on"]
            say(styled("\n", ("final step", "bold"), f" ({final['task_id']}, run_when = {final['run_when']}, "
                       f"after {deps['tasks']} task(s); on Azure Batch through {deps['barriers']} barrier "
                       f"task(s)): {final['command_line']}"))
        say(styled("\n", ("uploads", "bold")))
        local = p.uploads.get("local_dir")
        if local:
            say(f"  inputs.local_dir: {local['files']} file(s), {local['bytes']} bytes -> container "
                f"{local['container']} ({local['note']})")
            for row in local["first"]:
                say(f"    {row['path']} -> {row['blob']}")
        for rf in p.uploads.get("resource_files", []):
            say(f"  resource file {rf['source']} ({rf['bytes']} bytes) -> {rf['container']}/"
                f"{rf['blob']}, staged as {rf['file_path']}")
        if not local and not p.uploads.get("resource_files"):
            say("  nothing")
        say(styled("\n", ("outputs", "bold")))
        for o in p.outputs:
            say(f"  {o['pattern']} -> {o['container']}/{o['path']} (first task: "
                f"{o['container']}/{o['first_task_prefix']}), upload on {o['upload_on']}"
                + (", optional" if o["optional"] else ""))
        if not p.outputs:
            say("  none (only stdout/stderr are kept)")
    out.print("")
    table = Table(title=f"findings ({len(p.findings)})", title_justify="left")
    for col in ("severity", "check", "finding", "fix"):
        table.add_column(col, overflow="fold")
    for f in p.findings:
        table.add_row(Text(f.severity, style=_STYLE.get(f.severity, "")), f.code, f.message, f.fix)
    if p.findings:
        print_table(table)
    else:
        say(styled(("findings", "bold"), ": none"))
    fc = p.forecast
    if fc:
        say(styled("\n", ("forecast on Azure Batch", "bold")))
        say(f"  {fc['previous_run']}")
        say(f"  pool: {fc['nodes']} node(s) x {fc['task_slots_per_node']} slot(s) of {fc['vm_size']}"
            + (f" at ${fc['usd_per_node_hour']}/h ({fc['price_source']})" if fc["usd_per_node_hour"]
               else " (no price known)"))
        if not fc.get("tasks", 1) and fc.get("final_step"):
            say("  no per-file task would run: every one is kept from the previous run; the final step still "
                "runs if it is due (it has not succeeded, or its own definition changed), with a pool for it on "
                "Azure Batch: not forecast")
        elif not fc.get("tasks", 1):
            say("  nothing would run: every task is kept from the previous run (no pool made, nothing billed)")
        elif fc.get("wall_time_s") is not None:
            cost = f"${fc['cost_usd']:.2f}" if fc.get("cost_usd") is not None else "unknown (no price)"
            say(f"  {fc['tasks']} task(s): estimated wall time {hms(fc['wall_time_s'])}, cost {cost}: "
                f"node allocation {hms(fc['node_allocation_s'])}, "
                f"Batch's per-task overhead {hms(fc['task_overhead_s'])}, mean task {fc['mean_task_s']:.1f}s, "
                f"longest {fc['longest_task_s']:.1f}s")
        else:
            say("  no task durations to forecast from: run it locally or on the emulator first")
        say("  assumptions:")
        for line in fc["assumptions"]:
            say(f"    - {line}")
    if fc and fc.get("autoscale"):
        render_autoscale(fc["autoscale"])


def render_rerun(p: Plan, show: int) -> None:
    """What `run` would run of a job that ran before, and why (the same split `run` prints)."""
    split = p.rerun
    if split is None:
        say("  run: no records to compare (no storage, or the backend cannot be reached)")
        return
    say(styled("  run: ", (f"{split['rerun']} to run", "bold"), f" ({split['summary']})"))
    reasons = [(task_id, why) for task_id, why in split["tasks"].items() if why != ["new"]]
    for task_id, why in reasons[:show]:
        say(f"    {task_id}: {', '.join(why)}")
    if len(reasons) > show:
        say(f"    ... and {len(reasons) - show} more (--json lists them)")


def render_autoscale(auto: dict[str, Any]) -> None:
    """The pool's formula over a simulated run: nodes over time, wall time, node-hours."""
    wall = hms(auto["wall_time_s"]) if auto["wall_time_s"] is not None else "never (see findings)"
    cost = f", cost ${auto['cost_usd']:.2f}" if auto.get("cost_usd") is not None else ""
    say(styled("\n", ("autoscale formula, simulated", "bold"), f": all tasks done after {wall}; "
               f"{auto['dedicated_node_hours']:.2f} dedicated + {auto['spot_node_hours']:.2f} spot node-hours"
               f"{cost}"))
    for line in timeline_lines(auto):
        say(f"  {line}")
    for line in auto["assumptions"]:
        say(f"    - {line}")
