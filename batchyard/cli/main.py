"""The ``batchyard`` command.

Exit codes: 0 every task succeeded (or the command did what it was asked), 1 some task
failed or was cancelled, 2 bad usage or an invalid job/config file, 3 any other batchyard error
(storage unreachable, credentials refused...), 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from batchyard.backends import get_backend
from batchyard.backends.base import Backend, FinalStepView, TaskCounts, TaskResult, TaskState
from batchyard.backends.outputs import shared_paths
from batchyard.cli.common import (  # noqa: F401  (re-exported: older modules import these from here)
    EXIT_ERROR,
    EXIT_FAILED_TASKS,
    EXIT_USAGE,
    _context,
    _setup_logging,
    backend_flag,
    backend_option,
    config_option,
    console,
    for_any_task_spelling,
    handle_errors,
    out,
    print_table,
    rerun_choice,
    rerun_option,
    styled,
    terminate_as_interrupt,
    verbose_option,
)
from batchyard.cli.lazy_group import LazyGroup
from batchyard.cli.params import BATCH_ID
from batchyard.core.bounded import Firsts
from batchyard.core.config import Config, load_config
from batchyard.core.final_step import FINAL_TASK_ID
from batchyard.core.job import Job, load_job
from batchyard.core.rerun import RerunPlan
from batchyard.core.secret_handoff import hide_credentials
from batchyard.core.version import __version__

SUMMARY_ROWS = 25


# Command groups that live in their own modules, imported when used (they import helpers from here).
LAZY_COMMANDS = {name: f"batchyard.cli.{name}:{name}"
                 for name in ("debug", "emulator", "jobs", "plan", "pool", "report")}


@click.group(cls=LazyGroup, lazy_commands=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchyard")
def main() -> None:
    """Per-file batch jobs: locally on Azure Storage (Azurite), on Azure Batch, or on its emulator."""
    hide_credentials()  # before any command starts workers or an emulator whose tasks descend from us


# --------------------------------------------------------------------------------------------- run
def _run_with_progress(backend: Backend, job: Job, total: int, *, workers: int | None) -> TaskCounts:
    columns = (TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(job.id, total=total, detail="")

        def update(counts: TaskCounts) -> None:
            progress.update(bar, completed=counts.done, total=counts.total or total,
                            detail=f"running {counts.running}  failed {counts.failed}"
                            + (f"  cancelled {counts.cancelled}" if counts.cancelled else ""))

        return backend.run_to_end(job, workers=workers, on_progress=update)


# The summary's order: what needs a look first. A state's colour in tables.
STATE_ORDER = ("failed", "cancelled", "running", "pending", "succeeded")
STATE_STYLE = {"failed": "red", "cancelled": "yellow", "succeeded": "green", "running": "blue"}


def counts_line(counts: TaskCounts) -> str:
    """``3 succeeded, 1 failed, 2 cancelled, 6 total``: every state that has a task, and the total."""
    parts = [f"{counts.succeeded} succeeded", f"{counts.failed} failed"]
    parts += [f"{n} {state}" for state, n in (("cancelled", counts.cancelled), ("running", counts.running),
                                              ("pending", counts.pending)) if n]
    return ", ".join([*parts, f"{counts.total} total"])


def _order(result: TaskResult) -> tuple[int, str, str]:
    state = str(result.state)
    return (STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER), result.label, result.task_id)


def _summary(results: Iterable[TaskResult], counts: TaskCounts | Callable[[], TaskCounts], job_id: str,
             flag: str = "") -> None:
    """A table of the tasks, failed first, at most SUMMARY_ROWS of them and never empty while the job has
    tasks; then how many more there are by state, each failure's reason and how to dig in (``flag``:
    `` --backend NAME`` when the hints need it). ``results`` stream: only the rows shown are held;
    ``counts`` may be asked for once they have all been read."""
    shown_rows, failed_rows = Firsts(SUMMARY_ROWS, _order), Firsts(SUMMARY_ROWS, _order)
    for result in results:
        shown_rows.add(result)
        if result.state == TaskState.FAILED:
            failed_rows.add(result)
    shown, failed = shown_rows.firsts(), failed_rows.firsts()
    if callable(counts):
        counts = counts()
    by_state = {state: getattr(counts, state) for state in STATE_ORDER}
    for r in shown:  # what is left: the tasks not in the table (a task read as it changed counts once)
        by_state[str(r.state)] = max(0, by_state.get(str(r.state), 0) - 1)
    rest = sum(by_state.values())
    table = Table(title=f"{job_id}: {counts_line(counts)}", title_justify="left")
    table.add_column("input", overflow="ellipsis", no_wrap=True, max_width=48 if out.is_terminal else None)
    table.add_column("state", no_wrap=True, min_width=9)
    table.add_column("exit", justify="right", no_wrap=True, min_width=4)
    table.add_column("tries", justify="right", no_wrap=True, min_width=5)
    table.add_column("task id", no_wrap=True, min_width=min(64, max((len(r.task_id) for r in shown), default=7)))
    for r in shown:
        table.add_row(r.label, Text(str(r.state), style=STATE_STYLE.get(str(r.state), "")),
                      "" if r.exit_code is None else str(r.exit_code), str(r.attempts), r.task_id)
    print_table(table)
    if rest:
        more = ", ".join(f"{n} more {state}" for state, n in by_state.items() if n)
        out.print(f"... and {more} (batchyard status {job_id} --json{flag} lists every task)", soft_wrap=True)
    for r in failed:
        out.print(styled(("failed", "red"), f" {r.task_id}: {r.failure_category}: {r.failure_message}"),
                  highlight=False, soft_wrap=True)
    if counts.failed > SUMMARY_ROWS:
        out.print(f"... and {counts.failed - SUMMARY_ROWS} more failed tasks "
                  f"(batchyard status {job_id} --json{flag})")
    if counts.cancelled:
        out.print(styled(("cancelled", "yellow"), f" {counts.cancelled} task(s): the job was cancelled before they "
                         "finished (stopped, or never started); not failures of their own"),
                  highlight=False, soft_wrap=True)
    if failed:
        out.print(f"stderr of a failed task: batchyard logs {job_id} {failed[0].task_id} --stderr{flag}",
                  soft_wrap=True)


def _final_step(be: Backend, job_id: str, flag: str = "") -> FinalStepView | None:
    """The job's final step on a line of its own, apart from the per-file tasks' table."""
    view = be.final_step(job_id)
    if view is not None:
        result = view.result
        code = f", exit code {result.exit_code}" if result is not None and result.exit_code is not None else ""
        why = f": {view.reason}" if view.reason else ""
        failure = f": {result.failure_category}: {result.failure_message}" if view.state == "failed" and result else ""
        out.print(styled("final step ", (view.state, STATE_STYLE.get(view.state, "")),
                         f" (run_when = {view.run_when}{code}){why}{failure}"), highlight=False, soft_wrap=True)
        if view.state == "failed":
            out.print(f"its stderr: batchyard logs {job_id} {FINAL_TASK_ID} --stderr{flag}", soft_wrap=True)
    return view


def _pool(be: Backend, config: Config, job_id: str) -> None:
    """The job's pool, its node-hours and their cost (backends with pools)."""
    summary = be.pool_summary(job_id)
    if summary is not None:
        from batchyard.cli.pool_cost import pool_line

        out.print(pool_line(summary, config), highlight=False, soft_wrap=True)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@backend_option
@click.option("--workers", type=click.IntRange(1, 512), default=None, help="Local worker processes (default: config).")
@click.option("--no-wait", is_flag=True, help="Submit and return (local: run `batchyard worker` to process).")
@rerun_option
@config_option
@verbose_option
@handle_errors
def run(job_file: str, backend: str | None, workers: int | None, no_wait: bool, rerun: tuple[str, ...],
        config_path: str | None, verbose: int) -> None:
    """Submit JOB_FILE and (by default) run it to the end, showing progress and a summary.

    Run again, a job keeps each task that succeeded with the same fingerprint (command line,
    resource files, image, environment, outputs, input blob) and runs the changed, failed,
    cancelled and new ones; what it runs, and why, is printed before anything starts. Only this
    job's tasks run here: other jobs' wait for their own run or `batchyard worker`.
    """
    terminate_as_interrupt()
    config, be = _context(verbose, config_path, backend)
    job = load_job(job_file)

    def announce(plan: RerunPlan) -> None:
        tasks = f"{plan.total} task{'' if plan.total == 1 else 's'}"
        console.print(styled("job ", (job.id, "bold"), f" on {be.name}: {tasks}, {len(plan.reasons)} queued: "
                             f"{plan.summary()}"), highlight=False, soft_wrap=True)

    with be:
        be.preflight()
        submitted = be.submit(job, rerun=rerun_choice(rerun), on_plan=announce)
        flag = backend_flag(config_path, be.name)
        if no_wait:
            if be.name == "local":
                console.print(f"workers: run `batchyard worker` or `batchyard worker --job {job.id}` (any machine "
                              "with the same storage) to process it", highlight=False, soft_wrap=True)
            elif submitted.enqueued:
                console.print(f"`batchyard status {job.id} --watch{flag}` follows it and ends the run when its "
                              "tasks are done (the per-job pool bills until then, or until "
                              f"`batchyard cancel {job.id}{flag}`)", highlight=False, soft_wrap=True)
            return
        counts = _run_with_progress(be, job, submitted.total, workers=workers)
        _summary(be.summary_results(job.id, order=_order, limit=SUMMARY_ROWS), counts, job.id, flag)
        final = _final_step(be, job.id, flag)
        if submitted.enqueued or (final is not None and final.state not in ("unchanged", "skipped")):
            _pool(be, config, job.id)  # a run that ran nothing made no pool: the last one is not its own
        if counts.failed or counts.cancelled or (final is not None and final.state == "failed"):
            # not every task succeeded: a script must not go on
            sys.exit(EXIT_FAILED_TASKS)


# --------------------------------------------------------------------------------------------- queries
@main.command()
@click.argument("job_id", type=BATCH_ID)
@click.option("--json", "as_json", is_flag=True, help="Every task's result as JSON.")
@click.option("--watch", is_flag=True, help="Live view until the job ends (Ctrl-C stops watching, not the job).")
@backend_option
@config_option
@verbose_option
@handle_errors
def status(job_id: str, as_json: bool, watch: bool, backend: str | None, config_path: str | None,
           verbose: int) -> None:
    """Counts by state and each task's result, failed first (--watch: live, until the job ends)."""
    config, be = _context(verbose, config_path, backend, job_id)
    with be:
        job_id = be.resolve_job_id(job_id)
        if watch:
            from batchyard.cli.report import watch_status

            counts = watch_status(be, job_id, console=out)
            if counts.finished and (counts.failed or counts.cancelled):
                sys.exit(EXIT_FAILED_TASKS)
            return
        if as_json:
            _status_json(be, config, job_id)
            return
        # The counts once the results have streamed through the summary, as before they were listed first.
        _summary(be.summary_results(job_id, order=_order, limit=SUMMARY_ROWS), lambda: be.task_counts(job_id), job_id,
                 backend_flag(config_path, be.name))
        _final_step(be, job_id, backend_flag(config_path, be.name))
        _pool(be, config, job_id)


def _status_json(be: Backend, config: Config, job_id: str) -> None:
    """``status --json``, written as it is read: each task on a line of its own as its result comes
    (the first within a second, whatever the job's size, and memory for one task, not for all);
    the counts and the pool after the tasks, as they stand once every task was listed."""
    from batchyard.cli.pool_cost import pool_cost

    stream = sys.stdout
    stream.write(f'{{"job_id": {json.dumps(job_id, ensure_ascii=False)}, "backend": {json.dumps(be.name)},\n'
                 ' "tasks": [')
    stream.flush()
    separator = "\n  "
    for result in be.list_task_results(job_id):
        stream.write(separator + json.dumps(result.to_dict(), ensure_ascii=False))
        separator = ",\n  "
    counts = be.task_counts(job_id)
    summary = be.pool_summary(job_id)
    pool = pool_cost(summary, config) if summary is not None else None
    final = be.final_step(job_id)  # apart from the tasks: it is none of them
    stream.write(f'],\n "counts": {json.dumps(counts.to_dict())},\n "pool": {json.dumps(pool)},\n "final_step": '
                 f'{json.dumps(final.to_dict() if final is not None else None, ensure_ascii=False)}}}\n')
    stream.flush()


@main.command()
@click.argument("job_id", type=BATCH_ID)
@click.argument("task_id", type=BATCH_ID)
@click.option("--stderr", "stream", flag_value="stderr", help="Show stderr instead of stdout.")
@click.option("--stdout", "stream", flag_value="stdout", default=True, hidden=True)
@backend_option
@config_option
@verbose_option
@handle_errors
def logs(job_id: str, task_id: str, stream: str, backend: str | None, config_path: str | None, verbose: int) -> None:
    """Print a task's stdout (or --stderr)."""
    _, be = _context(verbose, config_path, backend, job_id)
    with be:
        job_id = be.resolve_job_id(job_id)
        data = for_any_task_spelling(be, job_id, task_id, lambda found: be.read_task_log(job_id, found, stream=stream))
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@main.command()
@click.argument("job_id", type=BATCH_ID)
@backend_option
@config_option
@verbose_option
@handle_errors
def cancel(job_id: str, backend: str | None, config_path: str | None, verbose: int) -> None:
    """Stop a job: its pending and running tasks (killed) become cancelled; records stay.

    On Azure the job's Batch job is terminated and the pool batchyard made for it deleted
    (unless [azure] keep_auto_pool); `batchyard run` again runs what was left. A job whose tasks have
    all ended has nothing to cancel: it says so and stays as it ended (on Azure, a run left open by
    `run --no-wait` is ended as `run` would, its pool released).
    """
    config, be = _context(verbose, config_path, backend, job_id)
    with be:
        job_id = be.resolve_job_id(job_id)
        before = be.task_counts(job_id)
        final = be.final_step(job_id)
        if before.finished and (final is None or final.state not in ("waiting", "pending", "running")):
            # Nothing left to stop: the job keeps its state (completed), its records say how it ended; a
            # run still open on Azure Batch (`run --no-wait`) is ended as `run` would, its pool released.
            be.end_finished_run(job_id)
            console.print(f"job {job_id} has ended ({counts_line(before)}): nothing to cancel", highlight=False,
                          soft_wrap=True)
            return
        be.cancel(job_id)
        running = be.task_counts(job_id).running
        console.print(f"job {job_id} cancelled" + (f" on {be.name}" if be.name != "local" else "")
                      + (f": {running} running task(s) are being stopped (their workers kill them within seconds; "
                         f"`batchyard status {job_id}` shows them cancelled once they have)" if running else ""))
        summary = be.pool_summary(job_id)
        if summary is not None:
            from batchyard.cli.pool_cost import pool_line

            console.print(pool_line(summary, config), highlight=False, soft_wrap=True)


@main.command()
@click.argument("job_id", type=BATCH_ID)
@backend_option
@config_option
@verbose_option
@handle_errors
def delete(job_id: str, backend: str | None, config_path: str | None, verbose: int) -> None:
    """Delete a job's records and logs (its outputs stay), and the task dirs `batchyard debug` kept for it.

    A job may be deleted while it runs: its running commands are stopped, nothing more of it is
    recorded, and a `run` or `status --watch` waiting for it ends with exit code 3, saying so.
    """
    from batchyard.cli.replays import remove_replays

    config, be = _context(verbose, config_path, backend, job_id)
    with be:
        job_id = be.resolve_job_id(job_id)
        be.delete(job_id)
    console.print(f"job {job_id} deleted")
    removed, kept = remove_replays(config.home, job_id, be.name)
    if removed:
        console.print(f"{len(removed)} debug replay(s) of it removed from {config.home / 'debug'}", highlight=False,
                      soft_wrap=True)
    for root, why in kept:
        console.print(styled(("note:", "yellow"), f" debug replay {root} not removed ({why}): delete it yourself"),
                      highlight=False, soft_wrap=True)


@main.command()
@click.argument("job_id", type=BATCH_ID)
@click.argument("dest", type=click.Path(file_okay=False))
@backend_option
@config_option
@verbose_option
@handle_errors
def download(job_id: str, dest: str, backend: str | None, config_path: str | None, verbose: int) -> None:
    """Download every output of a job into DEST/<container>/<blob name>.

    Follows the task records: the outputs the current outputs spec gives each task whose record says
    it uploaded; an output that only an earlier spec (another pattern or path) produced is not served.
    Under a path every task shares (no per-task placeholder), a file a task wrote in an earlier,
    successful run stays when it fails later, and is written too: a note says so when a task failed.
    """
    _, be = _context(verbose, config_path, backend, job_id)
    with be:
        job_id = be.resolve_job_id(job_id)
        written = be.download_outputs(job_id, Path(dest))
        counts = be.task_counts(job_id)
        shared = shared_paths(be.job(job_id)) if counts.failed else []
    console.print(f"{len(written)} file(s) written under {dest}")
    if shared:  # never a silent stale file: say where one can be
        console.print(styled(("note:", "yellow"), f" {counts.failed} task(s) failed, and output path(s) "
                             f"{', '.join(map(repr, shared))} are shared by every task: a file a failed task "
                             "wrote there in an earlier, successful run may be among those written. A per-task "
                             "path (such as \"{job_id}/{input_stem}/\") makes downloads exact."),
                      highlight=False, soft_wrap=True)


@main.command()
@click.option("--workers", type=click.IntRange(1, 512), default=None, help="Worker processes (default: config).")
@click.option("--job", "jobs", metavar="ID", multiple=True,
              help="Serve only this job (repeat for several; default: every job of the configuration).")
@click.option("--idle-exit", type=float, default=None, help="Exit after this many seconds with no work.")
@config_option
@verbose_option
@handle_errors
def worker(workers: int | None, jobs: tuple[str, ...], idle_exit: float | None, config_path: str | None,
           verbose: int) -> None:
    """Run local workers against the configured storage until Ctrl-C (more machines can join).

    They serve every job of the configuration (or each --job), in turn: round-robin by message,
    jobs in the order they were created. A job whose queue is empty is looked at again when it
    is submitted again.
    """
    _setup_logging(verbose)
    terminate_as_interrupt()
    be = get_backend("local", load_config(config_path, backend="local"))
    be.preflight()
    chosen = list(dict.fromkeys(be.resolve_job_id(job_id) for job_id in jobs))
    try:  # from the first worker's start: a Ctrl-C or SIGTERM at any moment stops every one
        serving = be.serve_workers(workers=workers, idle_exit_s=idle_exit, jobs=chosen or None)
        console.print(f"{serving}; Ctrl-C to stop")
        be.join_execution()
    except KeyboardInterrupt:
        console.print("stopping workers (running tasks finish first)")
    finally:
        be.stop_execution()

