"""``batchyard pool list|delete``: the Azure Batch pools batchyard created (and only those).

A pool counts as batchyard's when it has a record ``<system container>/pools/<id>.json`` on
the configured storage account, written before the pool was created. ``delete`` refuses
any other pool: it may be running someone else's work.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from batchyard.backends.base import Backend

out = Console(markup=False)  # pool ids and records print as written (cli/common.py)
console = Console(stderr=True, markup=False)


def _handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """cli.handle_errors, imported when called (cli imports this module to add the group)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from batchyard.cli.common import handle_errors

        return handle_errors(fn)(*args, **kwargs)

    return wrapper


def _backend(config_path: str | None, verbose: int) -> Backend:
    """The azure backend, through the registry (pools are part of the Backend interface)."""
    from batchyard.backends import get_backend
    from batchyard.cli.common import _setup_logging
    from batchyard.core.config import load_config

    _setup_logging(verbose)
    return get_backend("azure", load_config(config_path, backend="azure"))


_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                              help="batchyard.toml to use (default: the nearest one above the working dir).")
_verbose_option = click.option("-v", "--verbose", count=True, help="Debug logs (-vv: also Azure SDK requests).")


@click.group()
def pool() -> None:
    """Azure Batch pools batchyard created (per-job pools and [azure] pool_id pools it made)."""


@pool.command("list")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@_config_option
@_verbose_option
@_handled
def list_pools(as_json: bool, config_path: str | None, verbose: int) -> None:
    """List the pools batchyard created, with their state on Azure Batch."""
    import json

    with _backend(config_path, verbose) as be:
        rows = [view.to_dict() for view in be.created_pools()]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} pool(s) created by batchyard", title_justify="left")
    for col in ("pool", "job", "created", "state", "nodes"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["pool_id"], r["job_id"] or "(shared)", r["created_at"], r["state"],
                      "" if r["nodes"] is None else str(r["nodes"]))
    from batchyard.cli.common import print_table

    print_table(table)


@pool.command("delete")
@click.argument("pool_id", required=False)
@click.option("--all", "delete_all", is_flag=True, help="Delete every pool batchyard created.")
@_config_option
@_verbose_option
@_handled
def delete_pool(pool_id: str | None, delete_all: bool, config_path: str | None, verbose: int) -> None:
    """Delete POOL_ID (or --all): only pools batchyard created; running tasks are requeued by Batch."""
    if bool(pool_id) == delete_all:
        raise click.UsageError("give a POOL_ID or --all (not both)")
    with _backend(config_path, verbose) as be:
        ids = [view.pool_id for view in be.created_pools()] if delete_all else [pool_id]
        for pid in ids:
            existed = be.delete_created_pool(pid)  # type: ignore[arg-type]
            console.print(f"pool {pid} " + ("deleted" if existed else "was already gone (record removed)"))
