"""``batchyard jobs``: every job of the configured backend, with its state, counts and times.

Local backend: the jobs table of the configured storage (and table prefix). Azure backend: the
job documents in the system container, with Azure Batch's state and counts where it can be
reached. ``--json`` prints ``{"backend": ..., "jobs": [JobView.to_dict(), ...]}``.
"""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from batchyard.backends.base import JobView
from batchyard.cli.common import (
    backend_context,
    backend_option,
    config_option,
    handle_errors,
    out,
    print_table,
    verbose_option,
)

_STATE_STYLE = {"active": "blue", "completed": "green", "cancelled": "yellow", "missing": "red", "unknown": "red"}


def _time(iso: str | None) -> str:
    """An ISO time as ``2026-05-01 12:34:56`` (UTC), for the table."""
    return iso.replace("T", " ")[:19] if iso else ""


def jobs_table(views: list[JobView], backend: str) -> Table:
    table = Table(title=f"jobs on {backend}: {len(views)}", title_justify="left")
    for column, justify in (("job", "left"), ("backend", "left"), ("state", "left"), ("succeeded", "right"),
                            ("failed", "right"), ("cancelled", "right"), ("running", "right"),
                            ("pending", "right"), ("total", "right"), ("created (UTC)", "left"),
                            ("updated (UTC)", "left")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for view in views:
        c = view.counts
        numbers = ([str(n) for n in (c.succeeded, c.failed, c.cancelled, c.running, c.pending, c.total)]
                   if c is not None else ["?"] * 6)
        table.add_row(view.job_id, view.backend, Text(view.state, style=_STATE_STYLE.get(view.state, "")),
                      *numbers, _time(view.created_at), _time(view.updated_at))
    return table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The jobs as JSON (backend, state, counts, times).")
@backend_option
@config_option
@verbose_option
@handle_errors
def jobs(as_json: bool, backend: str | None, config_path: str | None, verbose: int) -> None:
    """List the jobs of the backend: state, task counts, created and updated times (newest first).

    State: active, completed (every task final) or cancelled; on the azure backend also Azure Batch's
    own (terminating, deleting, disabled), "missing" when only batchyard's job document is left and
    "unknown" when Batch cannot be reached (then no counts). Local backend: the jobs of this storage
    account and table prefix. Azure backend: the job documents in the system container, and the jobs
    Batch knows as created by batchyard.
    """
    _, be = backend_context(verbose, config_path, backend)
    with be:
        views = be.list_jobs()
        if as_json:
            out.print_json(json.dumps({"backend": be.name, "jobs": [v.to_dict() for v in views]},
                                      ensure_ascii=False))
            return
        if not views:
            out.print(f"no jobs on the {be.name} backend with this configuration", highlight=False)
            return
        print_table(jobs_table(views, be.name))
